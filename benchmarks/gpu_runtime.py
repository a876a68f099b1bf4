"""GPU runtime benchmarks, one process: copy bandwidth, batch-1 decode vs the floor and
transformers, decode sweep, prefill / radix-hit TTFT, long prompts vs transformers' SDPA forward,
cascade decode steps, decode-attention kernel GB/s, fused ops, a kernel profile of the decode step.

Usage: python benchmarks/gpu_runtime.py --out benchmarks/results [--tokenizer DIR] [--sections batch1,kernel,...]
Writes gpu_runtime_<device>.json and .md. Every section is timed after warm-up; GPU-only times
use CUDA events (median); engine decode steps are timed on the device too (an event recorded as
each decode step is launched: the step time is the gap between consecutive steps of the same
batch); time to first token is wall clock around Engine.generate.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import torch

from radixserve import Engine
from radixserve.bench.report import save
from radixserve.bench.timing import (DecodeStepTimer, copy_bandwidth, cuda_ms, failed_sections, free_device_memory,
                                     gpu_chip, gpu_header, run_section)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_engine_parts import decode_batch, rand_ids, release, timed_generate, weight_bytes  # noqa: E402

log = logging.getLogger("gpu_runtime")
KV_TOKENS = 180_000  # engine KV pool (tokens): holds batch 256 x 640 tokens with room to spare


def bench_batch1(engine: Engine, res: dict, bw: float, gen: torch.Generator) -> None:
    runner = engine.runner
    wbytes, _ = weight_bytes(runner.model)
    prompt, new = 128, 256
    timed_generate(engine, [rand_ids(prompt, gen)], 16)  # warm-up
    ttft = statistics.median(timed_generate(engine, [rand_ids(prompt, gen)], 1) for _ in range(3))
    with DecodeStepTimer(engine) as timer:
        total = statistics.median(timed_generate(engine, [rand_ids(prompt, gen)], new) for _ in range(2))
    decode_tps = 1e3 / timer.step_ms(1)
    kv_per_token = 2 * runner.model.num_layers * runner.model.num_kv_heads * runner.model.head_dim * 2
    avg_ctx = prompt + new / 2
    step_bytes = wbytes + kv_per_token * avg_ctx
    floor_ms = step_bytes / bw / 1e6
    fb, rows, slots = decode_batch(engine, 1, int(avg_ctx))
    graph_ms = cuda_ms(lambda: runner.forward(fb), iters=50)
    graphs, runner.graphs = runner.graphs, None
    eager_ms = cuda_ms(lambda: runner.forward(fb), iters=20)
    # the same graph step with cuBLAS for the linear layers instead of the Triton GEMV
    from radixserve.models import layers, linear_methods, parallel
    from radixserve.runtime.cuda_graph import CudaGraphDecoder
    single_row = linear_methods.single_row
    try:
        layers.single_row = linear_methods.single_row = parallel.single_row = lambda x, fused_ops: False
        runner.graphs = CudaGraphDecoder(runner.model, graphs.attn, runner.req_table, 1, runner.device)
        runner.graphs.capture()
        cublas_graph_ms = cuda_ms(lambda: runner.forward(fb), iters=50)
    finally:
        layers.single_row = linear_methods.single_row = parallel.single_row = single_row
        runner.graphs = graphs
    release(engine, rows, slots)
    res["batch1_decode"] = dict(
        prompt_tokens=prompt, new_tokens=new, engine_seconds=total, ttft_seconds=ttft,
        engine_tokens_per_s=new / total, engine_decode_tokens_per_s=decode_tps,
        engine_decode_step_ms=1e3 / decode_tps, step_bytes=step_bytes, floor_step_ms=floor_ms,
        floor_tokens_per_s=1e3 / floor_ms, engine_pct_of_floor=100 * floor_ms * decode_tps / 1e3,
        graph_step_ms=graph_ms, graph_pct_of_floor=100 * floor_ms / graph_ms, eager_step_ms=eager_ms,
        graph_step_cublas_linear_ms=cublas_graph_ms)
    log.info("batch1: %s", res["batch1_decode"])


def bench_sweep(engine: Engine, res: dict, gen: torch.Generator) -> None:
    runner = engine.runner
    out = []
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 192, 256):
        ctx = 512
        fb, rows, slots = decode_batch(engine, b, ctx)
        ms = cuda_ms(lambda: runner.forward(fb), iters=20)
        release(engine, rows, slots)
        entry = dict(batch=b, context=ctx, graph_step_ms=ms, graph_tokens_per_s=b * 1e3 / ms)
        if b in (1, 8, 64, 256):  # end to end through the scheduler: 128-token prompts, 64 new tokens
            with DecodeStepTimer(engine) as timer:
                t_all = timed_generate(engine, [rand_ids(128, gen) for _ in range(b)], 64)
            step = timer.step_ms(b)
            entry.update(engine_seconds=t_all, engine_decode_step_ms=step, engine_decode_tokens_per_s=b * 1e3 / step)
        out.append(entry)
        log.info("sweep: %s", entry)
    res["decode_sweep"] = out


def bench_prefill(engine: Engine, res: dict, gen: torch.Generator) -> None:
    n, hit = 2048, 1900
    timed_generate(engine, [rand_ids(n, gen)], 1)  # warm-up
    cold = statistics.median(timed_generate(engine, [rand_ids(n, gen)], 1) for _ in range(3))
    batch4 = statistics.median(timed_generate(engine, [rand_ids(n, gen) for _ in range(4)], 1) for _ in range(2))
    warm = []
    for _ in range(3):
        base = rand_ids(n, gen)
        timed_generate(engine, [base], 1)  # puts the prompt in the radix tree
        warm.append(timed_generate(engine, [base[:hit] + rand_ids(n - hit, gen)], 1))
    res["prefill"] = dict(prompt_tokens=n, ttft_cold_s=cold, prefill_tokens_per_s_batch1=n / cold,
                          batch4_seconds=batch4, prefill_tokens_per_s_batch4=4 * n / batch4,
                          cached_prefix_tokens=hit, ttft_radix_hit_s=statistics.median(warm),
                          ttft_speedup=cold / statistics.median(warm))
    log.info("prefill: %s", res["prefill"])


LONG_PROMPTS = (2048, 8192, 32768, 100_000)


def hf_llama_8b():
    from transformers import AutoModelForCausalLM

    from radixserve.models.dummy import dummy_config
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(dummy_config("llama-3.1-8b"), dtype=torch.bfloat16).eval()


def bench_hf_prefill(res: dict, gen: torch.Generator) -> None:
    """transformers' own forward (SDPA attention, logits for the last token only) on one fresh
    prompt of each length; run before the engine exists so both fit in memory."""
    model = hf_llama_8b()
    out = []

    def forward_s(n: int) -> float:
        ids = torch.tensor([rand_ids(n, gen)], device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    forward_s(2048)  # warm-up
    for n in LONG_PROMPTS:
        out.append(dict(tokens=n, hf_seconds=statistics.median(forward_s(n) for _ in range(3 if n <= 8192 else 1))))
        log.info("hf prefill: %s", out[-1])
    res["prefill_long"] = out
    del model
    free_device_memory()


def bench_prefill_long(engine: Engine, res: dict, gen: torch.Generator) -> None:
    """Time to first token of one fresh prompt per length (engine defaults: chunked prefill),
    vs transformers' forward above; then 2048 new tokens after a cached 100k-token prefix."""
    # warm-up, at a length none of the timed prompts has: kernels compile, cuDNN builds its plans
    timed_generate(engine, [rand_ids(12_000, gen)], 1)
    for e in res.get("prefill_long", [dict(tokens=n) for n in LONG_PROMPTS]):
        n = e["tokens"]
        e["engine_seconds"] = statistics.median(timed_generate(engine, [rand_ids(n, gen)], 1)
                                                for _ in range(3 if n <= 8192 else 1))
        if "hf_seconds" in e:
            e["engine_over_hf"] = e["engine_seconds"] / e["hf_seconds"]
        log.info("prefill long: %s", e)
    res.setdefault("prefill_long", [])
    base = rand_ids(100_000, gen)
    cold = timed_generate(engine, [base], 1)  # caches the prompt in the radix tree
    warm = timed_generate(engine, [base + rand_ids(2048, gen)], 1)
    res["prefill_after_prefix"] = dict(prefix=100_000, new=2048, cold_seconds=cold, ttft_seconds=warm,
                                       pct_of_cold=100 * warm / cold)
    log.info("prefill after prefix: %s", res["prefill_after_prefix"])


