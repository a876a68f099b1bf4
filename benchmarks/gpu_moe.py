"""Mixture of experts on the GPU, one process: Qwen3-30B-A3B shapes (dummy: random weights).

1. kernel: the fused Triton MoE (kernels/fused_moe.py) vs its torch reference at one Qwen3-30B-A3B
   layer (hidden 2048, 128 experts, top-8 renormalised, expert intermediate 768, bf16) for M tokens:
   relative error, median ms of each, speedup, and % of the bytes floor (the experts a random routing
   touches, expected E * (1 - (1 - k/E)^M), x one expert's bytes, at the measured copy bandwidth).
2. engine, per method (--methods, default bf16,fp8,int4; a method the engine refuses is recorded):
   batch-1 decode (128-token prompt, 128 new, device-timed steps) vs the ACTIVE-weight floor
   (attention, norms, router, lm_head, one embedding row and top_k/E of the expert weights + KV);
   decode step (CUDA graph replay of runner.forward) at batch 1..256, context 256. bf16 only: 10
   concurrent requests of 2048 random tokens in / 1024 out (greedy, ignore_eos): output tok/s and TPOT,
   beside vLLM's published 740 tok/s, 13.2 ms (H100) and the target >= 900 tok/s, <= 11 ms.
3. correctness: transformers' Qwen3MoeForCausalLM at full layer width, 2 layers, seeded random bf16
   weights, saved and loaded by our Engine: prefill logits of one 64-token prompt (relative error and
   top-1 agreement vs transformers bf16 and float32).

Usage: python benchmarks/gpu_moe.py [--out benchmarks/results] [--tokenizer DIR] [--methods bf16,fp8,int4]
       python benchmarks/gpu_moe.py --device cpu --quick --out /tmp/moe   (smoke test of the logic, tiny shapes)
Writes gpu_moe_<chip>.json and .md after every section.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_engine_parts import (decode_batch, prefill_logits, rand_ids, release, timed_generate,  # noqa: E402
                              weight_bytes)

from radixserve import Engine  # noqa: E402
from radixserve.bench.report import save  # noqa: E402
from radixserve.bench.timing import (CpuStepTimer, DecodeStepTimer, copy_bandwidth, cuda_ms, failed_sections,  # noqa: E402
                                     gpu_chip, gpu_header, run_section)
from radixserve.models.moe import route  # noqa: E402

log = logging.getLogger("gpu_moe")
VLLM_TOKS, VLLM_TPOT, TARGET_TOKS, TARGET_TPOT = 740.0, 13.2, 900.0, 11.0


def sizes(quick: bool) -> dict:
    if quick:  # tiny-qwen3-moe shapes: the CPU smoke path
        return dict(spec="tiny-qwen3-moe", hidden=64, experts=8, top_k=2, inter=32, tokens=(1, 8, 32), iters=3,
                    batches=(1, 4), ctx=32, kv=4096, prompt=16, new=8, conc=(2, 32, 16), prefill=16)
    return dict(spec="qwen3-30b-a3b", hidden=2048, experts=128, top_k=8, inter=768,
                tokens=(1, 8, 32, 64, 128, 256, 1024), iters=20, batches=(1, 8, 32, 64, 128, 256), ctx=256,
                kv=70_000, prompt=128, new=128, conc=(10, 2048, 1024), prefill=64)


def time_ms(fn, iters: int) -> float:
    """Median ms: CUDA events on the GPU, wall clock on the CPU (smoke path)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return cuda_ms(fn, iters=iters)
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def active_weight_bytes(model, top_k: int, num_experts: int) -> int:
    """Bytes one token's decode step reads: every weight once, except the embedding table (one row,
    unless tied to the lm_head) and the stacked experts (experts_gate_up / experts_down, [E, ...]):
    top_k / num_experts of them."""
    total, _ = weight_bytes(model)
    experts = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".experts_" in n)
    return int(total - experts + experts * top_k / num_experts)


