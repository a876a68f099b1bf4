"""Running requests on the engine for a route: all prompts of one HTTP request, with aborts.

Each prompt of a request gets its own engine request id (`<rid>-<i>`); the n samples of a prompt
share it. Whatever ends a request early (client gone, cancellation, error) aborts every id.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from radixserve.engine.interface import EngineHandle
from radixserve.engine.prepare import PreparedRequest
from radixserve.outputs import RequestOutput, StreamDelta
from radixserve.server.errors import APIError, error_body, user_errors
from radixserve.server.metrics import RequestClock
from radixserve.server.openai.params import ParamNames
from radixserve.server.streaming import DONE, merge, prime, sse, until_disconnect

logger = logging.getLogger(__name__)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def request_ids(rid: str, num_prompts: int) -> list[str]:
    return [rid] if num_prompts == 1 else [f"{rid}-{i}" for i in range(num_prompts)]


async def generate_all(request: Request, prompts: list[PreparedRequest], rid: str, cache_salt: str | None,
                       clock: RequestClock, names: ParamNames | None = None) -> list[list[RequestOutput]]:
    """All samples of all prompts, one list per prompt (ordered by sample index). `names` names
    the request field of an engine error (a grammar that does not compile)."""
    engine: EngineHandle = request.app.state.engine
    ids = request_ids(rid, len(prompts))
    param_of = names.grammar if names is not None else None

    async def one(prompt: PreparedRequest, req_id: str) -> list[RequestOutput]:
        with user_errors(None, param_of):
            outs = await engine.agenerate(prompt, request_id=req_id, cache_salt=cache_salt)
        return sorted(outs, key=lambda o: o.index)

    def abort_all() -> None:
        for req_id in ids:
            engine.abort(req_id)

    groups = await until_disconnect(request, asyncio.gather(*(one(p, i) for p, i in zip(prompts, ids))), abort_all)
    clock.done()
    return list(groups)


async def stream_all(request: Request, prompts: list[PreparedRequest], rid: str, cache_salt: str | None,
                     names: ParamNames | None = None) -> tuple[AsyncIterator[tuple[int, StreamDelta]], list[str]]:
    """Merged deltas of every prompt, tagged with the prompt's position, primed (errors raise here)."""
    engine: EngineHandle = request.app.state.engine
    ids = request_ids(rid, len(prompts))
    streams = [engine.generate_stream(p, request_id=i, cache_salt=cache_salt) for p, i in zip(prompts, ids)]
    try:
        return await prime(merge(streams), names.grammar if names is not None else None), ids
    except BaseException:
        for req_id in ids:
            engine.abort(req_id)
        raise


class UsageTracker:
    """Usage of a streamed request, summed from its deltas."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.cached: dict[int, int] = {}
        self.completion = 0

    def add(self, prompt_index: int, d: StreamDelta) -> None:
        self.prompt[prompt_index] = d.prompt_tokens
        if d.index == 0 or prompt_index not in self.cached:
            self.cached[prompt_index] = d.cached_tokens
        self.completion += len(d.token_ids)

    def usage(self) -> dict:
        from radixserve.server.openai.bodies import usage

        return usage(sum(self.prompt.values()), self.completion, sum(self.cached.values()))


def guarded_stream(engine: EngineHandle, chunks: AsyncIterator[bytes], ids: list[str], media_type: str,
                   failure: Callable[[BaseException], list[bytes]]) -> Response:
    """Stream `chunks`. A failure mid-stream (the status line is already sent) becomes the chunks
    `failure(exc)` makes, in-band; an unfinished stream (client gone, failure) aborts the requests."""
    from starlette.responses import StreamingResponse

    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in chunks:
                yield chunk
            finished = True
        except Exception as exc:
            if isinstance(exc, APIError):  # a failure the engine named (e.g. a Ray replica died)
                logger.warning("stream %s failed: %s", ids[0], exc.message)
            else:
                logger.exception("stream %s failed", ids[0])
            for chunk in failure(exc):
                yield chunk
        finally:
            # NOTE: abort synchronously first: under anyio's cancellation every later await in
            # this block may raise again, and the slots must be freed regardless.
            if not finished:
                for req_id in ids:
                    engine.abort(req_id)
            await chunks.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=media_type,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse_failure(exc: BaseException) -> list[bytes]:
    if isinstance(exc, APIError):
        return [sse(error_body(exc.status, exc.message, exc.param, exc.code)), DONE]
    return [sse(error_body(500, "Internal error while streaming; see the server log.")), DONE]


def sse_response(request: Request, events: AsyncIterator[bytes], ids: list[str]) -> Response:
    """Stream `events` as text/event-stream; a failure becomes an OpenAI error event and [DONE]."""
    return guarded_stream(request.app.state.engine, events, ids, "text/event-stream", _sse_failure)
