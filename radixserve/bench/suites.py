"""Benchmark suites: a workload, radixserve under each configuration and the baselines, in one
run, written to one report."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from radixserve.bench import report, workloads
from radixserve.bench.offline import reconfigure, run_offline, warmup
from radixserve.bench.timing import free_device_memory
from radixserve.bench.workloads import Workload

logger = logging.getLogger(__name__)
POLICIES = ("lpm", "dfs-weight", "fcfs")


@dataclass(frozen=True)
class EngineSpec:
    model: str | None = None  # None = embedded SmolLM2-135M
    device: str = "auto"
    options: tuple = ()  # extra EngineConfig (name, value) pairs

    def build(self):
        from radixserve import Engine

        return Engine(self.model, device=self.device, **dict(self.options))

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def hf_baseline_model(spec: EngineSpec):
    """transformers' model of the same weights, float32 on CPU, bfloat16 on CUDA."""
    from radixserve.bench.hf_baseline import load_hf_model

    dev = spec.torch_device
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    logger.info("loading the transformers baseline (%s on %s)", spec.model or "embedded GGUF", dev)
    return load_hf_model(spec.model, dev, dtype)


def hf_baseline(spec: EngineSpec, workload: Workload, batch_size: int, pad_id: int = 0) -> dict:
    from radixserve.bench.hf_baseline import run_hf_generate

    model = hf_baseline_model(spec)
    try:
        return run_hf_generate(model, workload, batch_size, pad_id,
                               config={"model": spec.model or "embedded SmolLM2-135M (GGUF)"}).to_dict()
    finally:
        del model
        free_device_memory()


def compare(spec: EngineSpec, workload: Workload, out_dir: str, stem: str, title: str, *,
            hf_subset_groups: int | None = None, hf_batch_size: int = 16, policies=POLICIES,
            radix_off: bool = True, time_limit_s: float | None = None, hf: bool = True) -> dict:
    """transformers generate (on a subset of whole groups, or everything) and radixserve on that same
    subset; then radixserve on the whole workload under each policy and with the radix cache off."""
    runs: list[dict] = []
    lines: list[str] = []
    subset = workload
    if hf_subset_groups is not None and workload.settings.get("groups", 0) > hf_subset_groups:
        subset = workloads.subset_groups(workload, hf_subset_groups)
    hf_run = hf_baseline(spec, subset, hf_batch_size) if hf else None
    engine = spec.build()
    try:
        warmup(engine, engine.vocab_size)
        if hf_run is not None:
            reconfigure(engine, schedule_policy="lpm", disable_radix_cache=False)
            ours = run_offline(engine, subset, f"radixserve lpm ({subset.name})", time_limit_s).to_dict()
            hf_run["name"] = f"transformers generate ({subset.name})"
            runs += [hf_run, ours]
            ratio = ours["output_tok_per_s"] / max(hf_run["output_tok_per_s"], 1e-9)
            lines.append(f"- **radixserve / transformers generate, output tok/s on the same {len(subset.requests)} "
                         f"requests ({subset.name})**: {ours['output_tok_per_s']:.1f} / "
                         f"{hf_run['output_tok_per_s']:.1f} = **{ratio:.2f}x**")
        by_name = {}
        for pol in policies:
            reconfigure(engine, schedule_policy=pol, disable_radix_cache=False)
            by_name[pol] = run_offline(engine, workload, f"radixserve {pol}", time_limit_s).to_dict()
        if radix_off:
            reconfigure(engine, schedule_policy="lpm", disable_radix_cache=True)
            by_name["off"] = run_offline(engine, workload, "radixserve no radix cache", time_limit_s).to_dict()
            reconfigure(engine, disable_radix_cache=False)
        runs += list(by_name.values())
        best = max((by_name[p] for p in policies), key=lambda r: r["output_tok_per_s"], default=None)
        if radix_off and best is not None:
            off = by_name["off"]
            lines.append(f"- **radix cache on ({best['name']}) vs off, output tok/s**: {best['output_tok_per_s']:.1f}"
                         f" / {off['output_tok_per_s']:.1f} = **{best['output_tok_per_s'] / max(off['output_tok_per_s'], 1e-9):.2f}x**")
        for pol in policies:
            r = by_name[pol]
            lines.append(f"- hit rate {pol}: {r['cache_hit_rate']:.1%} of prompt tokens; optimal "
                         f"{r['optimal_hit_rate']:.1%}; achieved/optimal = "
                         f"{r['cache_hit_rate'] / max(r['optimal_hit_rate'], 1e-9):.1%}")
        if any(r.get("truncated") for r in runs):
            lines.append("- runs marked (time limit) were stopped at their limit; their rates count the work done")
    finally:
        engine.shutdown()
        free_device_memory()
    return report.write(out_dir, stem, title, runs, {"workload": workload.settings}, lines)


