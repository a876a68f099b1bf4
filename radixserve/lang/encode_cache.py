"""EncodeCache: the token ids of recently encoded constant text, shared by every program of a
backend, so a batch of programs tokenises each of its strings once.

A run_batch of N programs appends the same strings N times (a few-shot prefix, "Way 1:", a
select's choices); tokenising them is Python work on the programs' threads that competes for the
interpreter with the engine's scheduler thread. Tokenisation is deterministic, so a cached result
is the result. Concurrent misses of one text wait for the first to finish (all the programs of a
batch start at once) instead of each tokenising it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable


class EncodeCache:
    def __init__(self, encode: Callable[[str], list[int]], max_entries: int = 1024,
                 max_chars: int = 1 << 22) -> None:
        if max_entries < 1 or max_chars < 1:
            raise ValueError("EncodeCache needs max_entries >= 1 and max_chars >= 1")
        self._encode = encode
        self.max_entries = max_entries
        self.max_chars = max_chars  # NOTE: bounds the memory of long texts (few-shot blocks)
        self._lock = threading.Lock()
        self._done: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # least recently used first
        self._chars = 0
        self._pending: dict[str, Future] = {}
        self.hits = self.misses = 0

    def __call__(self, text: str) -> list[int]:
        with self._lock:
            ids = self._done.get(text)
            if ids is not None:
                self._done.move_to_end(text)
                self.hits += 1
                return list(ids)
            fut = self._pending.get(text)
            owner = fut is None
            if owner:
                fut = self._pending[text] = Future()
                self.misses += 1
            else:
                self.hits += 1
        if not owner:
            return list(fut.result())
        try:
            ids = tuple(self._encode(text))
        except BaseException as exc:
            with self._lock:
                del self._pending[text]
            fut.set_exception(exc)
            raise
        with self._lock:
            del self._pending[text]
            if len(text) <= self.max_chars:
                self._done[text] = ids
                self._chars += len(text)
                while len(self._done) > self.max_entries or self._chars > self.max_chars:
                    old, _ = self._done.popitem(last=False)
                    self._chars -= len(old)
        fut.set_result(ids)
        return list(ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._done)
