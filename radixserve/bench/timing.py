"""Timing and device helpers shared by `radixserve bench` and the scripts in benchmarks/: CUDA-event
medians (alone, or replayed from a CUDA graph), copy bandwidth, the GPU run's header and file stem,
sections that fail without losing the others' numbers, and repeated measurements as median [min-max].

NOTE: one home for these; a script in benchmarks/ imports them rather than writing its own.
"""
from __future__ import annotations

import datetime
import gc
import logging
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)


def cuda_ms(fn: Callable[[], Any], iters: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() over `iters` calls, each timed by CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_ms(calls: list[Callable[[], Any]], replays: int = 20) -> float:
    """Milliseconds per call of `calls` (closures) captured back to back in one CUDA graph: small
    kernels timed without the host's launch overhead, as the engine replays them."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls:
            c()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(stream)
    return cuda_ms(graph.replay, iters=replays, warmup=3) / len(calls)


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s (read + write bytes) of a 2 GiB buffer."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), iters=20)
    del src, dst
    return 2 * 2 * n / ms / 1e6


def free_device_memory() -> None:
    """Give what the last measurement left behind back (Python garbage, then the CUDA cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_header(**extra: Any) -> dict:
    """The head of a GPU script's results: device, date, command, versions (`extra` after them),
    and an empty `errors` for the sections that fail."""
    import triton

    return dict(device=torch.cuda.get_device_name(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(["python"] + sys.argv), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), **extra, errors={})


def gpu_chip(device_name: str) -> str:
    """A results file's chip suffix: 'NVIDIA H100 80GB HBM3' -> 'h100' ('gpu' when none is named)."""
    return next((w.lower() for w in device_name.split() if w[:1] in "ABH" and w[1:].isdigit()), "gpu")


def run_section(res: dict, key: str, fn: Callable[..., Any], *args: Any) -> None:
    """fn(*args); a failure is logged and kept in res["errors"][key], so it loses no other section's numbers."""
    t0 = time.perf_counter()
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - a failed section must not lose the others' numbers
        logger.exception("section %s failed", key)
        res["errors"][key] = f"{type(exc).__name__}: {exc}"[:500]
    logger.info("section %s: %.1f s", key, time.perf_counter() - t0)


def failed_sections(res: dict) -> list[str]:
    """Markdown lines naming the sections that failed and why (none when all ran)."""
    if not res.get("errors"):
        return []
    return ["## Sections that failed", ""] + [f"- {k}: `{v}`" for k, v in res["errors"].items()] + [""]


def spread(values: list[float]) -> dict:
    """Repeated measurements: median, min, max and all of them."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def spread_text(s: dict, spec: str) -> str:
    """A spread as 'median [min-max]', each number formatted with `spec` (e.g. '.1f')."""
    return f"{s['median']:{spec}} [{s['min']:{spec}}-{s['max']:{spec}}]"
