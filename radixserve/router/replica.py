"""One replica as the router sees it: where it is, whether it answers, how loaded it is, and the
mirror of its cache, kept current by polling GET /cache/events (which doubles as the health check)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from radixserve.router.answers import Usage
from radixserve.router.mirror import CacheMirror, InFlight, decode_events, dump_paths

logger = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "system", "content": "Probe: the router and its replicas tokenise alike."},
                  {"role": "user", "content": "Ünïcode, digits 12345 and spaces  ok?"}]


@dataclass
class ReplicaStats:
    requests: int = 0  # requests answered here
    reported: int = 0  # of those, the ones whose answer reported its cache usage (the counts below)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # as the replica reported them
    predicted_cached_tokens: int = 0  # as the mirror predicted them when routing
    exact_predictions: int = 0  # requests whose cached tokens the mirror predicted exactly
    failed: int = 0  # requests that failed here (replica unreachable or broken mid-way)
    events: int = 0
    resyncs: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # routing reason -> count


class Ticket(NamedTuple):
    """A request routed to a replica, until it finishes or fails there."""

    replica: "Replica"
    handle: InFlight
    prompts: list[list[int]]
    seqs: int  # sequences in flight: prompts x samples
    predicted: list[int]  # predicted cached tokens per prompt


class Replica:
    def __init__(self, index: int, url: str, headers: dict[str, str]) -> None:
        self.index = index
        self.url = url.rstrip("/")
        self.headers = headers
        self.mirror = CacheMirror()
        self.healthy = False
        self.compatible: bool | None = None  # tokenises like the router (checked once per cache epoch)
        self.load = 0  # sequences in flight from this router
        self.info: dict[str, Any] = {}  # model, max_model_len, vocab_size, page_size, cache_enabled
        self.last_error: str | None = None
        self.stats = ReplicaStats()
        self._wake = asyncio.Event()
        self._checked_epoch: str | None = None

    def __repr__(self) -> str:
        return f"Replica({self.index}, {self.url}, healthy={self.healthy}, load={self.load})"

    @property
    def usable(self) -> bool:
        return self.healthy and self.compatible is True

    # ---- requests ------------------------------------------------------------------------------
    def begin(self, namespace: str | None, prompts: list[list[int]], seqs: int, predicted: list[int],
              reason: str) -> Ticket:
        self.load += seqs
        self.stats.decisions[reason] = self.stats.decisions.get(reason, 0) + 1
        return Ticket(self, self.mirror.begin(namespace, prompts), prompts, seqs, predicted)

    def finish(self, ticket: Ticket, usage: Usage | None) -> None:
        """The request answered; `usage`: the prompt and cached tokens the replica reported (each
        prompt once), None when its answer did not say (a stream without usage)."""
        self.load -= ticket.seqs
        # NOTE: the prompts as routing knowledge until the replica's own insert events are in
        # (the answer is relayed unread, so its output tokens come with the events)
        self.mirror.end(ticket.handle, ticket.prompts)
        self.stats.requests += 1
        if usage is not None:
            predicted = sum(ticket.predicted)
            self.stats.reported += 1
            self.stats.prompt_tokens += usage.prompt_tokens
            self.stats.cached_tokens += usage.cached_tokens
            self.stats.predicted_cached_tokens += predicted
            self.stats.exact_predictions += usage.cached_tokens == predicted
        self._wake.set()  # NOTE: poll soon, so the mirror takes these tokens in while they are fresh

    def fail(self, ticket: Ticket) -> None:
        self.load -= ticket.seqs
        self.stats.failed += 1
        self.mirror.end(ticket.handle)

    # ---- health --------------------------------------------------------------------------------
    def mark_down(self, reason: str) -> None:
        self.last_error = reason
        if self.healthy:
            logger.warning("replica %d (%s) is unavailable: %s; retrying it every health interval",
                           self.index, self.url, reason)
        self.healthy = False
        self._wake.set()

    def _mark_up(self) -> None:
        if not self.healthy:
            logger.info("replica %d (%s) is available", self.index, self.url)
        self.healthy = True
        self.last_error = None

    # ---- the poller ----------------------------------------------------------------------------
    async def run(self, client: httpx.AsyncClient, poll_interval_s: float, health_interval_s: float,
                  probe_ids: list[int]) -> None:
        """Poll events forever (cancel to stop): right away when more are waiting, on `_wake`
        (a request finished), else every poll interval; an unreachable replica every health interval."""
        while True:
            try:
                more = await self.poll_once(client, probe_ids)
            except Exception as exc:  # noqa: BLE001 - a malformed answer must not end the polling for good
                logger.exception("replica %d: could not apply its cache events; resyncing from a dump", self.index)
                self.mirror.epoch = None
                self.mark_down(f"{type(exc).__name__}: {exc}")
                more = False
            if more:
                continue
            timeout = poll_interval_s if self.healthy else health_interval_s
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                if not self.healthy:  # woken by mark_down: back off before the next try
                    await asyncio.sleep(health_interval_s)
            except asyncio.TimeoutError:
                pass

    async def poll_once(self, client: httpx.AsyncClient, probe_ids: list[int]) -> bool:
        """One GET /cache/events; returns True when the replica has more events waiting."""
        m = self.mirror
        self._wake.clear()  # NOTE: before taking the batch: a request finishing from here on wakes the next poll
        batch = m.take_pending()
        params: dict[str, Any] = {"after": m.cursor, "epoch": m.epoch} if m.epoch else {"after": -1}
        try:
            resp = await client.get(self.url + "/cache/events", params=params, headers=self.headers)
            if resp.status_code != 200:
                raise _PollError(f"GET /cache/events answered HTTP {resp.status_code}: {resp.text[:200]}")
            body = resp.json()
            if body["epoch"] != self._checked_epoch:
                await self._check(client, body, probe_ids)
        except (httpx.HTTPError, _PollError, ValueError, KeyError) as exc:
            m.restore_pending(batch)
            self.mark_down(str(exc) or type(exc).__name__)
            return False
        try:
            more = self._apply(body, batch)
        except BaseException:
            m.restore_pending(batch)  # NOTE: the batch is released only once everything applied
            raise
        self._mark_up()
        return more

    def _apply(self, body: dict, batch: list) -> bool:
        m = self.mirror
        self.info = {k: body[k] for k in ("model", "max_model_len", "vocab_size", "page_size", "cache_enabled")}
        resync = body.get("resync")
        if resync is not None:
            if m.epoch is not None and m.epoch != body["epoch"]:
                logger.info("replica %d has a new cache (restarted); rebuilding its mirror", self.index)
            namespaces = [(ns["namespace"], dump_paths(ns["nodes"])) for ns in resync["namespaces"]]
            m.resync(body["epoch"], resync["head"], body["page_size"], body["cache_enabled"], namespaces, batch)
            self.stats.resyncs += 1
            return False
        events, more = decode_events(body["events"]), bool(body.get("more"))
        m.apply_events(events, [] if more else batch)
        if more:  # NOTE: the batch's own insertions may be in the part not yet read
            m.restore_pending(batch)
        self.stats.events += len(events)
        return more

    async def _check(self, client: httpx.AsyncClient, body: dict, probe_ids: list[int]) -> None:
        """Once per cache epoch: does this replica tokenise exactly like the router?"""
        resp = await client.post(self.url + "/tokenize", json={"messages": PROBE_MESSAGES}, headers=self.headers)
        if resp.status_code != 200:
            raise _PollError(f"POST /tokenize answered HTTP {resp.status_code}: {resp.text[:200]}")
        same = resp.json()["tokens"] == probe_ids
        if not same and self.compatible is not False:
            logger.error("replica %d (%s, model %s) tokenises a probe chat differently from the router; it gets no "
                         "requests. Start the router with the replicas' --model / --tokenizer.",
                         self.index, self.url, body.get("model"))
        self.compatible = same
        self._checked_epoch = body["epoch"]


class _PollError(Exception):
    pass
