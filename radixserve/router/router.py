"""The router: chooses a replica for each request, forwards it, fails over, keeps the mirrors.

A request goes to the replica's route of the same path with its body unchanged, and the answer
comes back as the replica sent it (JSON whole, a stream event by event), so every feature of the
server works through the router. A request that cannot start on a replica (refused connection, a
replica answering 429/502/503/504, or one that broke before the router passed anything on) is
retried on another (`max_failovers`); a stream that already sent the client events cannot move,
so it ends with an in-band 503 error. A /v1/responses follow-up goes to the replica that stored
the response it continues (`ResponseHomes`), and never moves.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from radixserve.router.config import RouterConfig
from radixserve.router.answers import AnswerReader, event_data, sse_events
from radixserve.router.policy import CacheAware, Decision, Policy, RoundRobin
from radixserve.router.prompts import RouteKey
from radixserve.router.replica import PROBE_MESSAGES, Replica, Ticket
from radixserve.server.errors import APIError

if TYPE_CHECKING:
    from radixserve.router.frontend import Frontend

logger = logging.getLogger(__name__)
_RETRY_STATUS = (429, 502, 503, 504)  # try another replica; 5xx also marks this one down
KEEPALIVE_S = 2.0
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ReplicaLost(Exception):
    """The replica failed after the router had passed part of its answer on."""


class Passthrough(Exception):
    """A replica's own error answer (4xx, 5xx), returned to the client as it is."""

    def __init__(self, status: int, body: bytes, media_type: str = "application/json") -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.media_type = media_type


class Answer(NamedTuple):
    """A replica's whole (not streamed) answer, relayed as it is."""

    status: int
    body: bytes
    media_type: str


