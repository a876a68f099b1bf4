"""float32 vs bfloat16 on this CPU: the decode step of the `bench cpu` workload in each dtype.

Why float32 is the CPU default: without AMX (or AVX512-BF16) the CPU has no bfloat16 matmul
units, and bfloat16 weights are converted on the fly. Runs the two dtypes alternately, `--repeats`
times each, and writes JSON + markdown.

    .venv/bin/python benchmarks/cpu_dtype.py --out benchmarks/results/cpu_dtype
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/cpu_dtype")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=24)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from radixserve import Engine
    from radixserve.bench import workloads
    from radixserve.bench.offline import run_offline, warmup
    from radixserve.bench.report import head_lines, header, save
    from radixserve.bench.timing import CpuStepTimer, spread, spread_text

    w = workloads.shared_prefix(1, 16, 500, 24, args.output_len, vocab_size=32000, seed=0)
    engines = {dt: Engine(None, device="cpu", dtype=dt, max_total_tokens=16384) for dt in ("float32", "bfloat16")}
    res = {**header("CPU decode step, float32 vs bfloat16 (SmolLM2-135M, batch 16)"), "runs": []}
    try:
        for e in engines.values():
            warmup(e, e.vocab_size)
        for rep in range(args.repeats):
            for dt, e in engines.items():
                e.flush_cache()
                with CpuStepTimer(e, 16) as timer:
                    r = run_offline(e, w, f"{dt} (repeat {rep + 1})")
                res["runs"].append({"dtype": dt, "output_tok_per_s": r.output_tok_per_s,
                                    "decode_step_ms": statistics.median(timer.times) * 1e3,
                                    "load_average_1m": os.getloadavg()[0]})
    finally:
        for e in engines.values():
            e.shutdown()
    lines = head_lines(res) + [f"- {args.repeats} repeats per dtype, alternating, on a machine shared with other "
                               "work; medians, min-max in brackets", "",
                               "| dtype | decode step at batch 16 (ms) | output tok/s |", "|---|---|---|"]
    for dt in engines:
        steps = [r["decode_step_ms"] for r in res["runs"] if r["dtype"] == dt]
        toks = [r["output_tok_per_s"] for r in res["runs"] if r["dtype"] == dt]
        lines.append(f"| {dt} | {spread_text(spread(steps), '.0f')} | {spread_text(spread(toks), '.1f')} |")
    save(args.out, res, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
