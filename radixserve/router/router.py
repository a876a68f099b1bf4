"""The router: chooses a replica for each request, forwards it, fails over, keeps the mirrors.

A request that cannot start on a replica (refused connection, a replica answering 503, or one
that broke before the router passed anything on) is retried on another (`max_failovers`); a
stream that already sent the client tokens cannot move, so it ends with an in-band 503 error.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from radixserve.router.config import RouterConfig
from radixserve.router.forward import StreamDecoder
from radixserve.router.policy import CacheAware, Policy, RoundRobin
from radixserve.router.replica import PROBE_MESSAGES, Replica, Ticket
from radixserve.server.errors import APIError

logger = logging.getLogger(__name__)
_RETRY_STATUS = (429, 502, 503, 504)  # try another replica; 5xx also marks this one down
KEEPALIVE_S = 2.0
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ReplicaLost(Exception):
    """The replica failed after the router had passed part of its answer on."""


class Passthrough(Exception):
    """A replica's own error answer (4xx), returned to the client as it is."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Router:
    def __init__(self, config: RouterConfig, frontend: Any) -> None:
        self.config = config
        self.frontend = frontend  # tokenizer + chat template (radixserve.router.frontend.Frontend)
        headers = {"Authorization": f"Bearer {config.replica_api_key}"} if config.replica_api_key else {}
        self.replicas = [Replica(i, url, headers) for i, url in enumerate(config.replicas)]
        self.policy: Policy = (RoundRobin() if config.policy == "round-robin" else
                               CacheAware(config.balance_abs_threshold, config.balance_rel_threshold,
                                          config.min_match_fraction))
        self.probe_ids = frontend.apply_chat_template(PROBE_MESSAGES)
        self.failovers = 0
        self.client: httpx.AsyncClient | None = None
        self._poll_client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle (on the serving event loop) -------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s)
        # NOTE: idle connections are dropped before a server would close them (uvicorn: after 5 s), so
        # a request never goes out on a connection the replica is closing (a spurious failure)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_S)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        # NOTE: polls have their own connections and short timeouts, so a busy request pool never delays them
        self._poll_client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=cfg.connect_timeout_s),
                                              limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S))
        self._tasks = [asyncio.create_task(r.run(self._poll_client, cfg.poll_interval_s, cfg.health_interval_s,
                                                 self.probe_ids), name=f"poll-replica-{r.index}")
                       for r in self.replicas]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for c in (self.client, self._poll_client):
            if c is not None:
                await c.aclose()

    # ---- what the fleet looks like -------------------------------------------------------------
    @property
    def info(self) -> dict:
        """model, max_model_len, vocab_size of the first usable replica."""
        for r in self.replicas:
            if r.usable and r.info:
                return r.info
        raise APIError(503, "No replica is available; retry later.", code="no_replica")

    @property
    def max_context_len(self) -> int:
        lens = [r.info["max_model_len"] for r in self.replicas if r.usable and r.info]
        if not lens:
            raise APIError(503, "No replica is available; retry later.", code="no_replica")
        return min(lens)

    def _choose(self, namespace: str | None, prompts: list[list[int]], tried: set[int]):
        candidates = [r for r in self.replicas if r.usable and r.index not in tried]
        if not candidates:
            down = [f"{r.url} ({r.last_error or 'incompatible'})" for r in self.replicas if not r.usable]
            raise APIError(503, "No replica can take this request now; retry later. Unavailable: "
                           + (", ".join(down) or "none"), code="no_replica")
        return self.policy.choose(candidates, namespace, prompts)

    def _begin(self, namespace, prompts, n, tried) -> Ticket:
        d = self._choose(namespace, prompts, tried)
        return d.replica.begin(namespace, prompts, n, d.predicted, d.reason)

    def _failed(self, ticket: Ticket, tried: set[int], reason: str | None) -> None:
        ticket.replica.fail(ticket)
        tried.add(ticket.replica.index)
        if reason is not None:
            ticket.replica.mark_down(reason)
        self.failovers += 1

    # ---- forwarding ----------------------------------------------------------------------------
    async def generate(self, prompts: list[list[int]], namespace: str | None, n: int,
                       body: dict) -> list[dict]:
        """POST /generate (not streamed) on a chosen replica, failing over; the native results as
        a flat list (index p * n + sample)."""
        tried: set[int] = set()
        last: Passthrough | None = None
        for _ in range(1 + self.config.max_failovers):
            try:
                ticket = self._begin(namespace, prompts, n, tried)
            except APIError:
                if last is not None:
                    raise last from None
                raise
            r = ticket.replica
            try:
                resp = await self._post(r, body)
            except httpx.TransportError as exc:
                self._failed(ticket, tried, f"{type(exc).__name__}: {exc}")
                continue
            except BaseException:  # cancelled (the client left): the replica sees the connection close
                r.fail(ticket)
                raise
            if resp.status_code in _RETRY_STATUS:
                last = Passthrough(resp.status_code, resp.content)
                self._failed(ticket, tried, f"HTTP {resp.status_code}" if resp.status_code != 429 else None)
                continue
            if resp.status_code != 200:
                r.fail(ticket)
                raise Passthrough(resp.status_code, resp.content)
            data = resp.json()
            outs = data if isinstance(data, list) else [data]
            r.finish(ticket, outs, n)
            return outs
        if last is not None:
            raise last
        raise APIError(503, "Every replica tried failed this request; retry later.", code="no_replica")

    async def _post(self, r: Replica, body: dict) -> httpx.Response:
        """POST /generate; a connection that broke without an answer is tried once more on a fresh
        one before the replica counts as failed (a kept-alive connection the server was closing)."""
        try:
            return await self.client.post(r.url + "/generate", json=body, headers=r.headers)
        except _STALE as exc:
            logger.info("replica %d: %s on a kept-alive connection; retrying once", r.index, type(exc).__name__)
            return await self.client.post(r.url + "/generate", json=body, headers=r.headers)

    async def stream(self, prompts: list[list[int]], namespace: str | None, n: int,
                     body: dict) -> Upstream:
        """POST /generate with stream on a chosen replica; returns an iterator of native chunks
        whose first chunk already arrived (failures before it fail over; errors raise here)."""
        tried: set[int] = set()
        last: Passthrough | None = None
        for _ in range(1 + self.config.max_failovers):
            try:
                ticket = self._begin(namespace, prompts, n, tried)
            except APIError:
                if last is not None:
                    raise last from None
                raise
            r = ticket.replica
            stack = contextlib.AsyncExitStack()
            try:
                try:
                    resp = await stack.enter_async_context(
                        self.client.stream("POST", r.url + "/generate", json=body, headers=r.headers))
                except _STALE as exc:  # see _post
                    logger.info("replica %d: %s on a kept-alive connection; retrying once", r.index,
                                type(exc).__name__)
                    resp = await stack.enter_async_context(
                        self.client.stream("POST", r.url + "/generate", json=body, headers=r.headers))
                if resp.status_code != 200:
                    content = await resp.aread()
                    await stack.aclose()
                    if resp.status_code in _RETRY_STATUS:
                        last = Passthrough(resp.status_code, content)
                        self._failed(ticket, tried, f"HTTP {resp.status_code}" if resp.status_code != 429 else None)
                        continue
                    r.fail(ticket)
                    raise Passthrough(resp.status_code, content)
                lines = _events(resp)
                first = await lines.__anext__()
            except httpx.TransportError as exc:
                await stack.aclose()
                self._failed(ticket, tried, f"{type(exc).__name__}: {exc}")
                continue
            except StopAsyncIteration:
                await stack.aclose()
                self._failed(ticket, tried, "the stream ended before its first event")
                continue
            except Passthrough:
                raise
            except BaseException:
                await stack.aclose()
                r.fail(ticket)
                raise
            return Upstream(ticket, stack, first, lines, n)
        if last is not None:
            raise last
        raise APIError(503, "Every replica tried failed this request; retry later.", code="no_replica")