def bench_kernel(res: dict, s: dict, dev: str) -> None:
    from radixserve.kernels.fused_moe import fused_moe, fused_moe_ref
    gen = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    e, k, h, i = s["experts"], s["top_k"], s["hidden"], s["inter"]
    w_gu = (0.02 * torch.randn(e, 2 * i, h, generator=gen, device=dev)).to(dt)
    w_d = (0.02 * torch.randn(e, h, i, generator=gen, device=dev)).to(dt)
    expert_bytes = (w_gu[0].numel() + w_d[0].numel()) * w_gu.element_size()
    out = res["kernel"] = []
    for m in s["tokens"]:
        x = torch.randn(m, h, generator=gen, device=dev).to(dt)
        weights, ids = route(torch.randn(m, e, generator=gen, device=dev), k, renormalize=True)
        ref = fused_moe_ref(x, w_gu, w_d, weights, ids)
        entry = dict(tokens=m, ref_ms=time_ms(lambda: fused_moe_ref(x, w_gu, w_d, weights, ids), s["iters"]),
                     distinct_experts=int(ids.unique().numel()), expected_experts=e * (1 - (1 - k / e) ** m))
        entry["floor_ms"] = entry["expected_experts"] * expert_bytes / res["copy_gb_per_s"] / 1e6
        got = fused_moe(x, w_gu, w_d, weights, ids)  # on the CPU: Triton's interpreter (logic only, not speed)
        entry["rel_error"] = float((got.float() - ref.float()).norm() / ref.float().norm())
        entry["triton_ms"] = time_ms(lambda: fused_moe(x, w_gu, w_d, weights, ids), s["iters"])
        entry["speedup"] = entry["ref_ms"] / entry["triton_ms"]
        entry["pct_of_floor"] = 100 * entry["floor_ms"] / entry["triton_ms"]
        out.append(entry)
        log.info("kernel: %s", entry)


def step_timer(engine: Engine, batch: int, dev: str):
    return DecodeStepTimer(engine) if dev == "cuda" else CpuStepTimer(engine, batch)


def timer_ms(timer, batch: int) -> float:
    return timer.step_ms(batch) if isinstance(timer, DecodeStepTimer) else 1e3 * statistics.median(timer.times)


def bench_engine(engine: Engine, out: dict, s: dict, bw: float, dev: str) -> None:
    runner, gen = engine.runner, torch.Generator().manual_seed(0)
    m = runner.model
    moe = next(x for x in m.modules() if hasattr(x, "experts_gate_up"))
    wbytes = active_weight_bytes(m, moe.top_k, moe.num_experts)
    kv_per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * m.embed_tokens.weight.element_size()
    prompt, new = s["prompt"], s["new"]
    timed_generate(engine, [rand_ids(prompt, gen)], 16)  # warm-up
    with step_timer(engine, 1, dev) as timer:
        timed_generate(engine, [rand_ids(prompt, gen)], new)
    step_ms = timer_ms(timer, 1)
    floor_ms = (wbytes + kv_per_token * (prompt + new / 2)) / bw / 1e6
    out.update(weight_bytes=weight_bytes(m)[0], active_weight_bytes=wbytes, experts_dtype=str(moe.experts_gate_up.dtype),
               batch1_decode_step_ms=step_ms,
               batch1_tokens_per_s=1e3 / step_ms, floor_step_ms=floor_ms, pct_of_floor=100 * floor_ms / step_ms)
    log.info("%s batch 1: %.2f ms/token, floor %.2f ms (%.0f%%)", out["method"], step_ms, floor_ms,
             out["pct_of_floor"])
    sweep = out["decode_sweep"] = []
    for b in s["batches"]:
        fb, rows, slots = decode_batch(engine, b, s["ctx"])
        ms = time_ms(lambda: runner.forward(fb), s["iters"])
        release(engine, rows, slots)
        sweep.append(dict(batch=b, context=s["ctx"], graph_step_ms=ms, tokens_per_s=b * 1e3 / ms))
        log.info("%s sweep: %s", out["method"], sweep[-1])


def bench_concurrent(engine: Engine, res: dict, s: dict, dev: str) -> None:
    """n requests at once; TTFT from a separate 1-token run of n fresh prompts of the same length
    (the engine reports no per-request times)."""
    n, isl, osl = s["conc"]
    gen = torch.Generator().manual_seed(2)
    timed_generate(engine, [rand_ids(isl, gen) for _ in range(n)], 4)  # warm-up
    ttft = timed_generate(engine, [rand_ids(isl, gen) for _ in range(n)], 1)
    with step_timer(engine, n, dev) as timer:
        wall = timed_generate(engine, [rand_ids(isl, gen) for _ in range(n)], osl)
    step = timer_ms(timer, n)
    res["concurrent"] = dict(requests=n, input_tokens=isl, output_tokens=osl, wall_s=wall, ttft_s=ttft,
                             output_tokens_per_s=n * osl / wall, tpot_ms_wall=1e3 * (wall - ttft) / (osl - 1),
                             tpot_ms_step=step)
    log.info("concurrent: %s", res["concurrent"])


