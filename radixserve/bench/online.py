"""Online mode: streaming HTTP clients against /v1/completions (token-id prompts), Poisson
arrivals at a given rate, at most `max_concurrency` requests in flight."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time

from tqdm import tqdm

from radixserve.bench.metrics import RequestTiming, RunResult, summarize
from radixserve.bench.workloads import BenchRequest, Workload, optimal_hit_rate

logger = logging.getLogger(__name__)


async def _stream_one(client, url: str, model: str, req: BenchRequest, t0: float, timing: RequestTiming) -> None:
    body = {"model": model, "prompt": req.prompt_ids, "max_tokens": req.max_new_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    timing.sent = time.perf_counter() - t0
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                timing.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    timing.done = time.perf_counter() - t0
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    timing.error = str(chunk["error"])[:200]
                    return
                if chunk.get("choices"):
                    now = time.perf_counter() - t0
                    if timing.first_token is None:
                        timing.first_token = now
                    timing.chunk_times.append(now)
                usage = chunk.get("usage")
                if usage:
                    timing.output_tokens = usage["completion_tokens"]
                    timing.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        if timing.done is None:
            timing.error = "stream ended without [DONE]"
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, the run goes on
        timing.error = f"{type(exc).__name__}: {exc}"


async def _drive(url: str, model: str, workload: Workload, rate: float, max_concurrency: int, seed: int,
                 timeout_s: float) -> tuple[list[RequestTiming], float]:
    import httpx

    if workload.is_multi_turn:
        raise ValueError("online mode runs single-turn workloads (shared-prefix, sharegpt, batch1)")
    rng = random.Random(seed)
    sem = asyncio.Semaphore(max_concurrency)
    timings = [RequestTiming(len(r.prompt_ids)) for r in workload.requests]
    bar = tqdm(total=len(timings), desc=f"online rate={rate} conc={max_concurrency}", unit="req", leave=False)
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        t0 = time.perf_counter()

        async def one(req: BenchRequest, timing: RequestTiming) -> None:
            async with sem:
                await _stream_one(client, url, model, req, t0, timing)
            bar.update(1)

        tasks = []
        for req, timing in zip(workload.requests, timings):
            tasks.append(asyncio.create_task(one(req, timing)))
            if rate != float("inf"):
                await asyncio.sleep(rng.expovariate(rate))  # NOTE: Poisson arrivals
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    bar.close()
    return timings, duration


def run_online(url: str, model: str, workload: Workload, rate: float, max_concurrency: int, seed: int = 0,
               timeout_s: float = 600.0, name: str = "radixserve online", config: dict | None = None,
               engine=None) -> RunResult:
    """Send the workload to a running server at `url`. With `engine` (the server's, in-process),
    KV usage and retractions are read from it too."""
    if rate <= 0 or max_concurrency < 1:
        raise ValueError(f"rate must be > 0 (inf = all at once) and max_concurrency >= 1, got {rate}, "
                         f"{max_concurrency}")
    before = engine.stats() if engine is not None else None
    timings, duration = asyncio.run(_drive(url, model, workload, rate, max_concurrency, seed, timeout_s))
    extra = {}
    if engine is not None:
        after = engine.stats()
        extra = dict(retractions=after["retractions"] - before["retractions"],
                     evicted_tokens=after["evicted_tokens"] - before["evicted_tokens"])
    cfg = {"request_rate": rate, "max_concurrency": max_concurrency, "endpoint": "/v1/completions (stream)",
           **(config or {})}
    result = summarize(name, workload.name, "online", cfg, timings, duration,
                       optimal_hit_rate([r.prompt_ids for r in workload.requests]), **extra)
    errors = [t.error for t in timings if t.error]
    if errors:
        logger.warning("%d online requests failed; first: %s", len(errors), errors[0])
        result.notes = f"first error: {errors[0]}"
    return result