def bench_cascade_step(engine: Engine, res: dict) -> None:
    """Graph-replayed decode step at batch 64 over a 2k shared prefix + 128 own tokens each, with and
    without prefix groups, and the same batch at a 128-token context."""
    from radixserve.core.prefix_groups import PrefixGroups
    runner = engine.runner
    dev = runner.device
    batch, shared, own = 64, 2048, 128
    slots = engine.kv.allocator.alloc(shared + batch * own)
    rows = [runner.req_table.alloc() for _ in range(batch)]
    table = runner.req_table.table
    for i, r in enumerate(rows):
        table[r, :shared] = slots[:shared].to(dev)
        table[r, shared:shared + own] = slots[shared + i * own:shared + (i + 1) * own].to(dev)
    ctx = shared + own
    i64 = lambda xs: torch.tensor(xs, dtype=torch.int64, device=dev)  # noqa: E731
    fb = ForwardBatch(
        input_ids=torch.randint(100, 30000, (batch,), device=dev), positions=torch.full((batch,), ctx - 1, device=dev),
        out_slots=table[i64(rows), ctx - 1].clone(), req_rows=i64(rows), seq_lens=torch.full((batch,), ctx, device=dev),
        extend_lens=torch.ones(batch, dtype=torch.int64, device=dev), extend_starts=torch.arange(batch, device=dev),
        logits_indices=torch.arange(batch, device=dev), max_seq_len=ctx, max_extend_len=1, is_decode=True)
    groups = PrefixGroups(row_prefix_lens=torch.full((batch,), shared, device=dev),
                          group_rows=torch.arange(batch - 1, -1, -1, device=dev), group_starts=i64([0, batch]),
                          group_prefix_lens=i64([shared]), group_table_rows=i64([rows[0]]), max_group_size=batch,
                          max_prefix_len=shared)
    grouped = fb._replace(prefix_groups=groups)
    plain_logits, casc_logits = runner.forward(fb).clone(), runner.forward(grouped).clone()
    graphs, runner.graphs = runner.graphs, None
    runner.attn.num_kv_splits = 4  # the same function summed in another order: the scale of bf16 noise
    resplit_logits = runner.forward(fb).clone()
    runner.attn.num_kv_splits = None
    runner.graphs = graphs
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    entry = dict(batch=batch, shared=shared, own=own, rel_logits_diff=rel(casc_logits, plain_logits),
                 rel_logits_diff_plain_4_splits=rel(resplit_logits, plain_logits),
                 same_argmax=bool((casc_logits.argmax(-1) == plain_logits.argmax(-1)).all()),
                 plain_graph_step_ms=cuda_ms(lambda: runner.forward(fb), iters=30),
                 cascade_graph_step_ms=cuda_ms(lambda: runner.forward(grouped), iters=30))
    for r in rows:
        runner.req_table.free(r)
    engine.kv.allocator.free(slots)
    fb2, rows2, slots2 = decode_batch(engine, batch, own)
    entry["ctx128_graph_step_ms"] = cuda_ms(lambda: runner.forward(fb2), iters=30)
    release(engine, rows2, slots2)
    entry["cascade_over_ctx128"] = entry["cascade_graph_step_ms"] / entry["ctx128_graph_step_ms"]
    entry["plain_over_ctx128"] = entry["plain_graph_step_ms"] / entry["ctx128_graph_step_ms"]
    res["cascade_step"] = entry
    log.info("cascade step: %s", entry)


