"""Timing and device helpers shared by `radixserve bench` and the scripts in benchmarks/: CUDA-event
medians (alone, or replayed from a CUDA graph), the engine's decode steps timed on the host (CPU) or
by CUDA events, copy bandwidth, the GPU run's header and file stem, sections that fail without
losing the others' numbers, and repeated measurements as median [min-max].

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
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from radixserve.engine.engine import Engine  # reaches the in-process engine's runner and loop

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


class _ForwardHook:
    """Routes an idle engine's model forwards (its scheduler's `forward`) through `_timed` while the
    context is open (benchmark-only, like `offline.reconfigure`)."""

    def __init__(self, engine: Engine) -> None:
        self.scheduler = engine.scheduler
        self._inner = self.scheduler.forward

    def __enter__(self):
        inner = self._inner = self.scheduler.forward
        self.scheduler.forward = lambda batch: self._timed(inner, batch)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.scheduler.forward = self._inner

    def _timed(self, inner: Callable, batch: Any) -> Any:
        raise NotImplementedError


class CpuStepTimer(_ForwardHook):
    """Times the engine's forward of full-batch decode steps (CPU forwards are synchronous)."""

    def __init__(self, engine: Engine, batch_size: int) -> None:
        super().__init__(engine)
        self.batch_size = batch_size
        self.times: list[float] = []  # wall seconds per step
        self.cpu_times: list[float] = []  # CPU seconds of the process (all threads) per step

    def _timed(self, inner: Callable, batch: Any) -> Any:
        if not (batch.is_decode and batch.batch_size == self.batch_size):
            return inner(batch)
        t, c = time.perf_counter(), time.process_time()
        out = inner(batch)
        self.times.append(time.perf_counter() - t)
        self.cpu_times.append(time.process_time() - c)
        return out


class DecodeStepTimer(_ForwardHook):
    """Records a CUDA event as the engine launches each decode step (the scheduler's forward)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.events: list[tuple[int, torch.cuda.Event]] = []

    def _timed(self, inner: Callable, batch: Any) -> Any:
        if batch.is_decode:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append((batch.batch_size, ev))
        return inner(batch)

    def step_ms(self, batch_size: int) -> float:
        """Median gap between consecutive decode steps of `batch_size` rows (the steady state)."""
        torch.cuda.synchronize()
        gaps = [a.elapsed_time(b) for (na, a), (nb, b) in zip(self.events, self.events[1:])
                if na == nb == batch_size]
        return statistics.median(gaps)


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
