"""What the router reads of a replica's answer while relaying it unchanged: where the server-sent
events end (so a stream is relayed event by event, and a failure mid-way is reported after a
whole event), the cache usage it reports (for the router's per-replica statistics) and, for
/v1/responses, the id of the stored response (so that a follow-up goes to the same replica).

Every answer shape of the server is read: OpenAI `usage` (chat, completions), Responses `usage`
(input_tokens), and native `meta_info` (per output, flat index prompt * n + sample).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import orjson


class Usage(NamedTuple):
    prompt_tokens: int
    cached_tokens: int


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Raw bytes -> whole server-sent events, each with its blank-line terminator, bytes unchanged."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            yield buf[:end + 2]
            buf = buf[end + 2:]
    if buf.strip():
        yield buf  # NOTE: a last event without its terminator is still relayed as it came


def event_data(event: bytes) -> Any:
    """The JSON of an event's `data:` line; None for [DONE], comments or anything not JSON."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:]
            if data == b"[DONE]":
                return None
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
    return None


class AnswerReader:
    """Fed every JSON object of an answer (the body, or each event's data), in order."""

    def __init__(self, samples: int) -> None:
        self.samples = max(1, samples)  # outputs per prompt, for native answers
        self._usage: Usage | None = None
        self._native: dict[int, dict] = {}  # flat index -> its latest meta_info
        self.response_id: str | None = None

    def feed(self, obj: Any) -> None:
        if isinstance(obj, list):
            for item in obj:
                self.feed(item)
            return
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("meta_info"), dict) and isinstance(obj.get("index", 0), int):
            self._native[obj.get("index", 0)] = obj["meta_info"]
            return
        response = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if obj.get("object") == "response":
            response = obj
        if response is not None:
            if isinstance(response.get("id"), str):
                self.response_id = response["id"]
            self._read_usage(response.get("usage"))
            return
        self._read_usage(obj.get("usage"))

    def _read_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(prompt, int) and isinstance(cached, int):
            self._usage = Usage(prompt, cached)

    def feed_bytes(self, body: bytes) -> None:
        try:
            self.feed(orjson.loads(body))
        except orjson.JSONDecodeError:
            pass

    @property
    def usage(self) -> Usage | None:
        """The prompt and cached tokens the replica reported (each prompt once), if it did."""
        if self._native:
            firsts = [m for i, m in self._native.items() if i % self.samples == 0]
            try:
                return Usage(sum(m["prompt_tokens"] for m in firsts), sum(m["cached_tokens"] for m in firsts))
            except (KeyError, TypeError):
                return None
        return self._usage
