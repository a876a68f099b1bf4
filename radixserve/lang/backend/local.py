"""LocalBackend: programs run on an in-process Engine, no HTTP."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

from radixserve.lang.backend.base import Aborted, Backend, GenOutput, OnChunk, ScoreOutput, ScoreRequest
from radixserve.engine.interface import EngineHandle
from radixserve.sampling_params import SamplingParams


class LocalBackend(Backend):
    """`LocalBackend(engine=None, **engine_options)`: on `engine`, or on a new Engine built from
    `engine_options` (EngineConfig fields; model None = the embedded SmolLM2-135M-Instruct),
    which the backend then owns and shuts down in `shutdown()`.

    Calls go through the engine's asyncio API on one event-loop thread owned by the backend, so
    every request has an id the language can abort."""

    def __init__(self, engine: EngineHandle | None = None, **engine_options: Any) -> None:
        super().__init__()
        if engine is not None and engine_options:
            raise ValueError("give either an engine or engine options, not both")
        self._owns_engine = engine is None
        if engine is None:
            from radixserve.engine.engine import Engine

            engine = Engine(**engine_options)
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="radixserve-lang-local", daemon=True)
        self._thread.start()
        # NOTE: both are touched on the loop thread only.
        self._active: dict[str, list[str]] = {}  # a call's rid -> the engine request ids it runs as
        self._aborted_early: set[str] = set()
        self._closed = False

    @property
    def caches_prefixes(self) -> bool:
        return not self.engine.config.disable_radix_cache

    def generate(self, input_ids: list[int], params: SamplingParams, rid: str,
                 on_chunk: OnChunk | None = None) -> GenOutput:
        return self._call(self._generate(list(input_ids), params, rid, on_chunk))

    def score(self, requests: Sequence[ScoreRequest], rid: str) -> list[ScoreOutput]:
        return self._call(self._score(list(requests), rid))

    def abort(self, rid: str) -> None:
        if not self._closed:
            self._loop.call_soon_threadsafe(self._abort_on_loop, rid)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
        if self._owns_engine:
            self.engine.shutdown()

    # ---- on the loop thread ---------------------------------------------------------------------
    def _call(self, coro):
        if self._closed:
            coro.close()
            raise RuntimeError("this LocalBackend has been shut down; create a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _abort_on_loop(self, rid: str) -> None:
        if rid in self._active:
            for request_id in self._active[rid]:
                self.engine.abort(request_id)
        else:  # not submitted yet: refuse it when it comes
            self._aborted_early.add(rid)

    def _start(self, rid: str, request_ids: list[str]) -> None:
        if rid in self._aborted_early:
            self._aborted_early.discard(rid)
            raise Aborted(rid)
        self._active[rid] = request_ids

    async def _generate(self, ids: list[int], params: SamplingParams, rid: str, on_chunk: OnChunk | None) -> GenOutput:
        self._start(rid, [rid])
        try:
            if on_chunk is None:
                o = (await self.engine.agenerate(ids, params, request_id=rid))[0]
                return GenOutput(o.token_ids, o.text, o.finish_reason or "abort", o.prompt_tokens, o.cached_tokens,
                                 _pairs(o.logprobs) if params.logprobs is not None else None)
            token_ids: list[int] = []
            pieces: list[str] = []
            lps: list[tuple[float, int]] = []
            last = None
            async for d in self.engine.generate_stream(ids, params, request_id=rid):
                if d.text or d.token_ids:
                    on_chunk(d.text, list(d.token_ids))
                token_ids += d.token_ids
                pieces.append(d.text)
                lps += _pairs(d.logprobs or [])
                last = d
            if last is None:
                return GenOutput([], "", "abort", len(ids), 0)
            return GenOutput(token_ids, "".join(pieces), last.finish_reason or "abort", last.prompt_tokens,
                             last.cached_tokens, lps if params.logprobs is not None else None)
        finally:
            self._active.pop(rid, None)

    async def _score(self, requests: list[ScoreRequest], rid: str) -> list[ScoreOutput]:
        request_ids = [f"{rid}-{i}" for i in range(len(requests))]  # one engine request per scored prompt
        self._start(rid, request_ids)
        try:
            coros = [self.engine.agenerate(r.input_ids, SamplingParams(max_new_tokens=0, temperature=0.0,
                                                                       prompt_logprobs_start=r.start),
                                           request_id=request_id)
                     for request_id, r in zip(request_ids, requests)]
            try:
                outs = await asyncio.gather(*coros)
            except BaseException:
                for request_id in request_ids:
                    self.engine.abort(request_id)
                raise
            results = []
            for (o,) in outs:
                if o.finish_reason == "abort":
                    raise Aborted(rid)
                results.append(ScoreOutput([p.logprob for p in o.prompt_logprobs or []], o.prompt_tokens,
                                           o.cached_tokens))
            return results
        finally:
            self._active.pop(rid, None)


def _pairs(logprobs) -> list[tuple[float, int]]:
    return [(p.logprob, p.token_id) for p in logprobs]
