"""What the radix tree has evicted, for a router that mirrors the tree from outside.

A router learns what a replica cached from the requests it routed there; it learns what the
replica dropped from this log. Each eviction of a leaf (namespace, prefix P, token run R) is
recorded in O(1): a reference to the leaf's parent, the first page of R and len(R). The token
path P + R[:page_size] is materialised only when a reader asks (`since`), by walking parent
pointers. That walk yields the path as it was at eviction time because the tree only ever splits
nodes (the split-off tail keeps its parent chain whole) and never rewrites a removed node.

After the eviction the tree holds no token path that starts with P + R[:page_size] (R was a leaf,
and siblings under P differ in their first page), so a reader that drops every such path from
its mirror stays exact.

Memory is bounded: at most `max_events` events, and at most `max_tokens` evicted tokens kept
alive by them (NOTE: a removed node is kept alive only as the parent of an event recorded before
its own eviction, and its own event is then newer and still in the ring, so counting each event's
run length bounds everything retained). A reader whose cursor fell out of the ring gets None and
must resync from a dump of the whole tree; `epoch` changes with every new tree (a restarted
server), so a cursor from another tree is never mistaken for one of this tree.

Single-threaded: record and read on the thread that owns the tree.
"""
from __future__ import annotations

import secrets
from collections import deque
from itertools import chain
from typing import Any, NamedTuple


class EvictionEvent(NamedTuple):
    seq: int  # 1, 2, 3, ... in recording order
    namespace: str | None
    path: tuple[int, ...] | None  # prefix + first page of the evicted run; None: the whole tree was reset
    tokens: int  # length of the evicted run (0 for a reset)


class EvictionLog:
    def __init__(self, page_size: int, max_events: int = 65536, max_tokens: int = 1 << 22) -> None:
        if page_size < 1 or max_events < 1 or max_tokens < 1:
            raise ValueError(f"page_size, max_events and max_tokens must be >= 1, got {page_size}, "
                             f"{max_events}, {max_tokens}")
        self.page_size = page_size
        self.max_events = max_events
        self.max_tokens = max_tokens
        self.epoch = secrets.token_hex(8)
        self._ring: deque[tuple[int, Any, tuple[int, ...], int]] = deque()  # (seq, parent, first page, run len)
        self._seq = 0
        self._held = 0  # sum of run lengths in the ring

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

    def record_eviction(self, parent: Any, key: list[int]) -> None:
        """A leaf with token run `key` under `parent` (a TreeNode) was removed."""
        self._seq += 1
        self._ring.append((self._seq, parent, tuple(key[:self.page_size]), len(key)))
        self._held += len(key)
        self._trim()

    def record_reset(self) -> None:
        """Every namespace was emptied."""
        self._seq += 1
        self._ring.append((self._seq, None, (), 0))
        self._trim()

    def _trim(self) -> None:
        while len(self._ring) > self.max_events or (self._held > self.max_tokens and len(self._ring) > 1):
            self._held -= self._ring.popleft()[3]

    def since(self, after: int, limit: int | None = None) -> list[EvictionEvent] | None:
        """Events with seq > after, oldest first (at most `limit`), or None when some of them are
        no longer held (or `after` is not a cursor of this log): the reader must resync."""
        if after < 0 or after > self._seq or after < self.oldest - 1:
            return None
        start = after - (self.oldest - 1)  # NOTE: the ring holds consecutive sequence numbers
        stop = len(self._ring) if limit is None else min(len(self._ring), start + limit)
        return [self._materialise(self._ring[i]) for i in range(start, stop)]

    @staticmethod
    def _materialise(entry: tuple[int, Any, tuple[int, ...], int]) -> EvictionEvent:
        seq, parent, first_page, run = entry
        if parent is None:
            return EvictionEvent(seq, None, None, 0)
        keys, node = [], parent
        while node.parent is not None:
            keys.append(node.key)
            node = node.parent
        keys.reverse()
        return EvictionEvent(seq, node.namespace, tuple(chain(*keys, first_page)), run)
