"""The two halves of an engine on Ray Serve.

- `EngineReplica`: the body of the engine deployment. Each replica runs one in-process `Engine`
  (its devices are the ones Ray gave the actor) and reports its radix tree to the request router
  through `record_routing_stats`.
- `RayEngine`: an EngineHandle (radixserve/engine/interface.py) over a DeploymentHandle to those
  replicas, for the ingress. Requests are prepared (the one validation) here, at the ingress, and
  cross to a replica as PreparedRequests, token ids included: the request router reads them there
  (radixserve/deploy/ray_router.py), so a request is tokenised once, at the ingress.

Replica death: `agenerate` (a whole answer, nothing passed on yet) is retried once on another
replica; a stream is not (the client may already hold part of it) and ends with a 503 error
(code replica_unavailable), as does a whole request whose retry failed too.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from radixserve.engine.chat_template import ChatTemplating
from radixserve.engine.prepare import OverContext, PreparedRequest, RequestLimits, prepare
from radixserve.grammar.backend import GrammarBackend
from radixserve.outputs import RequestOutput, StreamDelta
from radixserve.sampling_params import SamplingParams
from radixserve.server.errors import APIError

logger = logging.getLogger(__name__)
STATS_MAX_AGE_S = 2.0


class EngineReplica:
    """One replica of the engine deployment (decorated with serve.deployment by ray_serve.py)."""

    def __init__(self, engine_options: dict[str, Any]) -> None:
        from radixserve import Engine

        self.engine = Engine(**engine_options)

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to prepare requests as this engine would."""
        e = self.engine
        return dict(tokenizer=e.tokenizer, config=e.config, model_name=e.model_name,
                    max_context_len=e.max_context_len, vocab_size=e.vocab_size, eos_ids=set(e.eos_ids),
                    limits=e.limits)

    async def agenerate(self, prepared: PreparedRequest, request_id: str | None = None,
                        cache_salt: str | None = None) -> list[RequestOutput]:
        return await self.engine.agenerate(prepared, request_id=request_id, cache_salt=cache_salt)

    async def generate_stream(self, prepared: PreparedRequest, request_id: str | None = None,
                              cache_salt: str | None = None) -> AsyncIterator[StreamDelta]:
        # NOTE: Ray cancels this generator when the ingress closes its stream: the engine aborts the request
        async for delta in self.engine.generate_stream(prepared, request_id=request_id, cache_salt=cache_salt):
            yield delta

    def stats(self) -> dict:
        return self.engine.stats()

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    async def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve polls this (request_routing_stats_period_s) and hands it to the request router:
        the whole tree (a resync answer of GET /cache/events), which the router's mirror replaces its
        copy with. NOTE: O(tree) per period; an event cursor per router would make it O(changes)."""
        return await self.engine.cache_events(-1, None, 1)

    def check_health(self) -> None:
        if not self.engine.is_alive():
            raise RuntimeError("the engine loop stopped")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class RayEngine(ChatTemplating):
    """An EngineHandle over the engine deployment's replicas (`handle`: a DeploymentHandle)."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self.handle = handle
        self.tokenizer = info["tokenizer"]
        self.config = info["config"]
        self.model_name: str = info["model_name"]
        self.max_context_len: int = info["max_context_len"]
        self.vocab_size: int = info["vocab_size"]
        self.eos_ids: set[int] = info["eos_ids"]
        self.limits: RequestLimits = info["limits"]
        self.grammar = GrammarBackend(self.tokenizer, self.vocab_size, self.eos_ids, 1,
                                      # NOTE: validation only: grammars compile in the replicas
                                      self.config.grammar_compile_timeout_s)
        self._running: dict[str, Any] = {}  # request id -> its Ray response, for abort
        self._stats: dict = {}
        self._stats_at = 0.0
        self._stats_task: asyncio.Task | None = None
        self._alive = True

    @classmethod
    async def connect(cls, handle: Any) -> "RayEngine":
        return cls(handle, await handle.describe.remote())

    # ---- prompts and validation ------------------------------------------------------------------
    def prepare(self, input_ids: Sequence[int], params: SamplingParams,
                over_context: OverContext = "clamp") -> PreparedRequest:
        return prepare(input_ids, params, self.limits, self.grammar, over_context)

    def _prepared(self, input_ids, params, prompt) -> PreparedRequest:
        if isinstance(input_ids, PreparedRequest):
            return input_ids
        if input_ids is None:
            if prompt is None:
                raise ValueError("give input_ids or prompt")
            input_ids = self.tokenizer.encode(prompt)
        return self.prepare(input_ids, params or SamplingParams())

    # ---- generation ------------------------------------------------------------------------------
    async def agenerate(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                        sampling_params: SamplingParams | None = None, request_id: str | None = None,
                        cache_salt: str | None = None, prompt: str | None = None) -> list[RequestOutput]:
        prepared = self._prepared(input_ids, sampling_params, prompt)
        rid = request_id or uuid.uuid4().hex
        for attempt in (0, 1):  # NOTE: a whole answer is idempotent until it returns: one retry elsewhere
            response = self.handle.agenerate.remote(prepared, request_id=rid, cache_salt=cache_salt)
            self._running[rid] = response
            try:
                return await response
            except Exception as exc:
                if not _replica_died(exc):
                    raise
                if attempt:
                    raise APIError(503, "The replica serving this request died, and so did the one it was retried "
                                   "on; retry later.", code="replica_unavailable") from exc
                logger.warning("request %s: its replica died (%s); retrying it once on another", rid, exc)
            finally:
                self._running.pop(rid, None)
        raise AssertionError("unreachable")

    async def generate_stream(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                              sampling_params: SamplingParams | None = None, request_id: str | None = None,
                              cache_salt: str | None = None, prompt: str | None = None) -> AsyncIterator[StreamDelta]:
        prepared = self._prepared(input_ids, sampling_params, prompt)
        rid = request_id or uuid.uuid4().hex
        stream = self.handle.options(stream=True).generate_stream.remote(prepared, request_id=rid,
                                                                         cache_salt=cache_salt)
        self._running[rid] = stream
        try:
            async for delta in stream:
                yield delta
        except Exception as exc:
            if _replica_died(exc):
                raise APIError(503, "The replica serving this stream died; Ray is replacing it. Retry the request.",
                               code="replica_unavailable") from exc
            raise
        finally:
            self._running.pop(rid, None)
            stream.cancel()  # NOTE: a no-op when it ended; else the replica's generator is cancelled (abort)

    def generate(self, prompts=None, sampling_params=None, input_ids=None, cache_salt=None) -> list[RequestOutput]:
        raise NotImplementedError("RayEngine serves the ingress (async); use the HTTP API or a DeploymentHandle")

    def abort(self, request_id: str, reason: str = "abort") -> None:
        response = self._running.pop(request_id, None)
        if response is not None:
            response.cancel()

    # ---- state -----------------------------------------------------------------------------------
    def stats(self) -> dict:
        """One replica's counters, at most STATS_MAX_AGE_S old (a scrape must not wait on a replica)."""
        idle = self._stats_task is None or self._stats_task.done()
        if idle and time.monotonic() - self._stats_at > STATS_MAX_AGE_S:
            try:
                self._stats_task = asyncio.get_running_loop().create_task(self._refresh_stats())
            except RuntimeError:  # NOTE: called off the ingress's loop: the last snapshot will do
                pass
        return self._stats

    async def _refresh_stats(self) -> None:
        try:
            self._stats = await self.handle.stats.remote()
            self._stats_at = time.monotonic()
        except Exception:  # noqa: BLE001 - the next scrape tries again
            logger.exception("reading a replica's stats failed")

    def flush_cache(self) -> bool:
        return False  # NOTE: the ingress fronts several caches; flush each replica through Ray

    def check_integrity(self) -> None:
        pass  # NOTE: each replica's engine checks its own tree when idle

    async def cache_events(self, after: int, epoch: str | None, limit: int) -> dict:
        """The ingress fronts several caches: it has none of its own (the request router mirrors them)."""
        return {"epoch": "ray-ingress", "page_size": self.limits.page_size, "cache_enabled": False, "head": -1,
                "events": [], "more": False}

    def is_alive(self) -> bool:
        return self._alive

    def shutdown(self) -> None:
        self._alive = False


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError))