class Upstream:
    """A replica's native stream, relayed chunk by chunk (the first already read). Closing it
    before the end makes the replica abort the request; `aclose` is idempotent and also works on
    a stream never iterated (a client gone before its response started)."""

    def __init__(self, ticket: Ticket, stack: contextlib.AsyncExitStack, first: dict,
                 lines: AsyncIterator[dict], n: int) -> None:
        self.ticket, self._stack, self._lines = ticket, stack, lines
        self._next: dict | None = first
        self._decoder = StreamDecoder(n)
        self._n = n
        self._closed = False

    def __aiter__(self) -> Upstream:
        return self

    async def __anext__(self) -> dict:
        if self._closed:
            raise StopAsyncIteration
        if self._next is not None:
            chunk, self._next = self._next, None
        else:
            try:
                chunk = await self._lines.__anext__()
            except StopAsyncIteration:
                await self._end()
                raise
            except httpx.TransportError as exc:
                r = self.ticket.replica
                r.mark_down(f"{type(exc).__name__}: {exc}")
                await self.aclose()
                raise ReplicaLost(f"replica {r.index} failed mid-stream ({type(exc).__name__})") from exc
        if "error" not in chunk:
            self._decoder(chunk)
        return chunk

    async def _end(self) -> None:
        final = self._decoder.finished(len(self.ticket.prompts))
        if final is not None and not self._closed:
            self._closed = True
            self.ticket.replica.finish(self.ticket, final, self._n)
            await asyncio.shield(self._stack.aclose())
        else:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ticket.replica.fail(self.ticket)
        # NOTE: shielded: under a client's cancellation the connection still gets closed (the replica aborts)
        await asyncio.shield(self._stack.aclose())


async def _events(resp: httpx.Response) -> AsyncIterator[dict]:
    """The `data:` payloads of a server-sent event stream, parsed, until [DONE]."""
    async for line in resp.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return
        yield orjson.loads(data)
