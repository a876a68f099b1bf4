"""Stored responses of /v1/responses, for `previous_response_id` and GET /v1/responses/{id}.

A stored response keeps its conversation as TOKEN IDS (its prompt followed by its output, exactly
as the model saw them), so a follow-up continues from those tokens: the radix tree still holds
their KV, and the follow-up's prompt is a cache hit for all of them. It also keeps the
conversation as messages (to re-render when a follow-up changes the instructions or the tools)
and the response object.

Storage is in memory, bounded by a count and a total of tokens, least recently used first out
(a follow-up or a GET counts as a use). A server restart forgets everything.
"""
from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredResponse:
    id: str
    tokens: array  # 'l' array: prompt + output token ids of this turn, the whole conversation so far
    messages: tuple[dict, ...]  # the conversation as chat messages (with tool calls), without the instructions
    head: str | None  # the key of the instructions and tools the tokens were rendered with (conversation.py)
    cache_salt: str | None  # the prefix-cache namespace of the conversation
    body: dict  # the response object as returned

    @property
    def size(self) -> int:
        return len(self.tokens)


class ResponseStore:
    """LRU store bounded by `max_responses` entries and `max_tokens` conversation tokens in all."""

    def __init__(self, max_responses: int, max_tokens: int) -> None:
        if max_responses < 0 or max_tokens < 0:
            raise ValueError("max_responses and max_tokens must be >= 0 (0 disables storing)")
        self.max_responses = max_responses
        self.max_tokens = max_tokens
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()  # NOTE: routes run on one event loop; tests may call from threads
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_tokens(self) -> int:
        return self._tokens

    def put(self, item: StoredResponse) -> bool:
        """Store `item` (most recent); evict the least recently used beyond the bounds. False if
        the item alone is over the token bound (it is not stored)."""
        if item.size > self.max_tokens or self.max_responses == 0:
            return False
        with self._lock:
            old = self._items.pop(item.id, None)
            if old is not None:
                self._tokens -= old.size
            self._items[item.id] = item
            self._tokens += item.size
            while len(self._items) > self.max_responses or self._tokens > self.max_tokens:
                _, gone = self._items.popitem(last=False)
                self._tokens -= gone.size
                self.evicted += 1
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            item = self._items.get(response_id)
            if item is not None:
                self._items.move_to_end(response_id)
            return item

    def delete(self, response_id: str) -> bool:
        with self._lock:
            item = self._items.pop(response_id, None)
            if item is None:
                return False
            self._tokens -= item.size
            return True
