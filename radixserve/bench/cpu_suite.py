"""`radixserve bench cpu`: the CPU runtime on its issue's workload, against transformers `generate`
on the same batch, with the decode step time at full batch, repeated to show the spread of a
shared machine.

Each repeat runs transformers once and radixserve once per variant, back to back, so a ratio is
always taken between neighbouring runs. Variants switch the CPU runtime's parts on one loaded
engine: cascade attention (EngineConfig.cascade_attention), the fused elementwise ops
(set_fused_ops) and the KV mirror (a backend whose mirror has no budget gathers K/V from the
pool every step, as the backend did before the mirror).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import NamedTuple

import torch

from radixserve.bench import report, workloads
from radixserve.bench.offline import reconfigure, run_offline, warmup
from radixserve.bench.suites import EngineSpec, hf_baseline_model
from radixserve.bench.timing import CpuStepTimer, spread, spread_text

logger = logging.getLogger(__name__)


class Variant(NamedTuple):
    name: str
    cascade: bool
    fused_ops: bool
    mirror: bool


VARIANTS = {
    "all": Variant("radixserve", True, True, True),
    "no-cascade": Variant("radixserve, cascade off", False, True, True),
    "gather": Variant("radixserve, cascade off, no KV mirror, plain ops", False, False, False),
}


def apply_variant(engine, v: Variant) -> None:
    """Switch an idle engine's CPU runtime parts (benchmark-only, like `reconfigure`)."""
    from radixserve.models.layers import set_fused_ops
    from radixserve.runtime.attention.torch_native import TorchNativeBackend

    reconfigure(engine)  # flushes the cache; checks the engine is idle
    cfg = dataclasses.replace(engine.scheduler.config, cascade_attention=v.cascade, fused_ops=v.fused_ops)
    engine.config = engine.scheduler.config = cfg
    set_fused_ops(engine.runner.model, v.fused_ops)
    runner = engine.runner
    if not isinstance(runner.attn, TorchNativeBackend):
        raise ValueError(f"bench cpu measures the CPU backend; this engine runs {type(runner.attn).__name__}")
    runner.attn = TorchNativeBackend(runner.pool, runner.req_table, mirror_max_bytes=None if v.mirror else 0)


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run(spec: EngineSpec, out_dir: str, stem: str, *, prompts: int = 16, system_len: int = 500,
        question_len: int = 24, output_len: int = 64, repeats: int = 3, variants: tuple[str, ...] = tuple(VARIANTS),
        seed: int = 0) -> dict:
    if spec.torch_device != "cpu":
        raise ValueError("bench cpu runs on the CPU (--device cpu or auto on a machine without CUDA)")
    w = workloads.shared_prefix(1, prompts, system_len, question_len, output_len, vocab_size=32000, seed=seed)
    from radixserve.bench.hf_baseline import run_hf_generate

    hf_model = hf_baseline_model(spec)
    engine = spec.build()
    runs, per_repeat = [], []
    try:
        warmup(engine, engine.vocab_size)
        for rep in range(repeats):
            row = {"repeat": rep}
            load = _load()
            hf = run_hf_generate(hf_model, w, prompts, 0, config={"model": spec.model or "embedded SmolLM2-135M"})
            hf = hf.to_dict()
            hf.update(name=f"transformers generate (repeat {rep + 1})", load_average_1m_before=load)
            runs.append(hf)
            row["transformers"] = hf["output_tok_per_s"]
            for key in variants:
                v = VARIANTS[key]
                apply_variant(engine, v)
                load = _load()
                with CpuStepTimer(engine, prompts) as timer:
                    r = run_offline(engine, w, f"{v.name} (repeat {rep + 1})",
                                    config=dict(cascade_attention=v.cascade, fused_ops=v.fused_ops,
                                                kv_mirror=v.mirror)).to_dict()
                r["decode_step_ms"] = spread([t * 1e3 for t in timer.times]) if timer.times else None
                r["decode_step_cpu_ms"] = spread([t * 1e3 for t in timer.cpu_times]) if timer.times else None
                r["load_average_1m_before"] = load
                runs.append(r)
                row[key] = {"output_tok_per_s": r["output_tok_per_s"],
                            "ratio_vs_transformers": r["output_tok_per_s"] / max(hf["output_tok_per_s"], 1e-9),
                            "decode_step_ms_median": r["decode_step_ms"]["median"] if timer.times else None,
                            "decode_step_cpu_ms_median": r["decode_step_cpu_ms"]["median"] if timer.times else None}
                logger.info("repeat %d %s: %.1f tok/s (transformers %.1f), decode step %.1f ms", rep + 1, v.name,
                            r["output_tok_per_s"], hf["output_tok_per_s"], row[key]["decode_step_ms_median"] or 0)
            per_repeat.append(row)
        apply_variant(engine, VARIANTS["all"])
    finally:
        engine.shutdown()
    summary = {key: {"output_tok_per_s": spread([r[key]["output_tok_per_s"] for r in per_repeat]),
                     "ratio_vs_transformers": spread([r[key]["ratio_vs_transformers"] for r in per_repeat]),
                     "decode_step_ms": spread([r[key]["decode_step_ms_median"] for r in per_repeat]),
                     "decode_step_cpu_ms": spread([r[key]["decode_step_cpu_ms_median"] for r in per_repeat])}
               for key in variants}
    summary["transformers"] = {"output_tok_per_s": spread([r["transformers"] for r in per_repeat])}
    lines = [f"- {repeats} repeats; each repeat runs transformers `generate` (batch {prompts}) and then every "
             "radixserve variant back to back; ratios are taken within a repeat. The machine was shared with other "
             "work during the runs (load averages in the JSON): medians, with min-max in brackets."]
    for key in variants:
        s = summary[key]
        lines.append(f"- **{VARIANTS[key].name}**: {spread_text(s['output_tok_per_s'], '.1f')} output tok/s = "
                     f"**{spread_text(s['ratio_vs_transformers'], '.2f')}x** transformers; decode step at batch {prompts}: "
                     f"**{spread_text(s['decode_step_ms'], '.0f')} ms** (process CPU time {spread_text(s['decode_step_cpu_ms'], '.0f')} ms "
                     f"over {torch.get_num_threads()} threads)")
    lines.append(f"- transformers generate: {spread_text(summary['transformers']['output_tok_per_s'], '.1f')} output tok/s")
    title = (f"CPU runtime: {prompts} requests sharing a {system_len}-token prompt (+{question_len}), "
             f"{output_len} new tokens, batch {prompts}, float32")
    return report.write(out_dir, stem, title, runs, {"workload": w.settings, "summary": summary,
                                                      "per_repeat": per_repeat}, lines)
