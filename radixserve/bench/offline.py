"""Offline mode: an in-process Engine, every request submitted at once (multi-turn: turn by turn
across conversations), timed through the engine's streaming API."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import NamedTuple

from tqdm import tqdm

from radixserve.bench.metrics import RequestTiming, RunResult, summarize
from radixserve.bench.workloads import BenchRequest, Workload, optimal_hit_rate
from radixserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def reconfigure(engine, **changes) -> None:
    """Switch an idle engine's schedule policy / radix cache without reloading the weights
    (benchmark-only: both are read afresh every step). Flushes the cache."""
    allowed = {"schedule_policy", "disable_radix_cache"}
    if set(changes) - allowed:
        raise ValueError(f"reconfigure only changes {sorted(allowed)}, got {sorted(changes)}")
    if not engine.flush_cache():
        raise RuntimeError("reconfigure needs an idle engine (no running or waiting requests)")
    cfg = dataclasses.replace(engine.scheduler.config, **changes)  # validates
    engine.config = engine.scheduler.config = cfg
    engine.kv.tree.disable = cfg.disable_radix_cache


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)


class _KVSampler:
    """Samples engine.stats()['kv_usage'] while a run is going."""

    def __init__(self, engine, period_s: float = 0.1) -> None:
        self.engine, self.period_s, self.values = engine, period_s, []

    async def run(self) -> None:
        while True:
            self.values.append(self.engine.stats()["kv_usage"])
            await asyncio.sleep(self.period_s)


async def _one(engine, req: BenchRequest, t0: float, timing: RequestTiming, bar: tqdm | None,
               out_ids: list[int] | None = None) -> None:
    rid = uuid.uuid4().hex
    timing.sent = time.perf_counter() - t0
    try:
        async for d in engine.generate_stream(input_ids=req.prompt_ids, sampling_params=greedy(req.max_new_tokens),
                                              request_id=rid):
            now = time.perf_counter() - t0
            if d.token_ids:
                if timing.first_token is None:
                    timing.first_token = now
                timing.chunk_times.append(now)
                timing.output_tokens += len(d.token_ids)
                if out_ids is not None:
                    out_ids.extend(d.token_ids)
            if d.finish_reason is not None:
                timing.cached_tokens = d.cached_tokens
                if d.finish_reason == "abort":
                    timing.error = "aborted"
                else:
                    timing.done = now
    except Exception as exc:  # noqa: BLE001 - counted as an error of this request, the run goes on
        timing.error = f"{type(exc).__name__}: {exc}"
    if bar is not None:
        bar.update(1)


class _Run(NamedTuple):
    timings: list[RequestTiming]
    duration_s: float
    optimal_hit_rate: float
    kv_usage: list[float]  # sampled while running
    truncated: bool


async def _run_all(engine, workload: Workload, deadline_s: float | None, desc: str, sequential: bool) -> _Run:
    t0 = time.perf_counter()
    sampler = _KVSampler(engine)
    sample_task = asyncio.create_task(sampler.run())
    timings: list[RequestTiming] = []
    prompts: list[list[int]] = []
    seqs: list[tuple[list[int], list[int]]] = []  # (prompt, output) of every request
    bar = tqdm(total=workload.num_requests, desc=desc, unit="req", leave=False)

    async def wave(reqs: list[BenchRequest]) -> list[list[int]]:
        ts = [RequestTiming(len(r.prompt_ids)) for r in reqs]
        outs: list[list[int]] = [[] for _ in reqs]
        timings.extend(ts)
        prompts.extend(r.prompt_ids for r in reqs)
        seqs.extend(zip((r.prompt_ids for r in reqs), outs))
        coros = [_one(engine, r, t0, t, bar, o) for r, t, o in zip(reqs, ts, outs)]
        if sequential:
            for c in coros:
                await c
        else:
            await asyncio.gather(*coros)
        return outs

    async def body() -> None:
        if not workload.is_multi_turn:
            await wave(workload.requests)
            return
        convs = workload.conversations
        history = [list(c.system) for c in convs]
        for t in range(max(len(c.user_turns) for c in convs)):
            live = [i for i, c in enumerate(convs) if t < len(c.user_turns)]
            reqs = []
            for i in live:
                history[i] += convs[i].user_turns[t]
                reqs.append(BenchRequest(list(history[i]), convs[i].output_lens[t], i))
            outs = await wave(reqs)
            for i, o in zip(live, outs):
                history[i] += o

    try:
        await asyncio.wait_for(body(), deadline_s)
        truncated = False
    except asyncio.TimeoutError:  # NOTE: wait_for cancels the streams, which aborts their requests
        truncated = True
        logger.warning("%s: stopped at its %.0f s limit", desc, deadline_s)
    duration = time.perf_counter() - t0
    await _wait_idle(engine)  # NOTE: aborted requests still report to this event loop: keep it open
    sample_task.cancel()
    bar.close()
    for t in timings:
        if t.done is None and t.error is None:
            t.error = "time limit"
    return _Run(timings, duration, optimal_hit_rate(prompts, seqs), sampler.values, truncated)


def run_offline(engine, workload: Workload, name: str, deadline_s: float | None = None,
                sequential: bool = False, config: dict | None = None) -> RunResult:
    """Run `workload` on `engine` (all at once, or one at a time when `sequential`)."""
    before = engine.stats()
    run = asyncio.run(_run_all(engine, workload, deadline_s, name, sequential))
    kv = run.kv_usage
    after = engine.stats()
    cfg = {"schedule_policy": engine.config.schedule_policy, "disable_radix_cache": engine.config.disable_radix_cache,
           "page_size": engine.config.page_size, "kv_capacity_tokens": after["kv_capacity_tokens"],
           "model": engine.model_name, **(config or {})}
    return summarize(name, workload.name, "batch1" if sequential else "offline", cfg, run.timings, run.duration_s,
                     run.optimal_hit_rate, kv_usage_peak=max(kv, default=None),
                     kv_usage_mean=sum(kv) / len(kv) if kv else None,
                     retractions=after["retractions"] - before["retractions"],
                     evicted_tokens=after["evicted_tokens"] - before["evicted_tokens"], truncated=run.truncated)


async def _wait_idle(engine, timeout_s: float = 60.0) -> None:
    """Aborted requests leave on the loop's next step; wait for that before the next run."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        s = engine.stats()
        if not s["running"] and not s["waiting"]:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the engine did not go idle after a benchmark run")


def warmup(engine, vocab_size: int, prompt_len: int = 64, output_len: int = 4) -> None:
    """One small request so the first timed run does not pay one-time start-up costs."""
    ids = [100 + i % min(1000, vocab_size - 100) for i in range(prompt_len)]
    engine.generate(input_ids=[ids], sampling_params=greedy(output_len))
    engine.flush_cache()