def bench_profile(engine: Engine, res: dict) -> None:
    """Kernel times of the batch-1 decode step (context 256), graph replay and eager."""
    from torch.profiler import ProfilerActivity, profile
    runner = engine.runner
    fb, rows, slots = decode_batch(engine, 1, 256)
    out = {}
    for mode in ("graph", "eager"):
        graphs = runner.graphs
        if mode == "eager":
            runner.graphs = None
        try:
            for _ in range(3):
                runner.forward(fb)
            torch.cuda.synchronize()
            n = 20
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(n):
                    runner.forward(fb)
                torch.cuda.synchronize()
        finally:
            runner.graphs = graphs
        rows_out = []
        for evt in prof.key_averages():
            t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
            if t > 0:
                rows_out.append(dict(name=evt.key[:90], us_per_step=t / n, calls_per_step=evt.count / n))
        rows_out.sort(key=lambda r: -r["us_per_step"])
        out[mode] = dict(kernel_us_per_step=sum(r["us_per_step"] for r in rows_out),
                         kernel_launches_per_step=sum(r["calls_per_step"] for r in rows_out), top=rows_out[:25])
        log.info("profile %s: %.0f us of kernels, %.0f launches per step", mode, out[mode]["kernel_us_per_step"],
                 out[mode]["kernel_launches_per_step"])
    release(engine, rows, slots)
    res["profile_batch1"] = out


