"""What the radix tree cached and evicted, in order, for a router that mirrors the tree from outside.

Three kinds of event, each recorded in O(1) (a node reference, at most a page of tokens copied):
- insert: a new leaf; its token path (root to the leaf's end) joined the tree;
- evict: a leaf with run R under a prefix P left; the tree holds no path starting with
  P + R[:page_size] any more (R was a leaf, siblings under P differ in their first page);
- reset: every namespace was emptied.
Replaying them in order on a set of token paths reproduces the tree's paths exactly (splits and
lookups never change that set). Paths are materialised only when a reader asks (`since`), by
walking parent pointers; that walk yields the path as it was when the event was recorded,
because the tree only ever splits nodes (the split-off tail keeps its parent chain and its end)
and never rewrites a removed node.

Memory is bounded: at most `max_events` events, and at most `max_tokens` evicted tokens kept
alive by them (NOTE: a removed node stays alive only through events recorded before its own
eviction, and its eviction event is then newer and still held, so counting each eviction's run
length bounds all that is retained). A reader whose cursor fell out of the ring gets None and
must resync from a dump of the whole tree; `epoch` changes with every new tree (a restarted
server), so a cursor of another tree is never taken for one of this tree.

Single-threaded: record and read on the thread that owns the tree.
"""
from __future__ import annotations

import secrets
from collections import deque
from itertools import chain
from typing import Any, NamedTuple

INSERT, EVICT, RESET = "insert", "evict", "reset"


class CacheEvent(NamedTuple):
    seq: int  # 1, 2, 3, ... in recording order
    kind: str  # insert | evict | reset
    namespace: str | None
    path: tuple[int, ...]  # insert: the new leaf's whole path; evict: prefix + first page of the run; reset: ()
    tokens: int  # tokens added (insert) or removed (evict)


class CacheEventLog:
    def __init__(self, page_size: int, max_events: int = 65536, max_tokens: int = 1 << 22) -> None:
        if page_size < 1 or max_events < 1 or max_tokens < 1:
            raise ValueError(f"page_size, max_events and max_tokens must be >= 1, got {page_size}, "
                             f"{max_events}, {max_tokens}")
        self.page_size = page_size
        self.max_events = max_events
        self.max_tokens = max_tokens
        self.epoch = secrets.token_hex(8)
        # (seq, kind, node, first page, tokens): node is the new leaf (insert) or the evicted leaf's parent
        self._ring: deque[tuple[int, str, Any, tuple[int, ...], int]] = deque()
        self._seq = 0
        self._held = 0  # evicted tokens of the evictions in the ring

    @property
    def head(self) -> int:
        """Sequence number of the newest event (0 before the first)."""
        return self._seq

    @property
    def oldest(self) -> int:
        """Sequence number of the oldest event still held (head + 1 when none is)."""
        return self._ring[0][0] if self._ring else self._seq + 1

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def held_tokens(self) -> int:
        return self._held

    def record_insert(self, leaf: Any) -> None:
        """A new leaf (a TreeNode) joined the tree."""
        self._append(INSERT, leaf, (), len(leaf.key))

    def record_eviction(self, parent: Any, key: list[int]) -> None:
        """A leaf with token run `key` under `parent` (a TreeNode) was removed."""
        self._append(EVICT, parent, tuple(key[:self.page_size]), len(key))
        self._held += len(key)
        self._trim()

    def record_reset(self) -> None:
        self._append(RESET, None, (), 0)

    def _append(self, kind: str, node: Any, page: tuple[int, ...], tokens: int) -> None:
        self._seq += 1
        self._ring.append((self._seq, kind, node, page, tokens))
        if len(self._ring) > self.max_events:
            self._trim()

    def _trim(self) -> None:
        while len(self._ring) > self.max_events or (self._held > self.max_tokens and len(self._ring) > 1):
            _, kind, _, _, tokens = self._ring.popleft()
            if kind == EVICT:
                self._held -= tokens

    def since(self, after: int, limit: int | None = None) -> list[CacheEvent] | None:
        """Events with seq > after, oldest first (at most `limit`), or None when some of them are
        no longer held (or `after` is not a cursor of this log): the reader must resync."""
        if after < 0 or after > self._seq or after < self.oldest - 1:
            return None
        start = after - (self.oldest - 1)  # NOTE: the ring holds consecutive sequence numbers
        stop = len(self._ring) if limit is None else min(len(self._ring), start + limit)
        return [self._materialise(self._ring[i]) for i in range(start, stop)]

    @staticmethod
    def _materialise(entry: tuple[int, str, Any, tuple[int, ...], int]) -> CacheEvent:
        seq, kind, node, page, tokens = entry
        if kind == RESET:
            return CacheEvent(seq, RESET, None, (), 0)
        keys = []
        while node.parent is not None:
            keys.append(node.key)
            node = node.parent
        keys.reverse()
        return CacheEvent(seq, kind, node.namespace, tuple(chain(*keys, page)), tokens)


def read_events(tree: Any, after: int, epoch: str | None, limit: int) -> tuple[dict, list[CacheEvent] | None]:
    """On the thread that owns `tree`: the tree's part of a /cache/events answer, and the events
    since `after` (None: the cursor cannot be served, and the body holds a resync of the whole tree).

    NOTE: the tree never mutates a token list in place (a split makes new ones), so the dumped lists
    and the events' paths can be serialised after the owning thread moves on."""
    log = tree.events
    body = {"epoch": log.epoch, "page_size": tree.page_size, "cache_enabled": not tree.disable, "head": log.head}
    events = log.since(after, limit) if epoch == log.epoch else None
    if events is None:
        body["resync"] = {"head": log.head, "namespaces": [
            {"namespace": ns, "nodes": nodes} for ns, nodes in tree.dump()]}
    return body, events


def encode_events(body: dict, events: list[CacheEvent] | None) -> dict:
    """`read_events`' answer as JSON-ready plain values: each path is the previous event's path cut
    to `shared` tokens, then `tail`; `more` says the answer stopped at the limit."""
    if events is None:
        return body
    return {**body, "events": encode_event_list(events), "more": bool(events) and events[-1].seq < body["head"]}


def encode_event_list(events: list[CacheEvent]) -> list[dict]:
    out, prev = [], ()
    for ev in events:
        if ev.kind == RESET:
            out.append({"seq": ev.seq, "op": RESET})
            continue
        shared = _common_prefix(prev, ev.path)
        out.append({"seq": ev.seq, "op": ev.kind, "namespace": ev.namespace, "shared": shared,
                    "tail": list(ev.path[shared:]), "tokens": ev.tokens})
        prev = ev.path
    return out


def _common_prefix(a: tuple, b: tuple) -> int:
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # NOTE: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