def single(spec: EngineSpec, workload: Workload, out_dir: str, stem: str, title: str, *,
           sequential: bool = False, time_limit_s: float | None = None, radix_off: bool = False) -> dict:
    """radixserve (lpm) on one workload (and optionally with the radix cache off)."""
    engine = spec.build()
    try:
        warmup(engine, engine.vocab_size)
        runs = [run_offline(engine, workload, "radixserve lpm", time_limit_s, sequential=sequential).to_dict()]
        if radix_off:
            reconfigure(engine, disable_radix_cache=True)
            runs.append(run_offline(engine, workload, "radixserve no radix cache", time_limit_s,
                                    sequential=sequential).to_dict())
    finally:
        engine.shutdown()
        free_device_memory()
    lines = [f"- {r['name']}: {r['req_per_s']:.2f} req/s, {r['output_tok_per_s']:.1f} output tok/s, "
             f"hit rate {r['cache_hit_rate']:.1%} (optimal {r['optimal_hit_rate']:.1%})" for r in runs]
    return report.write(out_dir, stem, title, runs, {"workload": workload.settings}, lines, latency_plot=True)


def online(spec: EngineSpec, workload: Workload, out_dir: str, stem: str, title: str, rate: float,
           max_concurrency: int, url: str | None = None, model_name: str | None = None) -> dict:
    """Streaming clients against `url`, or against an in-process server on a free loopback port."""
    from radixserve.bench.online import run_online

    if url is not None:
        runs = [run_online(url, model_name or "default", workload, rate, max_concurrency).to_dict()]
    else:
        from radixserve.server.app import build_app
        from radixserve.server.testing import ServerThread

        engine = spec.build()
        try:
            warmup(engine, engine.vocab_size)
            with ServerThread(build_app(engine)) as srv:
                runs = [run_online(srv.url, engine.model_name, workload, rate, max_concurrency,
                                   engine=engine, config={"model": engine.model_name}).to_dict()]
        finally:
            engine.shutdown()
    r = runs[0]
    lines = [f"- {r['completed']}/{r['num_requests']} requests completed, **{r['errors']} errors**; "
             f"{r['req_per_s']:.2f} req/s, {r['output_tok_per_s']:.1f} output tok/s",
             f"- TTFT p50/p90/p99 s: {r['ttft_s']}", f"- ITL p50/p90/p99 s: {r['itl_s']}",
             f"- e2e p50/p90/p99 s: {r['e2e_s']}"]
    return report.write(out_dir, stem, title, runs, {"workload": workload.settings}, lines, latency_plot=True)


def tree(spec: EngineSpec, out_dir: str, stem: str, quoted_step_ms: dict[str, float], num_requests: int = 256,
         real_steps: int = 2) -> dict:
    from radixserve.bench import tree_micro

    matches = [tree_micro.match_prefix_bench(num_nodes=n, page_size=ps) for n, ps in ((1, 1), (64, 1), (64, 16))]
    engine = spec.build()
    try:
        over = tree_micro.scheduler_overhead_bench(engine, num_requests=num_requests, real_steps=real_steps)
    finally:
        engine.shutdown()
    ratios = tree_micro.overhead_ratios(over, quoted_step_ms)
    lines = [f"- match_prefix, {m['prompt_len']}-token cached prompt, {m['num_nodes_on_path']} node(s) on the path, "
             f"page {m['page_size']}: **{m['match_prefix_ms_median']:.3f} ms** (goal < 0.3 ms: "
             f"{'met' if m['met'] else 'NOT met'})" for m in matches]
    lines.append(f"- per decode step with {over['running_requests']} running requests (stub forward): "
                 f"scheduling + radix tree + KV bookkeeping **{over['schedule_tree_kv_ms']:.2f} ms**, "
                 f"result processing (sampling, detokenising, stops) {over['result_processing_ms']:.2f} ms")
    for name, r in ratios.items():
        lines.append(f"- vs model step {name} = {r['step_ms']:.1f} ms: scheduling+tree "
                     f"**{r['schedule_tree_kv_fraction']:.1%}** (goal <= 1%), all host work "
                     f"{r['host_total_fraction']:.1%}")
    return report.write(out_dir, stem, "Radix tree and scheduler host overhead", [],
                        {"match_prefix": matches, "scheduler_overhead": over, "ratios": ratios}, lines)
