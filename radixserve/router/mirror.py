"""The router's copy of one replica's radix cache, to the token.

Three parts, per namespace (cache_salt):
- `trees`: what the replica has cached, as far as the router knows: every finished request's
  prompt + output (the tokens the replica computed: all but the last sampled one, in whole pages),
  with the replica's eviction events applied.
- `inflight`: prompts routed there and not yet finished; the replica is computing them, so a
  request sharing their prefix should follow them (a burst of one tenant's requests lands on one
  replica before the first finishes).
- `pending`: finished requests whose tokens join `trees` only after the next batch of events.

NOTE on ordering: a finished request's tokens are inserted after the events of the first poll
sent after it finished. That poll reads the replica's log after the request was cached there, so
an eviction that happened before the request re-cached a path cannot wipe it from the mirror.
(An eviction of the freshly cached path itself between the request's end and that poll leaves it
in the mirror until an ancestor is evicted or a resync; LRU evicts the newest leaf last, and the
poller is woken as soon as a request finishes.)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from radixserve.router.token_tree import TokenCounter, TokenTree


class InFlight(NamedTuple):
    namespace: str | None
    prompts: tuple[tuple[int, ...], ...]  # the page-truncated prompts added to `inflight`


class CacheMirror:
    def __init__(self, page_size: int = 1) -> None:
        self.page_size = page_size
        self.enabled = True  # False when the replica runs without a radix cache
        self.epoch: str | None = None  # the replica tree's epoch the mirror follows; None: never synced
        self.cursor = -1  # the last event applied
        self.trees: dict[str | None, TokenTree] = {}
        self.inflight: dict[str | None, TokenCounter] = {}
        self.pending: list[tuple[str | None, list[tuple[int, ...]], InFlight]] = []
        self.events_applied = 0
        self.resyncs = 0

    # ---- what a routing decision reads ------------------------------------------------------
    def predicted_hit(self, namespace: str | None, prompt: Sequence[int]) -> int:
        """Prompt tokens the replica would serve from its cache now (whole pages, never the last)."""
        if not self.enabled:
            return 0
        tree, fly = self.trees.get(namespace), self.inflight.get(namespace)
        m = max(tree.match(prompt) if tree else 0, fly.match(prompt) if fly else 0)
        m = min(m, len(prompt) - 1)
        return max(0, m - m % self.page_size)

    @property
    def num_tokens(self) -> int:
        """Tokens mirrored as cached (not counting requests in flight)."""
        return sum(t.num_tokens for t in self.trees.values())

    @property
    def footprint(self) -> int:
        """Cached plus in-flight tokens: how much of the replica's cache the router has filled."""
        return self.num_tokens + sum(c.num_tokens for c in self.inflight.values())

    # ---- requests ---------------------------------------------------------------------------
    def _pages(self, tokens: Sequence[int]) -> tuple[int, ...]:
        n = len(tokens) - len(tokens) % self.page_size
        return tuple(tokens[:n])

    def begin(self, namespace: str | None, prompts: Sequence[Sequence[int]]) -> InFlight:
        fly = self.inflight.setdefault(namespace, TokenCounter())
        held = tuple(self._pages(p) for p in prompts)
        for p in held:
            fly.add(p)
        return InFlight(namespace, held)

    def end(self, handle: InFlight, cached: Sequence[Sequence[int]] = ()) -> None:
        """The request left the replica. `cached`: the token sequences it left in the replica's
        cache (each sample's prompt + output but the last token); empty when it failed."""
        fly = self.inflight[handle.namespace]
        held = [self._pages(c) for c in cached] if self.enabled else []
        for c in held:
            fly.add(c)  # NOTE: visible to routing until the next events batch moves it into the tree
        for p in handle.prompts:
            fly.remove(p)
        if held:
            self.pending.append((handle.namespace, held, InFlight(handle.namespace, tuple(held))))
        elif not fly.size:
            del self.inflight[handle.namespace]

    # ---- the replica's side -----------------------------------------------------------------
    def take_pending(self) -> list:
        """Finished requests to insert after the next events; call right before sending the poll."""
        batch, self.pending = self.pending, []
        return batch

    def restore_pending(self, batch: list) -> None:
        """The poll failed: keep the batch for the next one."""
        self.pending = batch + self.pending

    def apply_events(self, events: list[dict], batch: list) -> bool:
        """Events in the replica's order ({'seq', 'namespace', 'path', 'tokens'} or {'seq', 'reset'}),
        then the batch of finished requests. Returns False, applying nothing, when the events hold
        a reset: whether a finished request was cached before or after it is unknown, so the
        caller must resync from a dump (and hand the batch back with restore_pending)."""
        if any(ev.get("reset") for ev in events):
            self.epoch = None
            return False
        for ev in events:
            tree = self.trees.get(ev["namespace"])
            if tree is not None:
                tree.discard(ev["path"])
                if not tree.num_tokens:
                    del self.trees[ev["namespace"]]
            self.cursor = ev["seq"]
            self.events_applied += 1
        self._insert(batch)
        return True

    def resync(self, epoch: str, head: int, page_size: int, enabled: bool,
               namespaces: list[tuple[str | None, list[list[int]]]], batch: list) -> None:
        """Replace the mirror by the replica's own tree (paths given per namespace); the batch
        finished before the dump was taken, so the dump already holds it."""
        self.epoch, self.cursor, self.page_size, self.enabled = epoch, head, page_size, enabled
        self.trees = {}
        for ns, paths in namespaces:
            tree = self.trees.setdefault(ns, TokenTree(self.page_size))
            for p in paths:
                tree.insert(p)
        self.resyncs += 1
        self._insert(batch, into_trees=False)

    def _insert(self, batch: list, into_trees: bool = True) -> None:
        for ns, paths, handle in batch:
            if into_trees and self.enabled:
                tree = self.trees.setdefault(ns, TokenTree(self.page_size))
                for p in paths:
                    tree.insert(p)
            fly = self.inflight.get(ns)
            if fly is not None:
                for p in handle.prompts:
                    fly.remove(p)
                if not fly.size:
                    del self.inflight[ns]

    def paths(self, namespace: str | None = None) -> set[tuple[int, ...]]:
        tree = self.trees.get(namespace)
        return tree.paths() if tree else set()


# ---- the wire format of GET /cache/events (radixserve/server/cache_routes.py) ----------------
def decode_events(wire: list[dict]) -> list[dict]:
    """Expand each event's path (the previous event's path cut to `shared`, then `tail`)."""
    out, prev = [], []
    for ev in wire:
        if ev.get("reset"):
            out.append({"seq": ev["seq"], "reset": True})
            continue
        path = prev[:ev["shared"]] + ev["tail"]
        out.append({"seq": ev["seq"], "namespace": ev["namespace"], "path": path, "tokens": ev["tokens"]})
        prev = path
    return out


def dump_paths(nodes: list[list]) -> list[list[int]]:
    """Root-to-leaf token paths of a dumped tree ([parent index or -1, tokens], parents first)."""
    paths: list[list[int]] = []
    has_child = [False] * len(nodes)
    for parent, key in nodes:
        paths.append((paths[parent] if parent >= 0 else []) + list(key))
        if parent >= 0:
            has_child[parent] = True
    return [p for p, inner in zip(paths, has_child) if not inner]
