"""Ollama's response shapes: NDJSON lines (one JSON object per line), the final `done` object with
its counts and nanosecond durations, and `{"error": "..."}` bodies.

One generation is read from the engine's stream in both modes: streamed, each delta becomes a
line; not streamed, the deltas are joined into one object. Durations (nanoseconds, monotonic):
  total_duration        request received -> last token
  load_duration         0: the model is loaded once, at server start, and never unloaded
  prompt_eval_duration  request received -> first token (queueing and prefill)
  eval_duration         first token -> last token
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.responses import Response

from radixserve.engine.interface import EngineHandle
from radixserve.outputs import StreamDelta
from radixserve.server.engine_io import guarded_stream
from radixserve.server.errors import APIError
from radixserve.server.metrics import RequestClock
from radixserve.server.ollama.tools import ollama_calls
from radixserve.server.openai import bodies
from radixserve.server.openai.tool_stream import ToolReader

MEDIA_TYPE = "application/x-ndjson"


def created_at() -> str:
    """RFC 3339 in UTC with microseconds, as Ollama writes it (2024-05-01T12:00:00.123456Z)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def error_response(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


Part = dict  # {"text": str, "logprobs": list[dict], "tool_calls": list[dict]}


class Generation:
    """What one request's deltas add up to: text, tool calls (read by `reader` when tools are
    offered), token ids, counts, timings, finish reason."""

    def __init__(self, texts: bodies.TokenTexts, want_logprobs: bool, clock: RequestClock,
                 reader: ToolReader | None = None) -> None:
        self.clock = clock
        self.reader = reader
        self.tool_calls: list[dict] = []
        self.start_ns = time.monotonic_ns()
        self.first_ns: int | None = None
        self.last_ns = self.start_ns
        self.texts = texts
        self.want_logprobs = want_logprobs
        self.pieces: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[dict] = []
        self.prompt_tokens = 0
        self.finish_reason: str | None = None

    def add(self, d: StreamDelta) -> Part:
        """Record one delta; returns its part of a streamed line (text, tool calls, logprobs)."""
        now = time.monotonic_ns()
        if d.token_ids and self.first_ns is None:
            self.first_ns = now
        self.last_ns = now
        self.clock.tokens(d.index, len(d.token_ids))
        text, calls = d.text, []
        if self.reader is not None:  # content is the text outside tool-call blocks
            pieces = self.reader.feed(d.text) + (self.reader.finish() if d.finish_reason is not None else [])
            text = "".join(p.content for p in pieces if p.content is not None)
            calls = ollama_calls(pieces)
            self.tool_calls.extend(calls)
        self.pieces.append(text)
        self.token_ids.extend(d.token_ids)
        self.prompt_tokens = d.prompt_tokens
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
        lps = self._logprobs(d)
        self.logprobs.extend(lps)
        return {"text": text, "logprobs": lps, "tool_calls": calls}

    def _logprobs(self, d: StreamDelta) -> list[dict]:
        if not self.want_logprobs or not d.token_ids:
            return []
        return (bodies.chat_logprobs(d.logprobs, self.texts) or {"content": []})["content"]

    def whole(self) -> Part:
        return {"text": "".join(self.pieces), "logprobs": self.logprobs, "tool_calls": self.tool_calls}

    def done(self) -> dict:
        """The fields of the final object (Ollama's `done: true` line)."""
        first = self.first_ns if self.first_ns is not None else self.last_ns
        return {"done": True, "done_reason": "length" if self.finish_reason == "length" else "stop",
                "total_duration": self.last_ns - self.start_ns, "load_duration": 0,
                "prompt_eval_count": self.prompt_tokens, "prompt_eval_duration": first - self.start_ns,
                "eval_count": len(self.token_ids), "eval_duration": self.last_ns - first}


async def collect(stream: AsyncIterator[tuple[int, StreamDelta]], gen: Generation) -> Generation:
    async for _, d in stream:
        gen.add(d)
    gen.clock.done()
    return gen


def _failure(exc: BaseException) -> list[bytes]:
    message = exc.message if isinstance(exc, APIError) else "internal error while streaming; see the server log"
    return [line({"error": message})]


def ndjson_response(engine: EngineHandle, lines: AsyncIterator[bytes], ids: list[str]) -> Response:
    """Stream `lines`; an engine failure mid-stream becomes an `{"error": ...}` line (the ollama
    client raises it), an unfinished stream (client gone) aborts the requests."""
    return guarded_stream(engine, lines, ids, MEDIA_TYPE, _failure)


async def stream_lines(stream: AsyncIterator[tuple[int, StreamDelta]], gen: Generation,
                       shape: Callable[[Part], dict], base: dict,
                       final: Callable[[Generation], dict]) -> AsyncIterator[bytes]:
    """One line per delta with something in it (`shape(part)` merged into `base`), then the done line."""
    async for _, d in stream:
        part = gen.add(d)
        if part["text"] or part["logprobs"] or part["tool_calls"]:
            yield line({**base, "created_at": created_at(), **shape(part), "done": False})
    gen.clock.done()
    yield line({**base, "created_at": created_at(), **shape({"text": "", "logprobs": [], "tool_calls": []}),
                **final(gen)})
