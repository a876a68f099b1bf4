"""Offline Engine.generate with every request at once vs the same requests kept at most
`--concurrency` in flight (the shape of N streaming clients), on CPU with a tiny dummy model.

The script reports wall time, steps, tokens per step and the scheduler thread's time per step:
`Scheduler._schedule`, `ResultProcessor.finalize` (tokens appended, text made, events), the whole
`Scheduler.step`, and its host part (the step less the forward and the sampling, which on CPU are
the model's compute). It checks that both modes produce the same greedy tokens and text.

    .venv/bin/python benchmarks/cpu_offline_vs_streams.py --out benchmarks/results/offline_vs_streams_cpu
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import time

from radixserve import Engine
from radixserve.bench import workloads
from radixserve.bench.offline import greedy
from radixserve.scheduler.scheduler import Scheduler


class StepMeter:
    """Wraps one Scheduler's step and _schedule with timers (host time, tokens per step)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.reset()
        step, schedule = sched.step, sched._schedule
        forward, sample, finalize = sched.forward, sched.results.sample, sched.results.finalize

        def timed(fn, field):
            def call(*a):
                t = time.perf_counter()
                out = fn(*a)
                setattr(self, field, getattr(self, field) + time.perf_counter() - t)
                return out
            return call
        # NOTE: on CPU the forward and the sampling (argmax over the vocabulary) are the model's compute
        sched.forward = timed(forward, "forward_s")
        sched.results.sample = timed(sample, "sample_s")
        sched.results.finalize = timed(finalize, "finalize_s")

        def timed_schedule():
            t = time.perf_counter()
            rows = schedule()
            self.schedule_s += time.perf_counter() - t
            self.tokens += sum(ext for _, ext in rows)
            self.rows += len(rows)
            return rows

        def timed_step():
            t = time.perf_counter()
            worked = step()
            self.step_s += time.perf_counter() - t
            return worked
        sched._schedule = timed_schedule
        sched.step = timed_step

    def reset(self) -> None:
        self.schedule_s = self.step_s = self.forward_s = self.sample_s = self.finalize_s = 0.0
        self.tokens = self.rows = 0
        self.first_step = self.sched.step_count

    def report(self) -> dict:
        steps = self.sched.step_count - self.first_step
        return dict(steps=steps, tokens_per_step=self.tokens / max(steps, 1), rows_per_step=self.rows / max(steps, 1),
                    schedule_ms_per_step=1e3 * self.schedule_s / max(steps, 1),
                    step_ms_per_step=1e3 * self.step_s / max(steps, 1),
                    finalize_ms_per_step=1e3 * self.finalize_s / max(steps, 1),
                    host_ms_per_step=1e3 * (self.step_s - self.forward_s - self.sample_s) / max(steps, 1))


def run_all_at_once(engine: Engine, reqs) -> list[list[int]]:
    outs = engine.generate(input_ids=[r.prompt_ids for r in reqs],
                           sampling_params=[greedy(r.max_new_tokens) for r in reqs])
    return [(o.token_ids, o.text) for o in outs]


def run_bounded(engine: Engine, reqs, concurrency: int) -> list[list[int]]:
    async def main() -> list[list[int]]:
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                return (await engine.agenerate(input_ids=r.prompt_ids, sampling_params=greedy(r.max_new_tokens)))[0]
        return [(o.token_ids, o.text) for o in await asyncio.gather(*(one(r) for r in reqs))]
    return asyncio.run(main())


def measure(engine: Engine, meter: StepMeter, name: str, fn) -> tuple[dict, list[list[int]]]:
    engine.flush_cache()
    meter.reset()
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    res = dict(name=name, wall_s=wall, req_per_s=len(out) / wall,
               out_tok_per_s=sum(len(ids) for ids, _ in out) / wall) | meter.report()
    print(json.dumps(res), flush=True)
    return res, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--mean-in", type=float, default=52)  # ShareGPT's shape, a quarter of its lengths
    ap.add_argument("--mean-out", type=float, default=42)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="write <out>.json")
    ap.add_argument("--save-outputs", default=None, help="write Engine.generate's (token ids, text) here (JSON)")
    args = ap.parse_args()
    engine = Engine("dummy:tiny-llama", device="cpu", max_total_tokens=200_000)
    try:
        meter = StepMeter(engine.scheduler)
        w = workloads.sharegpt(args.num_requests, engine.vocab_size, seed=0, mean_in=args.mean_in,
                               mean_out=args.mean_out, max_in=512, max_out=256)
        run_all_at_once(engine, w.requests[:8])  # warm-up
        runs = []
        for _ in range(args.repeats):
            a, out_a = measure(engine, meter, "offline: Engine.generate(all)", lambda: run_all_at_once(engine, w.requests))
            b, out_b = measure(engine, meter, f"bounded: {args.concurrency} in flight",
                               lambda: run_bounded(engine, w.requests, args.concurrency))
            if out_a != out_b:
                sys.exit("the two modes produced different greedy tokens or text")
            runs += [a, b]
        if args.save_outputs:
            with open(args.save_outputs, "w") as f:
                json.dump(out_a, f)
    finally:
        engine.shutdown()
    doc = dict(date=datetime.date.today().isoformat(), machine=f"{platform.machine()} {os.cpu_count()} cpus, "
               f"{platform.platform()}", command=" ".join(["python"] + sys.argv), settings=vars(args), runs=runs)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
