"""Router configuration: one frozen dataclass, validated at construction."""
from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("cache-aware", "round-robin")


@dataclass(frozen=True)
class RouterConfig:
    replicas: tuple[str, ...]  # base URLs of radixserve servers, e.g. http://10.0.0.2:8000
    policy: str = "cache-aware"
    # Load balance: the replica with the longest cached match is used unless its load (requests
    # in flight from this router) exceeds the least-loaded replica's by more than
    # balance_abs_threshold AND by more than a factor of balance_rel_threshold.
    balance_abs_threshold: int = 16
    balance_rel_threshold: float = 1.5
    # a cached match shorter than this fraction of the prompt counts as no match (the request is
    # "cold" and goes to the replica holding the fewest tokens, spreading new prefixes)
    min_match_fraction: float = 0.3
    poll_interval_s: float = 0.1  # cache events are polled this often (and whenever a request finishes)
    health_interval_s: float = 1.0  # an unreachable replica is retried this often
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 600.0  # a replica that sends nothing for this long has failed the request
    max_failovers: int = 2  # a request that could not start on a replica is retried on this many others
    replica_api_key: str | None = None  # sent to replicas as 'Authorization: Bearer <key>'
    # /v1/responses ids remembered with the replica that stored them (a follow-up goes there); an
    # id not remembered is looked for on every replica
    max_response_homes: int = 100_000
    # the front: like ServerConfig
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_n: int = 64
    served_model_name: str | None = None  # default: the replicas' model name
    log_level: str = "info"
    # the tokenizer: the same model (or tokenizer) the replicas serve; None = the embedded model
    model: str | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError("the router needs at least one replica URL (--replica http://host:port)")
        for url in self.replicas:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica URL {url!r} must start with http:// or https://")
        if len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"replica URLs must be distinct, got {list(self.replicas)}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.balance_abs_threshold < 0:
            raise ValueError(f"balance_abs_threshold must be >= 0, got {self.balance_abs_threshold}")
        if not 0 <= self.min_match_fraction <= 1:
            raise ValueError(f"min_match_fraction must be in [0, 1], got {self.min_match_fraction}")
        if self.balance_rel_threshold < 1:
            raise ValueError(f"balance_rel_threshold must be >= 1, got {self.balance_rel_threshold}")
        for name in ("poll_interval_s", "health_interval_s", "connect_timeout_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_response_homes < 0:
            raise ValueError(f"max_response_homes must be >= 0, got {self.max_response_homes}")
        if self.max_failovers < 0:
            raise ValueError(f"max_failovers must be >= 0, got {self.max_failovers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {self.max_n}")
        for name in ("api_key", "replica_api_key"):
            key = getattr(self, name)
            if key is not None and not key.strip():
                raise ValueError(f"{name} must not be empty; leave it unset to disable authentication")