def bench_kernel(res: dict) -> None:
    from radixserve.kernels.decode_attention import choose_num_kv_splits, decode_attention, decode_scratch
    b, hq, hkv, d = 64, 32, 8, 128
    out = []
    for ctx in (4096, 16384):
        slots = b * ctx + 1
        k = torch.randn(slots, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        table = (torch.randperm(b * ctx, device="cuda") + 1).view(b, ctx)  # scattered slots, page size 1
        q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16)
        rows = torch.arange(b, device="cuda")
        lens = torch.full((b,), ctx, device="cuda")
        scratch = decode_scratch(b, hq, d, 16, "cuda")
        nbytes = 2 * b * ctx * hkv * d * 2 + b * ctx * 8  # K + V + slot table
        chosen = choose_num_kv_splits(ctx, b, hkv)
        for splits in sorted({1, 2, 4, chosen}):
            ms = cuda_ms(lambda: decode_attention(q, k, v, table, rows, lens, d ** -0.5, splits, *scratch), iters=30)
            out.append(dict(batch=b, context=ctx, num_kv_splits=splits, chosen=splits == chosen, ms=ms,
                            bytes=nbytes, gb_per_s=nbytes / ms / 1e6))
            log.info("kernel: %s", out[-1])
        del k, v, table
        torch.cuda.empty_cache()
    res["decode_attention_kernel"] = out


def bench_fused(engine: Engine, res: dict) -> None:
    """Graph step time with the fused Triton ops (the default on CUDA) vs the plain torch ops."""
    from radixserve.models import layers
    from radixserve.runtime.cuda_graph import CudaGraphDecoder
    runner = engine.runner
    out = []
    old = runner.graphs
    try:
        for fused in (False, True):
            layers.set_fused_ops(runner.model, fused)
            runner.graphs = CudaGraphDecoder(runner.model, old.attn, runner.req_table, 64, runner.device)
            runner.graphs.capture()
            for b in (1, 64):
                fb, rows, slots = decode_batch(engine, b, 512)
                out.append(dict(ops="fused" if fused else "torch", batch=b,
                                graph_step_ms=cuda_ms(lambda: runner.forward(fb), iters=30)))
                release(engine, rows, slots)
                log.info("fused: %s", out[-1])
    finally:
        layers.set_fused_ops(runner.model, True)
        runner.graphs = old
    res["fused_ops"] = out


def bench_hf(res: dict, static: bool, gen: torch.Generator) -> None:
    from transformers import AutoModelForCausalLM

    from radixserve.models.dummy import dummy_config
    cfg = dummy_config("llama-3.1-8b")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    prompt, new = 128, 256

    def run(**kw) -> float:
        ids = torch.tensor([rand_ids(prompt, gen)], device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0, **kw)
        torch.cuda.synchronize()
        assert out.shape[1] == prompt + new
        return time.perf_counter() - t0

    if not static:
        run()
        t = run()
        res["hf_default_cache"] = dict(seconds=t, tokens_per_s=new / t)
        log.info("hf default: %s", res["hf_default_cache"])
    else:
        t0 = time.perf_counter()
        run(cache_implementation="static")
        first = time.perf_counter() - t0
        t = run(cache_implementation="static")
        res["hf_static_cache"] = dict(seconds=t, tokens_per_s=new / t, first_call_seconds=first)
        log.info("hf static: %s", res["hf_static_cache"])
    del model
    free_device_memory()


