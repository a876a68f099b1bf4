"""`radixserve bench <workload>`: argument parsing for the benchmark suites."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from radixserve.bench import dp as dp_bench
from radixserve.bench import suites, workloads

logger = logging.getLogger(__name__)
DEFAULT_OUT = os.path.join("benchmarks", "results")
# shared-prefix sizes (groups, prompts per group, system, question, output) per the benchmark issue
SCALES = {"cpu": (8, 8, 512, 32, 32), "gpu": (64, 16, 2048, 128, 256)}
# NOTE: a quoted step time, not measured here: Llama-3.1-8B bf16 decode at batch 256 on one H100
# (weights 16 GB read per step at ~2.5 TB/s effective plus attention) is of the order of 30 ms.
QUOTED_H100_STEP_MS = {"quoted H100 Llama-3.1-8B batch-256 decode (~30 ms, not measured)": 30.0}


def add_bench_parser(sub, common: argparse.ArgumentParser) -> None:
    bench = sub.add_parser("bench", parents=[common], help="run a benchmark and write results (JSON, md, PNG)")
    kinds = bench.add_subparsers(dest="workload", required=True)
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--model", default=None, help="model path or dummy:<name>; default: embedded SmolLM2-135M")
    base.add_argument("--device", default="auto")
    base.add_argument("--out-dir", default=DEFAULT_OUT)
    base.add_argument("--stem", default=None, help="file name stem of the results (default: per workload)")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's own)")
    base.add_argument("--max-total-tokens", type=int, default=None)
    base.add_argument("--page-size", type=int, default=None)
    base.add_argument("--max-running-requests", type=int, default=None)
    base.add_argument("--time-limit", type=float, default=None, help="seconds per run; stops a run there")

    sp = kinds.add_parser("shared-prefix", parents=[base], help="G groups x P prompts sharing a system prompt")
    sp.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    for flag in ("groups", "prompts-per-group", "system-len", "question-len", "output-len"):
        sp.add_argument("--" + flag, type=int, default=None, help="overrides --scale")
    sp.add_argument("--policies", default=",".join(suites.POLICIES))
    sp.add_argument("--no-radix-off", action="store_true", help="skip the radix-cache-disabled baseline")
    sp.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    sp.add_argument("--hf-subset-groups", type=int, default=None, help="transformers runs these groups only")
    sp.add_argument("--hf-batch-size", type=int, default=16)

    mt = kinds.add_parser("multi-turn", parents=[base], help="C conversations x T turns, interleaved")
    mt.add_argument("--conversations", type=int, default=8)
    mt.add_argument("--turns", type=int, default=4)
    mt.add_argument("--user-len", type=int, default=64)
    mt.add_argument("--output-len", type=int, default=64)
    mt.add_argument("--system-len", type=int, default=32)

    sg = kinds.add_parser("sharegpt", parents=[base], help="ShareGPT-shaped lengths (lognormal, long tails)")
    sg.add_argument("--num-requests", type=int, default=64)

    b1 = kinds.add_parser("batch1", parents=[base], help="one request at a time: latency")
    b1.add_argument("--num-requests", type=int, default=4)
    b1.add_argument("--prompt-len", type=int, default=256)
    b1.add_argument("--output-len", type=int, default=64)

    on = kinds.add_parser("online", parents=[base], help="streaming HTTP clients, Poisson arrivals")
    on.add_argument("--url", default=None, help="a running server; default: start one in-process")
    on.add_argument("--rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    on.add_argument("--max-concurrency", type=int, default=64)
    on.add_argument("--workload", dest="online_workload", choices=("shared-prefix", "sharegpt"), default="shared-prefix")
    on.add_argument("--num-requests", type=int, default=64, help="sharegpt only")

    dp = kinds.add_parser("dp", parents=[base], help="N replicas behind the router (cache-aware, round-robin) vs one engine")
    dp.add_argument("--replicas", type=int, default=2)
    dp.add_argument("--groups", type=int, default=8)
    dp.add_argument("--prompts-per-group", type=int, default=16)
    dp.add_argument("--system-len", type=int, default=256)
    dp.add_argument("--question-len", type=int, default=16)
    dp.add_argument("--output-len", type=int, default=4)
    dp.add_argument("--orders", default=",".join(dp_bench.ORDERS), help="request orders to run, comma-separated")
    dp.add_argument("--rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    dp.add_argument("--max-concurrency", type=int, default=8)
    dp.add_argument("--max-context-len", type=int, default=None)
    dp.add_argument("--base-port", type=int, default=18100, help="replicas listen on loopback ports from here")

    tpb = kinds.add_parser("tp", parents=[base], help="tensor parallelism: batch-1 decode tok/s and collective time "
                           "per step, TP=N vs TP=1 (default model: dummy:llama-3.1-8b on GPU, dummy:tiny-llama on CPU)")
    tpb.add_argument("--tp", dest="tp_sizes", default="1,2", help="TP sizes to run, comma-separated")
    tpb.add_argument("--prompt-len", type=int, default=128)
    tpb.add_argument("--output-len", type=int, default=64)
    tpb.add_argument("--requests", type=int, default=3, help="timed requests per TP size (one at a time)")
    tpb.add_argument("--probe-steps", type=int, default=50, help="steps' worth of collectives timed on their own")
    tpb.add_argument("--dtype", default="auto")

    tr = kinds.add_parser("tree", parents=[base], help="radix tree match_prefix and scheduler host overhead")
    tr.add_argument("--running", type=int, default=256)
    tr.add_argument("--real-steps", type=int, default=2, help="real model steps timed for the ratio (0: none)")

    lg = kinds.add_parser("lang", parents=[base], help="a radixserve.lang branching program: radix tree vs cache off")
    lg.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    for flag in ("programs", "few-shot-tokens", "branches", "thought-tokens", "answer-tokens", "warmup-programs"):
        lg.add_argument("--" + flag, type=int, default=None, help="overrides --scale")

    gr = kinds.add_parser("grammar", parents=[base], help="structured output: constrained vs unconstrained decode, "
                                                          "jump-forward, compile and mask time")
    gr.add_argument("--parts", dest="grammar_parts", default="micro,throughput,jump-forward",
                    help="comma-separated: micro, host, throughput, jump-forward")
    gr.add_argument("--batch-sizes", default="8,32", help="throughput batch sizes, comma-separated (GPU: 64,256)")
    gr.add_argument("--output-len", type=int, default=64, help="tokens per request in the throughput runs")
    gr.add_argument("--prompt-len", type=int, default=32)
    gr.add_argument("--jf-batch", type=int, default=16, help="requests in the jump-forward runs")
    gr.add_argument("--jf-max-new-tokens", type=int, default=256)
    gr.add_argument("--micro-repeats", type=int, default=3, help="compiles per schema")
    gr.add_argument("--micro-steps", type=int, default=64, help="random-walk tokens per schema (micro), steps (host)")
    cpu = kinds.add_parser("cpu", parents=[base], help="the CPU runtime vs transformers on one shared-prefix batch, "
                           "with the decode step time, repeated")
    cpu.add_argument("--prompts", type=int, default=16, help="requests, all in one batch")
    cpu.add_argument("--system-len", type=int, default=500)
    cpu.add_argument("--question-len", type=int, default=24)
    cpu.add_argument("--output-len", type=int, default=64)
    cpu.add_argument("--repeats", type=int, default=3)
    cpu.add_argument("--variants", default="all,no-cascade,gather",
                     help="radixserve variants per repeat: all, no-cascade, gather (comma-separated)")

    ls = kinds.add_parser("long-short", parents=[base], help="long prompts sent with short requests: the short ones' "
                          "TTFT/ITL and the long ones' TTFT, with and without max_step_ms")
    ls.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    for flag, kind in (("long-prompts", int), ("long-len", int), ("long-out", int), ("shorts", int),
                       ("short-len", int), ("short-out", int), ("max-step-ms", float), ("chunked-prefill-size", int),
                       ("max-prefill-tokens", int), ("warmup-len", int)):
        ls.add_argument("--" + flag, type=kind, default=None, help="overrides --scale")

    spb = kinds.add_parser("spec", parents=[base], help="speculative decoding (off, ngram, radix) on real text: RAG, "
                           "regenerate, JSON under a schema, a re-run program; batch 1 and 8")
    spb.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    spb.add_argument("--batches", default="1,8")
    spb.add_argument("--dtype", default="float32")

    gpu = kinds.add_parser("gpu", parents=[base], help="every GPU benchmark in one command (< 8 min on an H100)")
    gpu.add_argument("--budget", type=float, default=330.0, help="seconds of timed runs in all (model loads extra)")
    gpu.add_argument("--parts", default="shared-prefix,sharegpt,batch1,tree", help="which GPU runs, comma-separated")


def _spec(args) -> suites.EngineSpec:
    opts = {k: getattr(args, k) for k in ("tokenizer", "max_total_tokens", "page_size", "max_running_requests")
            if getattr(args, k) is not None}
    return suites.EngineSpec(args.model, args.device, tuple(sorted(opts.items())))


def _vocab(model: str | None) -> int:
    if model and model.startswith("dummy:"):
        from radixserve.models.dummy import dummy_config

        return int(dummy_config(model.removeprefix("dummy:")).vocab_size)
    return 32000  # NOTE: workload ids stay below 32000 anyway; real models all have larger vocabularies


def run_bench(args) -> int:
    spec, vocab, out, seed = _spec(args), _vocab(args.model), args.out_dir, args.seed
    kind = args.workload
    if kind == "shared-prefix":
        sizes = list(SCALES[args.scale])
        for i, name in enumerate(("groups", "prompts_per_group", "system_len", "question_len", "output_len")):
            if getattr(args, name) is not None:
                sizes[i] = getattr(args, name)
        w = workloads.shared_prefix(*sizes, vocab_size=vocab, seed=seed)
        policies = tuple(p for p in args.policies.split(",") if p)
        suites.compare(spec, w, out, args.stem or f"shared_prefix_{args.scale}",
                       f"shared-prefix {sizes[0]}x{sizes[1]}, S={sizes[2]} Q={sizes[3]} O={sizes[4]}",
                       hf_subset_groups=args.hf_subset_groups, hf_batch_size=args.hf_batch_size, policies=policies,
                       radix_off=not args.no_radix_off, time_limit_s=args.time_limit, hf=not args.no_hf)
    elif kind == "multi-turn":
        w = workloads.multi_turn(args.conversations, args.turns, args.user_len, args.output_len, args.system_len,
                                 vocab, seed)
        suites.single(spec, w, out, args.stem or "multi_turn", f"multi-turn {args.conversations}x{args.turns}",
                      time_limit_s=args.time_limit, radix_off=True)
    elif kind == "sharegpt":
        w = workloads.sharegpt(args.num_requests, vocab, seed)
        suites.single(spec, w, out, args.stem or "sharegpt", f"ShareGPT-shaped, {args.num_requests} requests",
                      time_limit_s=args.time_limit)
    elif kind == "batch1":
        w = workloads.batch1(args.num_requests, args.prompt_len, args.output_len, vocab, seed)
        suites.single(spec, w, out, args.stem or "batch1", "batch-1 latency", sequential=True,
                      time_limit_s=args.time_limit)
    elif kind == "online":
        if args.online_workload == "sharegpt":
            w = workloads.sharegpt(args.num_requests, vocab, seed)
        else:
            w = workloads.shared_prefix(*SCALES["cpu"], vocab_size=vocab, seed=seed)
        suites.online(spec, w, out, args.stem or "online", f"online {w.name}, rate {args.rate}, "
                      f"max concurrency {args.max_concurrency}", args.rate, args.max_concurrency, args.url)
    elif kind == "dp":
        _dp(args, vocab)
    elif kind == "tp":
        _tp(args)
    elif kind == "tree":
        suites.tree(spec, out, args.stem or "tree_micro", QUOTED_H100_STEP_MS, args.running, args.real_steps)
    elif kind == "lang":
        from radixserve.bench import lang_branching

        if args.time_limit is not None:
            raise ValueError("the lang workload runs its programs to the end; it has no --time-limit")
        cfg = lang_branching.SCALES[args.scale]
        sizes = {k: getattr(args, k) for k in ("programs", "few_shot_tokens", "branches", "thought_tokens",
                                                "answer_tokens", "warmup_programs") if getattr(args, k) is not None}
        cfg = dataclasses.replace(cfg, seed=seed, **sizes)
        lang_branching.run(spec, cfg, out, args.stem or f"lang_branching_{args.scale}",
                           f"radixserve.lang branching program, {cfg.programs} programs ({args.scale} scale)")
    elif kind == "grammar":
        from radixserve.bench import grammar

        parts = {p for p in args.grammar_parts.split(",") if p}
        unknown = parts - {"micro", "host", "throughput", "jump-forward"}
        if unknown:
            raise ValueError(f"unknown --parts {sorted(unknown)}; choose from micro, host, throughput, jump-forward")
        sizes = [int(x) for x in args.batch_sizes.split(",") if x]
        grammar.run(spec, out, args.stem or "grammar", parts, sizes, args.output_len, args.prompt_len, args.jf_batch,
                    args.jf_max_new_tokens, args.micro_repeats, args.micro_steps, seed)
    elif kind == "cpu":
        from radixserve.bench import cpu_suite

        variants = tuple(v for v in args.variants.split(",") if v)
        unknown = set(variants) - set(cpu_suite.VARIANTS)
        if unknown:
            raise ValueError(f"unknown --variants {sorted(unknown)}; choose from {sorted(cpu_suite.VARIANTS)}")
        cpu_suite.run(spec, out, args.stem or "cpu_runtime", prompts=args.prompts, system_len=args.system_len,
                      question_len=args.question_len, output_len=args.output_len, repeats=args.repeats,
                      variants=variants, seed=seed)
    elif kind == "long-short":
        from radixserve.bench import long_short

        if args.time_limit is not None:
            raise ValueError("long-short runs every request to the end; it has no --time-limit")
        scale = long_short.SCALES[args.scale]
        scale = scale._replace(**{k: getattr(args, k) for k in scale._fields if getattr(args, k) is not None})
        long_short.run(spec, scale, out, args.stem or f"long_short_{args.scale}", vocab, seed)
    elif kind == "spec":
        from radixserve.bench import spec as spec_bench

        opts = {k: v for k, v in dict(spec.options).items()}
        spec_bench.run(args.model, args.device, out, args.stem or "spec_decoding_cpu",
                       tuple(int(b) for b in args.batches.split(",") if b), args.k, dtype=args.dtype, **opts)
    elif kind == "gpu":
        _gpu_all(args, spec, vocab)
    return 0


def _dp(args, vocab: int) -> None:
    sizes = (args.groups, args.prompts_per_group, args.system_len, args.question_len, args.output_len)
    base = workloads.shared_prefix(*sizes, vocab_size=vocab, seed=args.seed)
    chosen = {}
    for order in (o for o in args.orders.split(",") if o):
        if order not in dp_bench.ORDERS:
            raise ValueError(f"--orders takes {dp_bench.ORDERS}, got {order!r}")
        chosen[order] = dp_bench.interleave(base, args.seed) if order == "interleaved" else base
    engine = {"model": args.model, "device": args.device, "tokenizer": args.tokenizer,
              "max_total_tokens": args.max_total_tokens, "page_size": args.page_size,
              "max_running_requests": args.max_running_requests, "max_context_len": args.max_context_len}
    engine = {k: v for k, v in engine.items() if v is not None}
    title = (f"data parallel: {args.replicas} replicas vs one engine, shared-prefix {sizes[0]}x{sizes[1]}, "
             f"S={sizes[2]} Q={sizes[3]} O={sizes[4]}, {args.max_concurrency} clients")
    dp_bench.run_dp(args.replicas, engine, chosen, args.out_dir, args.stem or f"dp{args.replicas}", title, args.rate,
                    args.max_concurrency, args.base_port)


def _tp(args) -> None:
    import torch

    from radixserve.bench import tp as tp_bench

    sizes = [int(x) for x in args.tp_sizes.split(",") if x]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--tp takes TP sizes >= 1, comma-separated; got {args.tp_sizes!r}")
    on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    model = args.model or ("dummy:llama-3.1-8b" if on_gpu else "dummy:tiny-llama")
    opts = {k: getattr(args, k) for k in ("tokenizer", "max_total_tokens", "page_size", "max_running_requests")
            if getattr(args, k) is not None}
    opts.setdefault("max_total_tokens", max(8192, 4 * (args.prompt_len + args.output_len)))
    opts["dtype"] = args.dtype
    tp_bench.run(model, args.device, sizes, args.out_dir, args.stem or f"tp_{'_'.join(map(str, sizes))}",
                 prompt_len=args.prompt_len, output_len=args.output_len, requests=args.requests,
                 probe_steps=args.probe_steps, engine_options=opts, seed=args.seed)


def _gpu_all(args, spec: suites.EngineSpec, vocab: int) -> None:
    """shared-prefix (GPU scale; transformers on 4 whole groups) with every policy and radix off,
    ShareGPT-shaped (1000 requests), batch-1 latency; each run capped so the whole fits the budget."""
    b = args.budget
    out = args.out_dir
    parts = set(args.parts.split(","))
    if "shared-prefix" in parts:
        sp = workloads.shared_prefix(*SCALES["gpu"], vocab_size=vocab, seed=args.seed)
        suites.compare(spec, sp, out, "shared_prefix_gpu", "shared-prefix 64x16, S=2048 Q=128 O=256 (GPU)",
                       hf_subset_groups=4, hf_batch_size=64, time_limit_s=0.13 * b)
    if "sharegpt" in parts:
        suites.single(spec, workloads.sharegpt(1000, vocab, args.seed), out, "sharegpt_gpu",
                      "ShareGPT-shaped, 1000 requests (GPU)", time_limit_s=0.2 * b)
    if "batch1" in parts:
        suites.single(spec, workloads.batch1(4, 1024, 128, vocab, args.seed), out, "batch1_gpu",
                      "batch-1 latency (GPU)", sequential=True, time_limit_s=0.05 * b)
    if "tree" in parts:
        suites.tree(spec, out, "tree_micro_gpu", {}, 256, real_steps=5)