class ResponseHomes:
    """Which replica stored each /v1/responses response (bounded; the oldest forgotten first).
    A follow-up whose response is not here (forgotten, or stored before the router started) is
    looked for on every replica."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._homes: OrderedDict[str, int] = OrderedDict()

    def put(self, response_id: str, replica: int) -> None:
        self._homes[response_id] = replica
        self._homes.move_to_end(response_id)
        while len(self._homes) > self.capacity:
            self._homes.popitem(last=False)

    def get(self, response_id: str) -> int | None:
        home = self._homes.get(response_id)
        if home is not None:
            self._homes.move_to_end(response_id)
        return home

    def drop(self, response_id: str) -> None:
        self._homes.pop(response_id, None)

    def __len__(self) -> int:
        return len(self._homes)


class Router:
    def __init__(self, config: RouterConfig, frontend: Frontend) -> None:
        self.config = config
        self.frontend = frontend  # tokenizer + chat template (radixserve.router.frontend.Frontend)
        headers = {"Authorization": f"Bearer {config.replica_api_key}"} if config.replica_api_key else {}
        self.replicas = [Replica(i, url, headers) for i, url in enumerate(config.replicas)]
        self.policy: Policy = (RoundRobin() if config.policy == "round-robin" else
                               CacheAware(config.balance_abs_threshold, config.balance_rel_threshold,
                                          config.min_match_fraction))
        self.probe_ids = frontend.apply_chat_template(PROBE_MESSAGES)
        self.failovers = 0
        self.homes = ResponseHomes(config.max_response_homes)
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

    def _choose(self, key: RouteKey, tried: set[int], home: int | None) -> Decision:
        candidates = [r for r in self.replicas if r.usable and r.index not in tried]
        if home is not None:
            candidates = [r for r in candidates if r.index == home]
            if not candidates:
                r = self.replicas[home]
                raise APIError(503, f"The replica that stored this conversation ({r.url}) is unavailable now "
                               f"({r.last_error or 'it failed this request'}); retry later, or send the whole "
                               "conversation as input without previous_response_id.",
                               param="previous_response_id", code="replica_unavailable")
        if not candidates:
            down = [f"{r.url} ({r.last_error or 'incompatible'})" for r in self.replicas if not r.usable]
            raise APIError(503, "No replica can take this request now; retry later. Unavailable: "
                           + (", ".join(down) or "none"), code="no_replica")
        if not key.prompts:  # NOTE: nothing to match: the least-loaded replica
            pick = min(candidates, key=lambda r: (r.load, r.mirror.footprint, r.index))
            return Decision(pick, "pinned" if home is not None else "load", [])
        return self.policy.choose(candidates, key.namespace, key.prompts)

    def _failed(self, ticket: Ticket, tried: set[int], reason: str | None) -> None:
        ticket.replica.fail(ticket)
        tried.add(ticket.replica.index)
        if reason is not None:
            ticket.replica.mark_down(reason)
        self.failovers += 1

    async def home_of(self, response_id: str | None) -> int | None:
        """The replica holding a stored response: remembered, else asked of every usable replica."""
        if response_id is None:
            return None
        home = self.homes.get(response_id)
        if home is not None:
            return home
        for r in self.replicas:
            if not r.usable:
                continue
            try:
                resp = await self.client.get(f"{r.url}/v1/responses/{response_id}", headers=r.headers)
            except httpx.TransportError:
                continue
            if resp.status_code == 200:
                self.homes.put(response_id, r.index)
                return r.index
        return None  # NOTE: routed as any request: the replica answers the server's own 404

    # ---- forwarding ----------------------------------------------------------------------------
    async def forward(self, path: str, body: bytes, key: RouteKey) -> Answer | Upstream:
        """POST `body` to `path` on a chosen replica, failing over while nothing was passed on.
        A JSON answer comes back whole (`Answer`); an event stream as an `Upstream` whose first
        event already arrived. A replica's error status raises `Passthrough` with its body."""
        tried: set[int] = set()
        last: Passthrough | None = None
        home = await self.home_of(key.previous_response_id)
        for _ in range(1 + self.config.max_failovers):
            try:
                d = self._choose(key, tried, home)
            except APIError:
                if last is not None:
                    raise last from None
                raise
            ticket = d.replica.begin(key.namespace, key.prompts, key.seqs, d.predicted, d.reason)
            r = ticket.replica
            reader = AnswerReader(key.seqs // max(1, len(key.prompts)))
            stack = contextlib.AsyncExitStack()
            try:
                resp = await self._open(stack, r, path, body)
                media_type = resp.headers.get("content-type", "application/json")
                if resp.status_code != 200:
                    content = await resp.aread()
                    await stack.aclose()
                    if resp.status_code in _RETRY_STATUS:
                        last = Passthrough(resp.status_code, content, media_type)
                        self._failed(ticket, tried, f"HTTP {resp.status_code}" if resp.status_code != 429 else None)
                        continue
                    r.fail(ticket)
                    raise Passthrough(resp.status_code, content, media_type)
                if not media_type.startswith("text/event-stream"):
                    content = await resp.aread()
                    await stack.aclose()
                    reader.feed_bytes(content)
                    self._answered(ticket, reader)
                    return Answer(resp.status_code, content, media_type)
                events = sse_events(resp.aiter_bytes())
                first = await events.__anext__()
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
            except BaseException:  # cancelled (the client left): the replica sees the connection close
                await asyncio.shield(stack.aclose())
                r.fail(ticket)
                raise
            return Upstream(self, ticket, stack, first, events, reader)
        if last is not None:
            raise last
        raise APIError(503, "Every replica tried failed this request; retry later.", code="no_replica")

    async def _open(self, stack: contextlib.AsyncExitStack, r: Replica, path: str, body: bytes) -> httpx.Response:
        """Send the request; a connection that broke without an answer is tried once more on a
        fresh one before the replica counts as failed (a kept-alive connection the server was closing)."""
        headers = {**r.headers, "Content-Type": "application/json"}
        try:
            return await stack.enter_async_context(self.client.stream("POST", r.url + path, content=body,
                                                                      headers=headers))
        except _STALE as exc:
            logger.info("replica %d: %s on a kept-alive connection; retrying once", r.index, type(exc).__name__)
            return await stack.enter_async_context(self.client.stream("POST", r.url + path, content=body,
                                                                      headers=headers))

    def _answered(self, ticket: Ticket, reader: AnswerReader) -> None:
        ticket.replica.finish(ticket, reader.usage)
        if reader.response_id is not None:
            self.homes.put(reader.response_id, ticket.replica.index)


class Upstream:
    """A replica's event stream, relayed event by event (the first already read), bytes unchanged.
    Closing it before the end makes the replica abort the request; `aclose` is idempotent and
    also works on a stream never iterated (a client gone before its response started)."""

    def __init__(self, router: Router, ticket: Ticket, stack: contextlib.AsyncExitStack, first: bytes,
                 events: AsyncIterator[bytes], reader: AnswerReader) -> None:
        self._router, self.ticket, self._stack, self._events = router, ticket, stack, events
        self._next: bytes | None = first
        self.reader = reader
        self._closed = False

    def __aiter__(self) -> Upstream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if self._next is not None:
            event, self._next = self._next, None
        else:
            try:
                event = await self._events.__anext__()
            except StopAsyncIteration:
                await self._end()
                raise
            except httpx.TransportError as exc:
                r = self.ticket.replica
                r.mark_down(f"{type(exc).__name__}: {exc}")
                await self.aclose()
                raise ReplicaLost(f"replica {r.index} failed mid-stream ({type(exc).__name__})") from exc
        self.reader.feed(event_data(event))
        return event

    async def _end(self) -> None:
        """The replica ended its stream: the request is done there."""
        if self._closed:
            return
        self._closed = True
        self._router._answered(self.ticket, self.reader)
        await asyncio.shield(self._stack.aclose())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ticket.replica.fail(self.ticket)
        # NOTE: shielded: under a client's cancellation the connection still gets closed (the replica aborts)
        await asyncio.shield(self._stack.aclose())
