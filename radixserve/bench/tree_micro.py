"""Micro-benchmarks of the host side: RadixTree.match_prefix alone, and the scheduler + radix tree
work per step with many running requests (model forward replaced by a stub returning random logits)."""
from __future__ import annotations

import logging
import random
import statistics
import time

import torch

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree

logger = logging.getLogger(__name__)


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def match_prefix_bench(prompt_len: int = 32768, num_nodes: int = 1, page_size: int = 1, repeat: int = 200,
                       seed: int = 0) -> dict:
    """Median ms of match_prefix on a fully cached `prompt_len`-token prompt stored as a path of
    `num_nodes` nodes (each with a sibling branch, as many chat turns or requests leave it)."""
    rng = random.Random(seed)
    tokens = [rng.randrange(100, 32000) for _ in range(prompt_len)]
    alloc = PageAllocator(2 * prompt_len // page_size + 8, page_size)
    tree = RadixTree(alloc)
    step = prompt_len // num_nodes // page_size * page_size
    for cut in range(step, prompt_len, step):  # a branch leaving the path at every cut makes a node boundary
        branch = tokens[:cut] + [rng.randrange(100, 32000) for _ in range(page_size)]
        m = tree.match_prefix(branch[:cut])
        new = alloc.alloc(len(branch) // page_size - m.slots.numel() // page_size)
        tree.insert(branch, torch.cat([m.slots, new]))
    m = tree.match_prefix(tokens)
    new = alloc.alloc((prompt_len - m.slots.numel()) // page_size)
    tree.insert(tokens, torch.cat([m.slots, new]))
    tree.check_integrity()
    assert tree.match_prefix(tokens).slots.numel() == prompt_len
    ms = _median_ms(lambda: tree.match_prefix(tokens), repeat)
    return {"prompt_len": prompt_len, "num_nodes_on_path": num_nodes, "page_size": page_size,
            "match_prefix_ms_median": ms, "goal_ms": 0.3, "met": ms < 0.3}


def scheduler_overhead_bench(engine, num_requests: int = 256, prompt_len: int = 256, shared_len: int = 128,
                             decode_steps: int = 30, real_steps: int = 2, seed: int = 0) -> dict:
    """Host time per decode step with `num_requests` running, on an engine whose loop is stopped.

    Splits each step into: stub forward (random logits), result processing (sampling, detokenising,
    stop checks) and the rest (scheduling, radix tree, KV bookkeeping, batch building). With
    real_steps > 0 also times that many real model steps of the same batch."""
    engine.loop.stop()
    sched = engine.scheduler
    if sched.running or sched.waiting:
        raise RuntimeError("scheduler_overhead_bench needs an idle engine")
    from radixserve.sampling_params import SamplingParams

    rng = random.Random(seed)
    shared = [rng.randrange(100, 32000) for _ in range(shared_len)]
    sp = SamplingParams(max_new_tokens=decode_steps + real_steps + 8, temperature=0.0, ignore_eos=True)
    for _ in range(num_requests):
        ids = shared + [rng.randrange(100, 32000) for _ in range(prompt_len - shared_len)]
        engine.submit(engine.prepare(ids, sp), None, None, lambda ev: None)
    engine.loop._drain(block=False)  # NOTE: the stopped loop's inbox still holds the submissions
    real_forward = sched.forward
    vocab = engine.vocab_size
    timers = {"forward": 0.0, "process": 0.0}

    def stub(batch):
        t = time.perf_counter()
        out = torch.randn(batch.logits_indices.numel(), vocab)  # [L, V] float32
        timers["forward"] += time.perf_counter() - t
        return out

    real = {name: getattr(sched.results, name) for name in ("sample", "finalize")}

    def timed(name):
        def run(*args):
            t = time.perf_counter()
            out = real[name](*args)
            timers["process"] += time.perf_counter() - t
            return out
        return run
    sched.forward = stub
    for name in real:
        setattr(sched.results, name, timed(name))
    while any(not r.prefill_done for r in sched.running) or sched.waiting:  # prefill everything first
        sched.step()
    if len(sched.running) != num_requests:
        raise RuntimeError(f"only {len(sched.running)} of {num_requests} requests are running; "
                           "raise max_total_tokens / max_running_requests")
    timers.update(forward=0.0, process=0.0)
    t = time.perf_counter()
    for _ in range(decode_steps):
        sched.step()
    total = (time.perf_counter() - t) / decode_steps * 1e3
    fwd, proc = timers["forward"] / decode_steps * 1e3, timers["process"] / decode_steps * 1e3
    out = {"running_requests": len(sched.running), "decode_steps": decode_steps, "host_step_ms": total - fwd,
           "stub_forward_ms": fwd, "result_processing_ms": proc, "schedule_tree_kv_ms": total - fwd - proc}
    if real_steps:
        sched.forward = real_forward
        t = time.perf_counter()
        for _ in range(real_steps):
            sched.step()
        out["model_step_ms_measured"] = (time.perf_counter() - t) / real_steps * 1e3
        out["model_step_note"] = f"{engine.model_name} on {engine.runner.device}, batch {num_requests} decode"
    for name, fn in real.items():
        setattr(sched.results, name, fn)
    return out


def overhead_ratios(res: dict, quoted_step_ms: dict[str, float]) -> dict:
    """Overhead (scheduling + tree + KV) and total host time as fractions of model step times."""
    steps = dict(quoted_step_ms)
    if "model_step_ms_measured" in res:
        steps["measured: " + res["model_step_note"]] = res["model_step_ms_measured"]
    return {name: {"step_ms": ms, "schedule_tree_kv_fraction": res["schedule_tree_kv_ms"] / ms,
                   "host_total_fraction": res["host_step_ms"] / ms} for name, ms in steps.items()}