def write_markdown(res: dict) -> str:
    L = [f"# GPU runtime benchmarks — {res['device']}", "",
         f"- date: {res['date']}", f"- command: `{res['command']}`",
         f"- torch {res['torch']}, triton {res['triton']}, transformers {res.get('transformers')}",
         f"- model: {res['model']} (random bf16 weights), KV pool {res.get('kv_pool_tokens')} tokens, "
         f"CUDA-graph capture {res.get('graph_capture_s', 0):.1f} s, start-up {res.get('startup_s', 0):.1f} s",
         f"- measured copy bandwidth: {res.get('copy_gb_per_s', 0):.0f} GB/s", ""]
    b1 = res.get("batch1_decode")
    if b1:
        L += ["## Batch-1 decode (128-token prompt, 256 new tokens)", "",
              "| what | tokens/s | step ms | % of floor |", "|---|---|---|---|",
              f"| floor (bytes/step ÷ copy BW) | {b1['floor_tokens_per_s']:.1f} | {b1['floor_step_ms']:.2f} | 100 |",
              f"| radixserve graph step alone | {1e3 / b1['graph_step_ms']:.1f} | {b1['graph_step_ms']:.2f} | "
              f"{b1['graph_pct_of_floor']:.1f} |",
              f"| radixserve eager step alone | {1e3 / b1['eager_step_ms']:.1f} | {b1['eager_step_ms']:.2f} | "
              f"{100 * b1['floor_step_ms'] / b1['eager_step_ms']:.1f} |",
              f"| graph step, cuBLAS for the linear layers (no Triton GEMV) | "
              f"{1e3 / b1.get('graph_step_cublas_linear_ms', float('nan')):.1f} | "
              f"{b1.get('graph_step_cublas_linear_ms', float('nan')):.2f} | "
              f"{100 * b1['floor_step_ms'] / b1.get('graph_step_cublas_linear_ms', float('nan')):.1f} |",
              f"| radixserve Engine.generate, decode part | {b1['engine_decode_tokens_per_s']:.1f} | "
              f"{b1['engine_decode_step_ms']:.2f} | {b1['engine_pct_of_floor']:.1f} |",
              f"| radixserve Engine.generate, end to end | {b1['engine_tokens_per_s']:.1f} | | |"]
        for key, name in (("hf_default_cache", "transformers generate, default cache"),
                          ("hf_static_cache", "transformers generate, static cache (2nd call)")):
            if key in res:
                tps = res[key]["tokens_per_s"]
                L.append(f"| {name}, end to end | {tps:.1f} | {1e3 / tps:.2f} | {100 * b1['floor_step_ms'] * tps / 1e3:.1f} |")
        L.append("")
    if res.get("decode_sweep"):
        L += ["## Decode sweep (context 512 per row; engine: 128-token prompts, 64 new tokens)", "",
              "| batch | graph step ms | graph tokens/s | engine step ms | engine tokens/s |", "|---|---|---|---|---|"]
        for e in res["decode_sweep"]:
            eng = (f"{e['engine_decode_step_ms']:.2f} | {e['engine_decode_tokens_per_s']:.0f}"
                   if "engine_decode_step_ms" in e else " | ")
            L.append(f"| {e['batch']} | {e['graph_step_ms']:.2f} | {e['graph_tokens_per_s']:.0f} | {eng} |")
        L.append("")
    p = res.get("prefill")
    if p:
        L += ["## Prefill (2048-token prompts)", "", "| what | value |", "|---|---|",
              f"| TTFT, cold, batch 1 | {1e3 * p['ttft_cold_s']:.1f} ms ({p['prefill_tokens_per_s_batch1']:.0f} tok/s) |",
              f"| 4 prompts at once | {1e3 * p['batch4_seconds']:.1f} ms ({p['prefill_tokens_per_s_batch4']:.0f} tok/s) |",
              f"| TTFT, first {p['cached_prefix_tokens']} tokens cached (radix hit) | {1e3 * p['ttft_radix_hit_s']:.1f} ms "
              f"({p['ttft_speedup']:.1f}x faster) |", ""]
    if res.get("prefill_long"):
        L += ["## One fresh prompt: time to first token vs transformers' forward (SDPA, logits_to_keep=1)", "",
              "| tokens | transformers s | radixserve s | radixserve / transformers |", "|---|---|---|---|"]
        for e in res["prefill_long"]:
            L.append(f"| {e['tokens']} | {e.get('hf_seconds', float('nan')):.3f} | "
                     f"{e.get('engine_seconds', float('nan')):.3f} | {e.get('engine_over_hf', float('nan')):.2f} |")
        a = res.get("prefill_after_prefix")
        if a:
            L += ["", f"{a['new']} new tokens after a cached {a['prefix']}-token prefix: TTFT {a['ttft_seconds']:.3f} s "
                  f"= {a['pct_of_cold']:.1f}% of the cold prompt ({a['cold_seconds']:.2f} s)"]
        L.append("")
    c = res.get("cascade_step")
    if c:
        L += [f"## Decode step (graph), batch {c['batch']}, {c['shared']}-token shared prefix + {c['own']} own", "",
              "| what | step ms | / context-128 step |", "|---|---|---|",
              f"| plain attention | {c['plain_graph_step_ms']:.2f} | {c['plain_over_ctx128']:.2f} |",
              f"| cascade attention | {c['cascade_graph_step_ms']:.2f} | {c['cascade_over_ctx128']:.2f} |",
              f"| same batch at a {c['own']}-token context | {c['ctx128_graph_step_ms']:.2f} | 1.00 |", "",
              f"cascade vs plain logits: relative difference {c['rel_logits_diff']:.1e}, same argmax: {c['same_argmax']} "
              f"(the scale of bf16 noise: plain attention with 4 KV splits vs 1, "
              f"{c.get('rel_logits_diff_plain_4_splits', float('nan')):.1e})",
              ""]
    prof = res.get("profile_batch1")
    if prof:
        L += ["## Kernels of one batch-1 decode step (context 256)", ""]
        for mode, p in prof.items():
            L += [f"{mode}: {p['kernel_us_per_step']:.0f} us of kernel time, {p['kernel_launches_per_step']:.0f} "
                  f"launches per step", "", "| kernel | us/step | calls/step |", "|---|---|---|"]
            L += [f"| `{r['name']}` | {r['us_per_step']:.1f} | {r['calls_per_step']:.0f} |" for r in p["top"][:15]]
            L.append("")
    if res.get("decode_attention_kernel"):
        L += ["## Decode-attention kernel alone (batch 64, 32 q / 8 kv heads, D 128, bf16, page size 1)", "",
              "| context | KV splits | chosen by heuristic | ms | GB/s | % of copy BW |", "|---|---|---|---|---|---|"]
        for e in res["decode_attention_kernel"]:
            L.append(f"| {e['context']} | {e['num_kv_splits']} | {'yes' if e['chosen'] else ''} | {e['ms']:.3f} | "
                     f"{e['gb_per_s']:.0f} | {100 * e['gb_per_s'] / res['copy_gb_per_s']:.0f} |")
        L.append("")
    if res.get("fused_ops"):
        L += ["## Fused Triton ops (RMSNorm+residual, rotary, SiLU·mul) vs torch ops, graph step", "",
              "| ops | batch | step ms |", "|---|---|---|"]
        L += [f"| {e['ops']} | {e['batch']} | {e['graph_step_ms']:.3f} |" for e in res["fused_ops"]]
        L.append("")
    return "\n".join(L + failed_sections(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", default="dummy:llama-3.1-8b")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--sections", default="batch1,profile,kernel,sweep,prefill,cascade_step,prefill_long,fused,"
                                          "hf,hf_static")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    sections = set(args.sections.split(","))
    import transformers
    res = gpu_header(transformers=transformers.__version__, model=args.model)
    stem = os.path.join(args.out, f"gpu_runtime_{gpu_chip(res['device'])}")  # e.g. gpu_runtime_h100
    gen = torch.Generator().manual_seed(0)

    def section(key: str, fn, *a) -> None:
        if key in sections:
            run_section(res, key, fn, *a)
            save(stem, res, write_markdown(res))

    res["copy_gb_per_s"] = copy_bandwidth()
    log.info("copy bandwidth %.0f GB/s", res["copy_gb_per_s"])
    if "prefill_long" in sections:
        section("prefill_long", bench_hf_prefill, res, gen)
    t0 = time.perf_counter()
    engine = Engine(args.model, tokenizer=args.tokenizer, device="cuda", max_total_tokens=KV_TOKENS,
                    max_running_requests=256)
    res["startup_s"] = time.perf_counter() - t0
    res["kv_pool_tokens"] = engine.kv.allocator.capacity
    res["graph_capture_s"] = engine.runner.graphs.capture_seconds if engine.runner.graphs else None
    section("batch1", bench_batch1, engine, res, res["copy_gb_per_s"], gen)
    section("profile", bench_profile, engine, res)
    section("kernel", bench_kernel, res)
    section("sweep", bench_sweep, engine, res, gen)
    section("prefill", bench_prefill, engine, res, gen)
    section("cascade_step", bench_cascade_step, engine, res)
    section("prefill_long", bench_prefill_long, engine, res, gen)
    section("fused", bench_fused, engine, res)
    section("hf", bench_hf, res, False, gen)
    section("hf_static", bench_hf, res, True, gen)
    save(stem, res, write_markdown(res))
    log.info("wrote %s.json and .md", stem)
    os._exit(0)  # the engine's loop thread is a daemon; skip interpreter teardown


if __name__ == "__main__":
    main()
