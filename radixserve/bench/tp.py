"""`radixserve bench tp`: tensor parallelism, TP=N against TP=1 in one run.

For each TP size: batch-1 decode tokens/s (one streamed greedy request at a time, decode rate =
tokens after the first / time after the first), and the time the step's collectives take on
their own (`ProbeSpec`: two all-reduces of [1, hidden] per layer, the embedding's, and the logits
all-gather), run eagerly on the live group. The same dummy or real model, device and options for
every size. On GPU, rank r runs on cuda:r (one node; CUDA_VISIBLE_DEVICES picks them); on CPU the
ranks share the host's cores, so only the mechanics are shown there, not a speed-up.
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import time

import torch

from radixserve.bench import report

logger = logging.getLogger(__name__)


def _decode_rate(engine, prompt: list[int], output_len: int) -> tuple[float, float]:
    """-> (decode tok/s, time to first token s) of one greedy request of output_len tokens."""
    from radixserve import SamplingParams

    params = SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True)

    async def stream() -> list[tuple[float, int]]:
        marks = []
        async for delta in engine.generate_stream(input_ids=prompt, sampling_params=params):
            marks.append((time.perf_counter(), len(delta.token_ids)))
        return marks

    start = time.perf_counter()
    marks = asyncio.run(stream())
    first, last = marks[0][0], marks[-1][0]
    after_first = sum(n for _, n in marks) - marks[0][1]
    return after_first / max(last - first, 1e-9), first - start


def _probe_ms(engine, steps: int) -> float | None:
    """The step's collectives alone, ms per step (None for one rank: there are none)."""
    from radixserve.distributed.step_sync import ProbeSpec

    runner = engine.runner
    if runner.sender is None:
        return None
    m = runner.model
    spec = ProbeSpec(steps=steps, rows=1, hidden=int(m.config.hidden_size), reduces=2 * m.num_layers + 1,
                     gather_cols=int(m.lm_head.weight.shape[0]), dtype=runner.dtype)
    return 1e3 * engine.loop.call(lambda _s: runner.sender.probe(spec), timeout=600)


def run(model: str, device: str, tp_sizes: list[int], out_dir: str, stem: str, *, prompt_len: int, output_len: int,
        requests: int, probe_steps: int, engine_options: dict, seed: int = 0) -> dict:
    from radixserve import Engine

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for tp in tp_sizes:
        engine = Engine(model, device=device, tp=tp, seed=seed, **engine_options)
        try:
            prompts = [torch.randint(10, min(engine.vocab_size, 32000), (prompt_len,), generator=gen).tolist()
                       for _ in range(requests + 1)]
            _decode_rate(engine, prompts[0], min(output_len, 8))  # warm-up (Triton compiles, allocator)
            rates, ttfts = zip(*(_decode_rate(engine, p, output_len) for p in prompts[1:]))
            comm_ms = _probe_ms(engine, probe_steps)
            rows.append({"tp": tp, "decode_tok_per_s": statistics.median(rates), "decode_tok_per_s_all": list(rates),
                         "ttft_s": statistics.median(ttfts), "step_ms": 1e3 / statistics.median(rates),
                         "collectives_ms_per_step": comm_ms, "device": str(engine.runner.device),
                         "dtype": str(engine.runner.dtype).removeprefix("torch.")})
            logger.info("tp=%d: %.1f tok/s batch-1 decode, collectives %s ms/step", tp, rows[-1]["decode_tok_per_s"],
                        "-" if comm_ms is None else f"{comm_ms:.3f}")
        finally:
            engine.shutdown()
    base = next((r for r in rows if r["tp"] == 1), None)
    lines = ["| TP | batch-1 decode tok/s | step ms | collectives ms/step | share of step | vs TP=1 | TTFT s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        comm = r["collectives_ms_per_step"]
        share = "-" if comm is None else f"{comm / r['step_ms']:.0%}"
        speed = "-" if base is None else f"{r['decode_tok_per_s'] / base['decode_tok_per_s']:.2f}x"
        lines.append(f"| {r['tp']} | {r['decode_tok_per_s']:.1f} | {r['step_ms']:.2f} | "
                     f"{'-' if comm is None else f'{comm:.3f}'} | {share} | {speed} | {r['ttft_s']:.3f} |")
    title = f"tensor parallelism: batch-1 decode, {model}, prompt {prompt_len}, output {output_len}"
    notes = ["Collectives are timed on their own, eagerly (two all-reduces per layer, the embedding's, the "
             "logits all-gather); inside a CUDA-graph step they overlap nothing but skip launch overhead."]
    if all(r["device"] == "cpu" for r in rows):
        notes.append("CPU: the ranks share the host's cores and gloo runs over loopback TCP, so this shows the "
                     "mechanics, not a speed-up; the figures that matter come from several GPUs.")
    return report.write(out_dir, stem, title, [], extra={"tp_runs": rows, "settings": {
        "model": model, "device": device, "prompt_len": prompt_len, "output_len": output_len, "requests": requests,
        "probe_steps": probe_steps, "engine_options": engine_options}}, summary_lines=lines + [""] + notes)
