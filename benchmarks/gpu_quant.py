"""Quantized weights on the GPU, one process: random Llama-3.1-8B weights (dummy:) served as bf16, fp8
(per-channel weights, per-token dynamic activations, torch._scaled_mm) and int4 (round-to-nearest,
group 128, Triton dequantising matmul), each quantized at load from the same seeded bf16 draw.

Per method: batch-1 decode tok/s through the engine (device-timed decode steps) and as % of its own
weight-read floor (bytes of every weight read once + the KV read, at the measured copy bandwidth);
decode step time (CUDA graph replay of runner.forward) at batch 1, 8, 32, 64, 128, 256 (context
256); relative logit error and top-1 agreement against bf16 on one 64-token prefill.

Usage: python benchmarks/gpu_quant.py [--out benchmarks/results] [--methods bf16,fp8,int4]
Writes gpu_quant_<chip>.json and .md. Runs in about 5 minutes on one H100.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_engine_parts import (decode_batch, prefill_logits, rand_ids, release, timed_generate,  # noqa: E402
                              weight_bytes)
from radixserve.bench.timing import DecodeStepTimer, copy_bandwidth, cuda_ms  # noqa: E402

from radixserve import Engine  # noqa: E402

log = logging.getLogger("gpu_quant")
BATCHES = (1, 8, 32, 64, 128, 256)
SWEEP_CTX = 256
KV_TOKENS = 80_000  # holds batch 256 x 256 tokens
PREFILL = 64


def bench_method(method: str, args, bw: float, ids: list[int], ref_logits: torch.Tensor | None) -> dict:
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    engine = Engine(args.model, device="cuda", max_total_tokens=KV_TOKENS, max_running_requests=256,
                    quantization=None if method == "bf16" else method, tokenizer=args.tokenizer)
    out: dict = dict(method=method, startup_s=time.perf_counter() - t0)
    runner = engine.runner
    try:
        wbytes, _ = weight_bytes(runner.model)
        m = runner.model
        kv_per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2
        prompt, new = 128, 128
        timed_generate(engine, [rand_ids(prompt, gen)], 16)  # warm-up
        with DecodeStepTimer(engine) as timer:
            timed_generate(engine, [rand_ids(prompt, gen)], new)
        step_ms = timer.step_ms(1)
        floor_ms = (wbytes + kv_per_token * (prompt + new / 2)) / bw / 1e6
        out.update(weight_bytes=wbytes, batch1_decode_step_ms=step_ms, batch1_tokens_per_s=1e3 / step_ms,
                   floor_step_ms=floor_ms, floor_tokens_per_s=1e3 / floor_ms, pct_of_floor=100 * floor_ms / step_ms)
        log.info("%s batch 1: %.2f ms/token (%.0f tok/s), floor %.2f ms (%.0f%%)", method, step_ms, 1e3 / step_ms,
                 floor_ms, out["pct_of_floor"])
        sweep = []
        for b in BATCHES:
            fb, rows, slots = decode_batch(engine, b, SWEEP_CTX)
            ms = cuda_ms(lambda: runner.forward(fb), iters=20)
            release(engine, rows, slots)
            sweep.append(dict(batch=b, context=SWEEP_CTX, graph_step_ms=ms, tokens_per_s=b * 1e3 / ms))
            log.info("%s batch %d: %.3f ms", method, b, ms)
        out["decode_sweep"] = sweep
        logits = prefill_logits(engine, ids)
        if ref_logits is not None:
            err = (logits - ref_logits).norm() / ref_logits.norm()
            agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()
            out.update(rel_logit_error_vs_bf16=float(err), top1_agreement_vs_bf16=float(agree))
        out["_logits"] = logits
    finally:
        engine.shutdown()
        del engine, runner
        gc.collect()
        torch.cuda.empty_cache()
    return out


def write_markdown(res: dict, path: str) -> None:
    runs = {r["method"]: r for r in res["methods"]}
    base = runs.get("bf16")
    L = [f"# Quantized weights, {res['model']} (random weights quantized at load)", "",
         f"{res['device']}, {res['date']}; copy bandwidth {res['copy_gb_per_s']:.0f} GB/s; torch {res['torch']}, "
         f"triton {res['triton']}", "", f"`{res['command']}`", "",
         "## Batch-1 decode (engine, 128-token prompt, 128 new tokens)", "",
         "| method | weights GB | ms/token | tok/s | x bf16 | floor ms | % of floor | rel. logit err vs bf16 | top-1 agree |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        if "batch1_tokens_per_s" not in r:
            continue
        x = r["batch1_tokens_per_s"] / base["batch1_tokens_per_s"] if base and "batch1_tokens_per_s" in base else float("nan")
        L.append(f"| {name} | {r['weight_bytes'] / 1e9:.2f} | {r['batch1_decode_step_ms']:.2f} | "
                 f"{r['batch1_tokens_per_s']:.0f} | {x:.2f} | {r['floor_step_ms']:.2f} | {r['pct_of_floor']:.0f} | "
                 f"{r.get('rel_logit_error_vs_bf16', 0):.2e} | {r.get('top1_agreement_vs_bf16', 1):.3f} |")
    L += ["", f"## Decode step (CUDA graph), context {SWEEP_CTX}: ms (x bf16)", "",
          "| batch | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for i, b in enumerate(BATCHES):
        cells = []
        for r in runs.values():
            sw = r.get("decode_sweep")
            if not sw or i >= len(sw):
                cells.append("-")
                continue
            ms = sw[i]["graph_step_ms"]
            ref = base["decode_sweep"][i]["graph_step_ms"] if base and base.get("decode_sweep") else ms
            cells.append(f"{ms:.2f} ({ref / ms:.2f}x)")
        L.append(f"| {b} | " + " | ".join(cells) + " |")
    if res.get("errors"):
        L += ["", "## Failed", ""] + [f"- {k}: `{v}`" for k, v in res["errors"].items()]
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", default="dummy:llama-3.1-8b")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--methods", default="bf16,fp8,int4")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    name = torch.cuda.get_device_name()
    res = dict(device=name, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               command=" ".join(["python"] + sys.argv), torch=torch.__version__, triton=triton.__version__,
               python=platform.python_version(), model=args.model, methods=[], errors={})
    os.makedirs(args.out, exist_ok=True)
    chip = next((w.lower() for w in name.split() if w[:1] in "ABH" and w[1:].isdigit()), "gpu")
    stem = os.path.join(args.out, f"gpu_quant_{chip}")
    res["copy_gb_per_s"] = copy_bandwidth()
    ids = rand_ids(PREFILL, torch.Generator().manual_seed(1))
    ref = None
    for method in args.methods.split(","):
        try:
            r = bench_method(method, args, res["copy_gb_per_s"], ids, ref)
            logits = r.pop("_logits")
            if method == "bf16":
                ref = logits
            res["methods"].append(r)
        except Exception as exc:  # one failed method must not lose the others' numbers
            log.exception("method %s failed", method)
            res["errors"][method] = f"{type(exc).__name__}: {exc}"[:500]
        with open(stem + ".json", "w") as f:
            json.dump(res, f, indent=1)
        write_markdown(res, stem + ".md")
    log.info("wrote %s.json and .md", stem)
    os._exit(0)  # the engine's loop thread is a daemon; skip interpreter teardown


if __name__ == "__main__":
    main()
