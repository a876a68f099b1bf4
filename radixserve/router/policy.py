"""Which replica gets a request.

cache-aware: the replica whose cache (as mirrored) serves the most of the request's prompt tokens,
when that is at least `min_match_fraction` of them; otherwise ("cold") the replica that holds the
fewest tokens, so new prefixes spread over the fleet's memory. Either choice is overridden
("balance") by the least-loaded replica when the chosen one's load exceeds it by more than
`abs_threshold` requests and by a factor of more than `rel_threshold`. Ties go to the lighter
load, then the smaller footprint, then the lower index.

round-robin: the next usable replica in turn, blind to caches (the baseline).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

from radixserve.router.replica import Replica


class Decision(NamedTuple):
    replica: Replica
    reason: str  # cache | cold | balance | round-robin
    predicted: list[int]  # cached tokens the mirror predicts, per prompt


class Policy(Protocol):
    def choose(self, candidates: Sequence[Replica], namespace: str | None,
               prompts: list[list[int]]) -> Decision: ...


def _hits(r: Replica, namespace: str | None, prompts: list[list[int]]) -> list[int]:
    return [r.mirror.predicted_hit(namespace, p) for p in prompts]


class CacheAware:
    def __init__(self, abs_threshold: int, rel_threshold: float, min_match_fraction: float = 0.3) -> None:
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.min_match_fraction = min_match_fraction

    def choose(self, candidates: Sequence[Replica], namespace: str | None, prompts: list[list[int]]) -> Decision:
        if not candidates:
            raise ValueError("no replica to choose from")
        hits = {r.index: _hits(r, namespace, prompts) for r in candidates}
        total = sum(len(p) for p in prompts)
        best_hit = max(sum(h) for h in hits.values())
        if best_hit > 0 and best_hit >= self.min_match_fraction * total:
            pick = min((r for r in candidates if sum(hits[r.index]) == best_hit),
                       key=lambda r: (r.load, r.mirror.footprint, r.index))
            reason = "cache"
        else:
            pick = min(candidates, key=lambda r: (r.mirror.footprint, r.load, r.index))
            reason = "cold"
        least = min(candidates, key=lambda r: (r.load, -sum(hits[r.index]), r.mirror.footprint, r.index))
        if pick.load - least.load > self.abs_threshold and pick.load > self.rel_threshold * least.load:
            pick, reason = least, "balance"
        return Decision(pick, reason, hits[pick.index])


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Replica], namespace: str | None, prompts: list[list[int]]) -> Decision:
        if not candidates:
            raise ValueError("no replica to choose from")
        # NOTE: turns go by replica index, so a replica that is down for a while does not shift the others' turns
        pick = min(candidates, key=lambda r: (r.index - self._next) % (1 << 30))
        self._next = pick.index + 1
        return Decision(pick, "round-robin", _hits(pick, namespace, prompts))
