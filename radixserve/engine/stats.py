"""Engine-wide counters for stats() and the metrics endpoint."""
from __future__ import annotations

import threading

from radixserve.scheduler.request import Request


class EngineStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt_tokens = 0  # of finished requests
        self.cached_tokens = 0  # of finished requests

    def on_finish(self, req: Request) -> None:
        with self._lock:
            self.prompt_tokens += len(req.prompt_ids)
            self.cached_tokens += req.cached_tokens or 0

    def snapshot(self, *, running: int, waiting: int, retractions: int, evicted_tokens: int,
                 generated_tokens: int, kv_capacity: int, kv_free: int, tree_tokens: int,
                 finished: dict[str, int], query_tokens: int, hit_tokens: int,
                 spec_draft_tokens: int = 0, spec_accepted_tokens: int = 0, spec_verify_rows: int = 0) -> dict:
        used = kv_capacity - kv_free
        with self._lock:
            return {
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "cache_hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
                "generated_tokens": generated_tokens,
                "evicted_tokens": evicted_tokens,
                "retractions": retractions,
                "running": running,
                "waiting": waiting,
                "kv_used_tokens": used,
                "kv_tree_tokens": tree_tokens,
                "kv_private_tokens": used - tree_tokens,
                "kv_capacity_tokens": kv_capacity,
                "kv_usage": used / kv_capacity if kv_capacity else 0.0,
                "requests_finished": finished,
                "tree_hit_rate": hit_tokens / query_tokens if query_tokens else 0.0,
                "spec_draft_tokens": spec_draft_tokens,  # speculative decoding: draft tokens verified
                "spec_accepted_tokens": spec_accepted_tokens,  # of them, kept
                "spec_acceptance_rate": spec_accepted_tokens / spec_draft_tokens if spec_draft_tokens else 0.0,
                "spec_verify_rows": spec_verify_rows,  # tokens per verify row: 1 + accepted / rows
            }
