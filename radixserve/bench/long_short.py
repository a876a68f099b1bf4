"""`radixserve bench long-short`: N long prompts sent together with many short requests.

Without a step budget every step carries a long prompt's chunk, so each short request advances
one token per long step and finishes only when the long prompts do. Three runs on one engine, each
with fresh random prompts (no cache hits between runs):

- `long alone`: the long prompts by themselves (their time to first token is the baseline);
- `together, no budget`: long + short, `max_step_ms` off;
- `together, max_step_ms=X`: long + short with the step budget.

Reported: the short requests' TTFT and ITL p50/p99, the long prompts' TTFT, and its growth over
the long-alone run.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import NamedTuple

from radixserve.bench import report
from radixserve.bench.metrics import RequestTiming, percentiles
from radixserve.bench.offline import _one, _wait_idle, warmup
from radixserve.bench.workloads import FIRST_ID, BenchRequest

logger = logging.getLogger(__name__)


class Scale(NamedTuple):
    long_prompts: int
    long_len: int
    long_out: int
    shorts: int
    short_len: int
    short_out: int
    max_step_ms: float
    chunked_prefill_size: int
    max_prefill_tokens: int
    warmup_len: int  # one prompt of this length first: kernels compile and plans are built outside the runs


SCALES = {
    # the workload on an H100: two 100k-token prompts + 32 requests of 200 in / 64 out
    "gpu": Scale(2, 100_000, 8, 32, 200, 64, 100.0, 2048, 8192, 16384),
    # scaled to a shared 2-core CPU and SmolLM2-135M, where a 256-token chunk takes seconds and a
    # decode step of 18 rows about one
    "cpu": Scale(2, 1024, 8, 16, 64, 32, 2500.0, 256, 1024, 64),
}


def _requests(n: int, length: int, out: int, vocab: int, rng: random.Random) -> list[BenchRequest]:
    hi = min(vocab, 32000)
    return [BenchRequest([rng.randrange(FIRST_ID, hi) for _ in range(length)], out) for _ in range(n)]


def _set_budget(engine, max_step_ms: float | None) -> None:
    """Switch an idle engine's step budget (the scheduler reads its config every step)."""
    cfg = dataclasses.replace(engine.scheduler.config, max_step_ms=max_step_ms)
    engine.config = engine.scheduler.config = cfg


async def _run(engine, reqs: list[BenchRequest]) -> tuple[list[RequestTiming], float]:
    t0 = time.perf_counter()
    timings = [RequestTiming(len(r.prompt_ids)) for r in reqs]
    await asyncio.gather(*(_one(engine, r, t0, t, None) for r, t in zip(reqs, timings)))
    duration = time.perf_counter() - t0
    await _wait_idle(engine)
    return timings, duration


def _summary(name: str, timings: list[RequestTiming], n_long: int, duration: float, max_step_ms) -> dict:
    longs, shorts = timings[:n_long], timings[n_long:]
    errors = [t.error for t in timings if t.error is not None]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} requests failed, e.g. {errors[0]}")

    def ttft(ts):
        return [t.first_token - t.sent for t in ts]
    itl = [b - a for t in shorts for a, b in zip(t.chunk_times, t.chunk_times[1:])]
    return {"name": name, "max_step_ms": max_step_ms, "duration_s": duration,
            "long_ttft_s": ttft(longs), "long_ttft_max_s": max(ttft(longs)),
            "short_ttft_s": percentiles(ttft(shorts)) if shorts else None,
            "short_itl_s": percentiles(itl) if shorts else None,
            "short_e2e_s": percentiles([t.done - t.sent for t in shorts]) if shorts else None,
            "short_output_tokens": sum(t.output_tokens for t in shorts)}


def run(spec, scale: Scale, out_dir: str, stem: str, vocab: int, seed: int = 0) -> dict:
    """The three runs on one engine; writes <stem>.json and <stem>.md."""
    options = dict(spec.options)
    options.setdefault("chunked_prefill_size", scale.chunked_prefill_size)
    options.setdefault("max_prefill_tokens", scale.max_prefill_tokens)
    engine = dataclasses.replace(spec, options=tuple(sorted({**options, "max_step_ms": scale.max_step_ms}.items()))
                                 ).build()
    rng = random.Random(seed)
    runs = []
    try:
        warmup(engine, vocab, prompt_len=min(scale.warmup_len, scale.long_len))
        plan = [("long alone", scale.max_step_ms, 0), ("together, no budget", None, scale.shorts),
                (f"together, max_step_ms={scale.max_step_ms:g}", scale.max_step_ms, scale.shorts)]
        for name, budget, shorts in plan:
            _set_budget(engine, budget)
            reqs = (_requests(scale.long_prompts, scale.long_len, scale.long_out, vocab, rng)
                    + _requests(shorts, scale.short_len, scale.short_out, vocab, rng))
            logger.info("long-short: %s (%d long x %d + %d short x %d)", name, scale.long_prompts, scale.long_len,
                        shorts, scale.short_len)
            timings, duration = asyncio.run(_run(engine, reqs))
            runs.append(_summary(name, timings, scale.long_prompts, duration, budget))
            engine.flush_cache()
        coef = dataclasses.asdict(engine.scheduler.step_cost.coefficients) if engine.scheduler.step_cost else None
        model = engine.model_name
    finally:
        engine.shutdown()
    alone = runs[0]["long_ttft_max_s"]
    for r in runs:
        r["long_ttft_vs_alone"] = r["long_ttft_max_s"] / alone
    title = (f"long-short: {scale.long_prompts} x {scale.long_len}-token prompts + {scale.shorts} short "
             f"({scale.short_len} in, {scale.short_out} out), {model}")
    doc = {**report.header(title), "scale": scale._asdict(), "engine_options": options, "runs": runs,
           "step_cost_coefficients_at_end": coef}
    _write(out_dir, stem, doc)
    return doc


def _ms(v) -> str:
    return "-" if v is None else f"{1e3 * v:.0f}"


def _write(out_dir: str, stem: str, doc: dict) -> None:
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    md = [f"# {doc['title']}", "", f"- date: {doc['date']}", f"- command: `{doc['command']}`",
          f"- machine: {json.dumps(doc['machine'])}", f"- scale: {json.dumps(doc['scale'])}",
          f"- step cost coefficients at the end (ms): {json.dumps(doc['step_cost_coefficients_at_end'])}", "",
          "| run | short TTFT p50 ms | short TTFT p99 ms | short ITL p50 ms | short ITL p99 ms | short e2e p99 ms "
          "| long TTFT ms (max) | long TTFT / alone | duration s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        t, i, e = r["short_ttft_s"] or {}, r["short_itl_s"] or {}, r["short_e2e_s"] or {}
        md.append(f"| {r['name']} | {_ms(t.get('p50'))} | {_ms(t.get('p99'))} | {_ms(i.get('p50'))} | "
                  f"{_ms(i.get('p99'))} | {_ms(e.get('p99'))} | {_ms(r['long_ttft_max_s'])} | "
                  f"{r['long_ttft_vs_alone']:.2f} | {r['duration_s']:.1f} |")
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    logger.info("wrote %s/%s.{json,md}", out_dir, stem)
