"""Fused CPU elementwise ops: plain torch vs radixserve.models.cpu_ops vs torch.compile (inductor, C++).

Times, per decoder layer of SmolLM2-135M at a decode batch of 16 tokens, the elementwise work of
one layer (two RMSNorms with their residual adds, rotary on q and k, SiLU*mul) three ways, and
what torch.compile costs to get there: the compile time with an empty inductor cache (a fresh
CI machine, a fresh laptop) and with a warm one (later processes on the same machine).
Each compile measurement runs in a fresh process. Writes JSON + markdown.

    .venv/bin/python benchmarks/cpu_elementwise.py --out benchmarks/results/cpu_elementwise
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

T, HIDDEN, H, HKV, D, INTER = 16, 576, 9, 3, 64, 1536  # SmolLM2-135M, decode batch 16
EPS = 1e-5


def plain_layer(x, res, w1, w2, qkv, gate_up, cos, sin, pos):
    """The elementwise work of one decoder layer, as layers.py does it without fused ops."""
    def norm(h, w):
        h32 = h.float()
        return w * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + EPS)).to(h.dtype)

    def rot(t, c, s):
        a, b = t.chunk(2, dim=-1)
        return torch.cat((a * c - b * s, b * c + a * s), dim=-1)

    r = x + res
    n1 = norm(r, w1)
    q = qkv[:, :H * D].view(-1, H, D)
    k = qkv[:, H * D:(H + HKV) * D].view(-1, HKV, D)
    c, s = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
    q, k = rot(q, c, s), rot(k, c, s)
    r2 = n1 + r  # stands in for attention output + residual
    n2 = norm(r2, w2)
    g, u = gate_up.split(INTER, dim=-1)
    return n2, q, k, F.silu(g) * u


def fused_layer(x, res, w1, w2, qkv, gate_up, cos, sin, pos):
    from radixserve.models import cpu_ops

    n1, r = cpu_ops.add_rms_norm(x, res, w1, EPS)
    q = qkv[:, :H * D].view(-1, H, D)
    k = qkv[:, H * D:(H + HKV) * D].view(-1, HKV, D)
    cpu_ops.apply_rotary(q, k, pos, cos, sin)
    n2, _ = cpu_ops.add_rms_norm(n1, r, w2, EPS)
    return n2, q, k, cpu_ops.silu_mul(gate_up)


def inputs(t: int = T):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(t, HIDDEN, generator=g), torch.randn(t, HIDDEN, generator=g), torch.randn(HIDDEN, generator=g),
            torch.randn(HIDDEN, generator=g), torch.randn(t, (H + 2 * HKV) * D, generator=g),
            torch.randn(t, 2 * INTER, generator=g), torch.randn(8192, D // 2, generator=g),
            torch.randn(8192, D // 2, generator=g), torch.arange(500, 500 + t))


def time_us(fn, make_args, n: int = 400) -> dict:
    args = [make_args() for _ in range(8)]
    for a in args:
        fn(*a)
    ts = []
    for i in range(n):
        a = args[i % len(args)]
        t0 = time.perf_counter()
        fn(*a)
        ts.append((time.perf_counter() - t0) * 1e6)
    ts.sort()
    return {"median_us": statistics.median(ts), "p10_us": ts[n // 10], "p90_us": ts[9 * n // 10]}


def compile_child() -> None:
    """Run in a fresh process: compile plain_layer, report compile time and the compiled step."""
    t0 = time.perf_counter()
    compiled = torch.compile(plain_layer, dynamic=True)
    compiled(*inputs())
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiled(*inputs(5))  # another batch size: must not recompile
    second = time.perf_counter() - t1
    print(json.dumps({"first_call_s": first, "other_batch_first_call_s": second,
                      "compiled": time_us(compiled, inputs)}))


def run_child(cache_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/cpu_elementwise")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        compile_child()
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from radixserve.bench.report import head_lines, header, save
    from radixserve.bench.timing import spread, spread_text

    res = {**header("CPU elementwise ops per decoder layer: plain torch, cpu_ops, torch.compile"),
           "shape": dict(tokens=T, hidden=HIDDEN, heads=H, kv_heads=HKV, head_dim=D, intermediate=INTER),
           "repeats": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child(cache)
            warm = run_child(cache)
        res["repeats"].append({"plain": time_us(plain_layer, inputs), "cpu_ops": time_us(fused_layer, inputs),
                               "compile_cold": cold, "compile_warm": warm, "load_average_1m": os.getloadavg()[0]})
    rep = res["repeats"]

    def med(f):
        return spread_text(spread([f(r) for r in rep]), ".1f")

    lines = head_lines(res) + [
             f"- {args.repeats} repeats on a machine shared with other work: medians, min-max in brackets", "",
             "| | per layer (us) | x 30 layers (ms) |", "|---|---|---|",
             f"| plain torch | {med(lambda r: r['plain']['median_us'])} | "
             f"{med(lambda r: r['plain']['median_us'] * 30 / 1e3)} |",
             f"| cpu_ops (in place, fewer ops) | {med(lambda r: r['cpu_ops']['median_us'])} | "
             f"{med(lambda r: r['cpu_ops']['median_us'] * 30 / 1e3)} |",
             f"| torch.compile (inductor C++) | {med(lambda r: r['compile_warm']['compiled']['median_us'])} | "
             f"{med(lambda r: r['compile_warm']['compiled']['median_us'] * 30 / 1e3)} |", "",
             f"- torch.compile first call, empty inductor cache: {med(lambda r: r['compile_cold']['first_call_s'])} s; "
             f"warm cache (a later process): {med(lambda r: r['compile_warm']['first_call_s'])} s; "
             f"a second batch size after that: {med(lambda r: r['compile_warm']['other_batch_first_call_s'])} s"]
    save(args.out, res, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
