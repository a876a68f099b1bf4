"""Server-sent events and the async plumbing around engine streams.

A client that disconnects cancels the task that iterates our SSE generator (Starlette listens for
`http.disconnect`); the cancellation runs the generators' `finally` blocks, which close the engine
streams (the engine then aborts the request and frees its slots) and, to be explicit, abort the
request ids as well.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request

from radixserve.server.errors import APIError, user_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
_END = object()


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators, tagging each item with its iterator's position.

    An exception in any stream is re-raised here; closing this generator cancels every stream.
    """
    if len(streams) == 1:  # the common case: no tasks needed
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
            await queue.put((i, _END))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    live = len(tasks)
    try:
        while live:
            i, item = await queue.get()
            if item is _END:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def prime(stream: AsyncIterator[T], param_of: Callable[[ValueError], str | None] | None = None
                ) -> AsyncIterator[T]:
    """Pull the first item now, so that bad input or a full queue becomes an HTTP error status
    before the 200 and the event-stream headers are sent. Returns a stream that replays it."""
    try:
        with user_errors(None, param_of):
            first = await stream.__anext__()
    except StopAsyncIteration:
        first = _END
    except BaseException:
        await _aclose(stream)
        raise

    async def replay() -> AsyncIterator[T]:
        try:
            if first is not _END:
                yield first
                async for item in stream:
                    yield item
        finally:
            await _aclose(stream)

    return replay()


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def until_disconnect(request: Request, work: Awaitable[T], on_disconnect: Callable[[], None]) -> T:
    """Await `work`; if the client goes away first, cancel it and call `on_disconnect` (abort)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        logger.info("client disconnected; aborting its request")
        task.cancel()
        on_disconnect()
        with contextlib.suppress(BaseException):
            await task
        # Nobody will read this answer; it only ends the handler without a 500 in the log.
        raise APIError(400, "The client disconnected before the response was ready.", code="client_disconnected")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            on_disconnect()