def bench_correctness(res: dict, s: dict, args, dev: str) -> None:
    from transformers import AutoModelForCausalLM

    from radixserve.models.dummy import dummy_config
    from radixserve.models.loader import embedded_model_path
    from radixserve.models.tokenizer import load_tokenizer
    cfg = dummy_config(s["spec"])
    cfg.num_hidden_layers = 2
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dt).eval()
    with torch.no_grad():  # as tests/support/model_fixtures.tiny_hf_model, at a width-safe scale
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else
                    torch.randn_like(p) if "embed_tokens" in name else 0.02 * torch.randn_like(p))
    ids = rand_ids(s["prefill"], torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(args.tokenizer or embedded_model_path()).save_pretrained(tmp)
        with torch.no_grad():
            ref = hf(torch.tensor([ids], device=dev)).logits[0].float().cpu()
            ref32 = hf.float()(torch.tensor([ids], device=dev)).logits[0].float().cpu()
        del hf
        gc.collect()
        engine = Engine(tmp, device=dev, dtype="bfloat16" if dev == "cuda" else "float32", max_total_tokens=1024)
        try:
            ours = prefill_logits(engine, ids)
        finally:
            engine.shutdown()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    top1 = lambda a, b: float((a.argmax(-1) == b.argmax(-1)).float().mean())  # noqa: E731
    res["correctness"] = dict(layers=2, hidden=cfg.hidden_size, experts=cfg.num_experts, prompt_tokens=len(ids),
                              rel_error_vs_hf=rel(ours, ref), top1_vs_hf=top1(ours, ref),
                              rel_error_vs_hf_fp32=rel(ours, ref32), top1_vs_hf_fp32=top1(ours, ref32),
                              hf_vs_hf_fp32_rel_error=rel(ref, ref32))
    log.info("correctness: %s", res["correctness"])


def write_markdown(res: dict) -> str:
    L = [f"# Mixture of experts, {res['model']} (random weights)", "",
         f"{res['device']}, {res['date']}; copy bandwidth {res['copy_gb_per_s']:.0f} GB/s; torch {res['torch']}", "",
         f"`{res['command']}`", ""]
    if res.get("kernel"):
        L += ["## Fused MoE kernel (Triton) vs torch reference, one layer", "",
              "| tokens | experts touched (expected) | ref ms | triton ms | speedup | rel. error | floor ms | % of floor |",
              "|---|---|---|---|---|---|---|---|"]
        for e in res["kernel"]:
            L.append(f"| {e['tokens']} | {e['distinct_experts']} ({e['expected_experts']:.1f}) | {e['ref_ms']:.3f} | "
                     f"{e.get('triton_ms', float('nan')):.3f} | {e.get('speedup', float('nan')):.1f} | "
                     f"{e.get('rel_error', float('nan')):.1e} | {e['floor_ms']:.3f} | "
                     f"{e.get('pct_of_floor', float('nan')):.0f} |")
        L.append("")
    runs = res["methods"]
    if runs:
        L += ["## Batch-1 decode (engine; floor = active weights + KV at copy bandwidth)", "",
              "| method | experts | weights GB | active GB | ms/token | tok/s | floor ms | % of floor |",
              "|---|---|---|---|---|---|---|---|"]
        L += [f"| {r['method']} | {r['experts_dtype']} | {r['weight_bytes'] / 1e9:.2f} | "
              f"{r['active_weight_bytes'] / 1e9:.2f} | "
              f"{r['batch1_decode_step_ms']:.2f} | {r['batch1_tokens_per_s']:.0f} | {r['floor_step_ms']:.2f} | "
              f"{r['pct_of_floor']:.0f} |" for r in runs if "pct_of_floor" in r]
        L += ["", "## Decode step (CUDA graph replay), ms", "", "| batch | context | " +
              " | ".join(r["method"] for r in runs) + " |", "|---|---|" + "---|" * len(runs)]
        for i, b in enumerate(res["batches"]):
            cells = [f"{r['decode_sweep'][i]['graph_step_ms']:.2f}" if len(r.get("decode_sweep", [])) > i else "-"
                     for r in runs]
            L.append(f"| {b} | {res['sweep_context']} | " + " | ".join(cells) + " |")
        L += ["", "fp8 / int4 quantize attention and dense layers at load; the experts column says whether the "
              "stacked experts stayed unquantized.", ""]
    c = res.get("concurrent")
    if c:
        L += [f"## {c['requests']} concurrent requests, {c['input_tokens']} in / {c['output_tokens']} out (bf16)", "",
              "| what | output tok/s | TPOT ms |", "|---|---|---|",
              f"| radixserve | {c['output_tokens_per_s']:.0f} | {c['tpot_ms_wall']:.2f} (wall) / "
              f"{c['tpot_ms_step']:.2f} (step) |",
              f"| vLLM (published, H100) | {VLLM_TOKS:.0f} | {VLLM_TPOT} |",
              f"| target | >= {TARGET_TOKS:.0f} | <= {TARGET_TPOT} |", "",
              "TPOT (wall) = (wall - TTFT) / (output - 1), TTFT from a separate 1-token run of as many fresh "
              "prompts; TPOT (step) = median device time between decode steps of the full batch.", ""]
    k = res.get("correctness")
    if k:
        L += [f"## Prefill logits vs transformers ({k['layers']} layers, hidden {k['hidden']}, {k['experts']} experts, "
              f"{k['prompt_tokens']} tokens)", "", "| vs | rel. error | top-1 agreement |", "|---|---|---|",
              f"| transformers, same dtype | {k['rel_error_vs_hf']:.2e} | {k['top1_vs_hf']:.3f} |",
              f"| transformers, float32 | {k['rel_error_vs_hf_fp32']:.2e} | {k['top1_vs_hf_fp32']:.3f} |",
              f"| (transformers same dtype vs float32) | {k['hf_vs_hf_fp32_rel_error']:.2e} | |", ""]
    return "\n".join(L + failed_sections(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", default=None, help="default dummy:qwen3-30b-a3b (--quick: dummy:tiny-qwen3-moe)")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--methods", default="bf16,fp8,int4")
    ap.add_argument("--sections", default="kernel,engine,correctness")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes and short runs (the CPU smoke test)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    s, dev, sections = sizes(args.quick), args.device, set(args.sections.split(","))
    args.model = args.model or f"dummy:{s['spec']}"
    extra = dict(model=args.model, methods=[], batches=list(s["batches"]), sweep_context=s["ctx"])
    if dev == "cuda":
        res = gpu_header(**extra)
        res["copy_gb_per_s"] = copy_bandwidth()
    else:  # smoke path: no CUDA; the gpu_runtime helpers' synchronize calls become no-ops
        torch.cuda.synchronize = lambda *a, **k: None
        res = dict(device="cpu", date=time.strftime("%Y-%m-%dT%H:%M:%S"), command=" ".join(["python"] + sys.argv),
                   torch=torch.__version__, **extra, errors={})
        src = torch.empty(1 << 24, dtype=torch.int16)
        res["copy_gb_per_s"] = 4 * src.numel() / time_ms(lambda: src.clone(), 5) / 1e6
    stem = os.path.join(args.out, f"gpu_moe_{gpu_chip(res['device']) if dev == 'cuda' else 'cpu'}")
    log.info("copy bandwidth %.0f GB/s", res["copy_gb_per_s"])

    def section(key: str, fn, *a) -> None:
        run_section(res, key, fn, *a)
        save(stem, res, write_markdown(res))

    if "kernel" in sections:
        section("kernel", bench_kernel, res, s, dev)
    for method in args.methods.split(",") if "engine" in sections else []:
        def one(method=method) -> None:
            t0 = time.perf_counter()
            engine = Engine(args.model, device=dev, max_total_tokens=s["kv"], max_running_requests=256,
                            quantization=None if method == "bf16" else method, tokenizer=args.tokenizer)
            out = dict(method=method, startup_s=time.perf_counter() - t0)
            res["methods"].append(out)
            try:
                run_section(res, f"engine_{method}", bench_engine, engine, out, s, res["copy_gb_per_s"], dev)
                if method == "bf16":
                    save(stem, res, write_markdown(res))
                    run_section(res, "concurrent", bench_concurrent, engine, res, s, dev)
            finally:
                engine.shutdown()
                del engine
                gc.collect()
                if dev == "cuda":
                    torch.cuda.empty_cache()
        section(f"engine_{method}_start", one)
    if "correctness" in sections:
        section("correctness", bench_correctness, res, s, args, dev)
    log.info("wrote %s.json and .md", stem)
    os._exit(0)  # the engine's loop thread is a daemon; skip interpreter teardown


if __name__ == "__main__":
    main()
