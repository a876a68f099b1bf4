"""radixserve's cache-aware routing as a Ray Serve request router.

The policy is the single-host router's own (radixserve/router/policy.py: CacheAware or RoundRobin),
choosing among `ReplicaView`s that carry what it reads of a replica: an index, the load this router
put on it, and a CacheMirror of its radix tree. Only the transport differs from the HTTP router:

- the prompt's token ids come with the request (the ingress prepared it: RayEngine), so nothing is
  tokenised here;
- a replica's tree reaches the mirror through Ray's routing stats (EngineReplica.record_routing_stats,
  every `request_routing_stats_period_s`): a dump that replaces the mirrored trees;
- what this router sent a replica is in the mirror's `inflight` from the moment it is routed
  (`on_request_routed`) and, once done (`on_request_completed`), stays as pending knowledge until
  the next dump covers it.

Calls that carry no PreparedRequest (describe, stats) go to any replica, Ray's way.
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Any, NamedTuple, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from radixserve.engine.prepare import PreparedRequest
from radixserve.router.config import RouterConfig
from radixserve.router.mirror import CacheMirror, InFlight, dump_paths
from radixserve.router.policy import CacheAware, Policy, RoundRobin

logger = logging.getLogger(__name__)
_DEFAULTS = RouterConfig(replicas=("http://ray-replica",))


class ReplicaView:
    """A Ray replica as the policy sees it (the attributes it reads of radixserve.router.replica.Replica)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.load = 0  # sequences this router has in flight there
        self.mirror = CacheMirror()
        self.synced: tuple[str, int] | None = None  # (epoch, head) of the dump the mirror holds

    def sync(self, stats: dict[str, Any]) -> None:
        """Take a replica's routing stats (a resync answer of its cache events) if they are new."""
        resync = stats.get("resync")
        if resync is None or (stats["epoch"], stats["head"]) == self.synced:
            return
        namespaces = [(ns["namespace"], dump_paths(ns["nodes"])) for ns in resync["namespaces"]]
        self.mirror.resync(stats["epoch"], resync["head"], stats["page_size"], stats["cache_enabled"], namespaces,
                           self.mirror.take_pending())
        self.synced = (stats["epoch"], stats["head"])


class Routed(NamedTuple):
    view: ReplicaView
    handle: InFlight
    prompts: list[list[int]]
    seqs: int


def _request_of(pending: Optional[PendingRequest]) -> tuple[PreparedRequest, str | None] | None:
    if pending is None or not pending.args or not isinstance(pending.args[0], PreparedRequest):
        return None
    return pending.args[0], pending.kwargs.get("cache_salt")


class RadixRequestRouter(FIFOMixin, RequestRouter):
    """request_router_kwargs: policy ("cache-aware" | "round-robin"), balance_abs_threshold,
    balance_rel_threshold, min_match_fraction (as `radixserve route`)."""

    def initialize_state(self, policy: str = _DEFAULTS.policy,
                         balance_abs_threshold: int = _DEFAULTS.balance_abs_threshold,
                         balance_rel_threshold: float = _DEFAULTS.balance_rel_threshold,
                         min_match_fraction: float = _DEFAULTS.min_match_fraction) -> None:
        # NOTE: validated once, by the same dataclass as the HTTP router's flags
        RouterConfig(replicas=("http://ray-replica",), policy=policy, balance_abs_threshold=balance_abs_threshold,
                     balance_rel_threshold=balance_rel_threshold, min_match_fraction=min_match_fraction)
        self.policy: Policy = (RoundRobin() if policy == "round-robin" else
                               CacheAware(balance_abs_threshold, balance_rel_threshold, min_match_fraction))
        self.views: dict[ReplicaID, ReplicaView] = {}
        self.routed: dict[str, Routed] = {}  # internal request id -> where it went
        self.decisions: Counter[str] = Counter()
        self._indices = itertools.count()

    def _view(self, replica: RunningReplica) -> ReplicaView:
        view = self.views.get(replica.replica_id)
        if view is None:
            view = self.views[replica.replica_id] = ReplicaView(next(self._indices))
        view.sync(replica.routing_stats or {})
        return view

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> list[list[RunningReplica]]:
        request = _request_of(pending_request)
        if request is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        prepared, salt = request
        by_view = {id(self._view(r)): r for r in candidate_replicas}
        decision = self.policy.choose([self.views[r.replica_id] for r in candidate_replicas], salt,
                                      [list(prepared.input_ids)])
        self.decisions[decision.reason] += 1
        pick = by_view[id(decision.replica)]
        # NOTE: the rest as a second rank: Ray falls back to them when the pick's queue is full
        return [[pick], [r for r in candidate_replicas if r is not pick]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        request = _request_of(pending_request)
        view = self.views.get(replica_id)
        if request is None or view is None:
            return
        prepared, salt = request
        prompts = [list(prepared.input_ids)]
        view.load += prepared.n
        self.routed[pending_request.metadata.internal_request_id] = Routed(view, view.mirror.begin(salt, prompts),
                                                                         prompts, prepared.n)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        routed = self.routed.pop(internal_request_id, None)
        if routed is None:
            return
        routed.view.load -= routed.seqs
        # NOTE: the prompt stays as routing knowledge until the replica's next dump covers it
        routed.view.mirror.end(routed.handle, routed.prompts)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        # NOTE: its restart is a new replica (new id, empty cache); requests routed there failed
        dead = self.views.pop(replica_id, None)
        for rid in [rid for rid, r in self.routed.items() if r.view is dead]:
            del self.routed[rid]
