"""The router's copy of one replica's radix cache, to the token.

Two parts, per namespace (cache_salt):
- `trees`: the replica's cache as its event log describes it. The replica logs every insertion
  and eviction in order (GET /cache/events); replaying them reproduces its tree's token paths
  exactly, whoever sent the requests. A dump of the whole tree replaces the trees when the log no
  longer reaches the mirror's cursor or the replica restarted.
- `inflight`: what the router itself routed there and the log has not confirmed yet: prompts in
  flight (the replica is computing them, so a request sharing their prefix should follow them: a
  burst of one tenant's requests lands on one replica before the first finishes), then each
  finished request's prompt + output until the first poll sent after it finished, whose events
  include its insertion.

NOTE: why not insert what the router routed straight into `trees` and only take evictions from
the replica: the two cannot be ordered. A request's path evicted right after it was cached (under
memory pressure the freshest leaves are all that is unlocked) and a path evicted before the
request re-cached it arrive in the same batch of events and look the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from radixserve.router.token_tree import TokenCounter, TokenTree


class InFlight(NamedTuple):
    namespace: str | None
    prompts: tuple[tuple[int, ...], ...]  # the page-truncated sequences added to `inflight`


class CacheMirror:
    def __init__(self, page_size: int = 1) -> None:
        self.page_size = page_size
        self.enabled = True  # False when the replica runs without a radix cache
        self.epoch: str | None = None  # the replica tree's epoch the mirror follows; None: never synced
        self.cursor = -1  # the last event applied
        self.trees: dict[str | None, TokenTree] = {}
        self.inflight: dict[str | None, TokenCounter] = {}
        self.pending: list[InFlight] = []  # finished, until the events of the next poll are in
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
        """Tokens the replica holds in its cache (as of the last events applied)."""
        return sum(t.num_tokens for t in self.trees.values())

    @property
    def footprint(self) -> int:
        """Cached plus routed-but-unconfirmed tokens: how much of the replica's cache is taken."""
        return self.num_tokens + sum(c.num_tokens for c in self.inflight.values())

    def paths(self, namespace: str | None = None) -> set[tuple[int, ...]]:
        tree = self.trees.get(namespace)
        return tree.paths() if tree else set()

    # ---- requests ---------------------------------------------------------------------------
    def _hold(self, namespace: str | None, seqs: Sequence[Sequence[int]]) -> InFlight:
        fly = self.inflight.setdefault(namespace, TokenCounter())
        held = tuple(tuple(s[:len(s) - len(s) % self.page_size]) for s in seqs)
        for s in held:
            fly.add(s)
        return InFlight(namespace, held)

    def _release(self, handle: InFlight) -> None:
        fly = self.inflight[handle.namespace]
        for s in handle.prompts:
            fly.remove(s)
        if not fly.size:
            del self.inflight[handle.namespace]

    def begin(self, namespace: str | None, prompts: Sequence[Sequence[int]]) -> InFlight:
        return self._hold(namespace, prompts)

    def end(self, handle: InFlight, cached: Sequence[Sequence[int]] = ()) -> None:
        """The request left the replica. `cached`: what it left in the replica's cache as far as
        the router knows (each sample's prompt + output); empty when it failed."""
        if cached and self.enabled:
            self.pending.append(self._hold(handle.namespace, cached))
        self._release(handle)

    # ---- the replica's side -----------------------------------------------------------------
    def take_pending(self) -> list[InFlight]:
        """Finished requests the next poll's events will cover; call right before sending it."""
        batch, self.pending = self.pending, []
        return batch

    def restore_pending(self, batch: list[InFlight]) -> None:
        """The poll failed: the next one covers the batch."""
        self.pending = batch + self.pending

    def apply_events(self, events: list[dict], batch: list[InFlight]) -> None:
        """Replay events ({'seq', 'op', 'namespace', 'path', 'tokens'}) in the replica's order;
        then the batch is covered and leaves `inflight`."""
        for ev in events:
            op = ev["op"]
            if op == "reset":
                self.trees.clear()
            elif op == "insert":
                self.trees.setdefault(ev["namespace"], TokenTree(self.page_size)).insert(ev["path"])
            else:
                tree = self.trees.get(ev["namespace"])
                if tree is not None:
                    tree.discard(ev["path"])
                    if not tree.num_tokens:
                        del self.trees[ev["namespace"]]
            self.cursor = ev["seq"]
        self._covered(batch)

    def resync(self, epoch: str, head: int, page_size: int, enabled: bool,
               namespaces: list[tuple[str | None, list[list[int]]]], batch: list[InFlight]) -> None:
        """Replace the trees by the replica's own (its root-to-leaf paths per namespace)."""
        self.epoch, self.cursor, self.page_size, self.enabled = epoch, head, page_size, enabled
        self.trees = {}
        for ns, paths in namespaces:
            tree = self.trees.setdefault(ns, TokenTree(page_size))
            for p in paths:
                tree.insert(p)
        self.resyncs += 1
        self._covered(batch)

    def _covered(self, batch: list[InFlight]) -> None:
        for handle in batch:
            self._release(handle)


# ---- the wire format of GET /cache/events (radixserve/server/routes/cache.py) ----------------
def decode_events(wire: list[dict]) -> list[dict]:
    """Expand each event's path (the previous event's path cut to `shared`, then `tail`)."""
    out, prev = [], []
    for ev in wire:
        if ev["op"] == "reset":
            out.append({"seq": ev["seq"], "op": "reset"})
            continue
        path = prev[:ev["shared"]] + ev["tail"]
        out.append({"seq": ev["seq"], "op": ev["op"], "namespace": ev["namespace"], "path": path,
                    "tokens": ev["tokens"]})
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
