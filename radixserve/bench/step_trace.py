"""StepTrace: where an engine's time goes during a benchmark run — every scheduler step's start,
end and batch (rows, tokens, decode-only or not), and the time the scheduler thread spent idle
between steps.

Benchmark-only: while installed it wraps the scheduler's `step` and `forward` on the instance
(both are looked up on the instance every step), installed and removed on the engine's loop
thread between two steps.
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from radixserve.engine.engine import Engine  # reaches the in-process engine's runner and loop


class StepRecord(NamedTuple):
    start: float  # perf_counter at the step's start
    end: float
    rows: int  # requests in the step's batch (0: the step only brought samples to the host)
    tokens: int  # tokens computed in the step
    decode: bool  # every row computed one token


class StepTrace:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.scheduler = engine.scheduler
        self.records: list[StepRecord] = []
        self._batch: tuple[int, int, bool] | None = None
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> "StepTrace":
        sched = self.scheduler
        step, forward = sched.step, sched.forward
        self._saved = (vars(sched).get("step"), forward)  # NOTE: step is normally the class's method

        def traced_forward(batch):
            self._batch = (batch.batch_size, batch.num_tokens, bool(batch.is_decode))
            return forward(batch)

        def traced_step():
            self._batch = None
            t0 = time.perf_counter()
            worked = step()
            if worked:
                rows, tokens, decode = self._batch or (0, 0, False)
                self.records.append(StepRecord(t0, time.perf_counter(), rows, tokens, decode))
            return worked

        def install(s) -> None:
            s.forward, s.step = traced_forward, traced_step
        if self.engine.is_alive():
            self.engine.loop.call(install)  # NOTE: on the loop thread, between two steps
        else:
            install(sched)
        return self

    def __exit__(self, *exc: Any) -> None:
        own_step, forward = self._saved

        def restore(sched) -> None:
            if own_step is None:
                del sched.step
            else:
                sched.step = own_step
            sched.forward = forward
        # NOTE: on the loop thread, between two steps: the step in progress has been recorded, and
        # no traced step starts after this.
        if self.engine.is_alive():
            self.engine.loop.call(restore)
        else:
            restore(self.scheduler)

    def summary(self, t0: float, t1: float) -> dict:
        """Steps and idle time between perf_counter times t0 and t1 (the run's start and end)."""
        recs = [r for r in self.records if t0 <= r.start < t1]
        model = [r for r in recs if r.rows]
        decode = [r for r in model if r.decode]
        busy = sum(min(r.end, t1) - r.start for r in recs)  # NOTE: the last step may end after t1
        gaps, prev = [], t0
        for r in recs:
            gaps.append(max(0.0, r.start - prev))
            prev = r.end
        gaps.append(max(0.0, t1 - prev))
        return {
            "model_steps": len(model),
            "decode_steps": len(decode),
            "mixed_or_prefill_steps": len(model) - len(decode),
            "mean_rows_per_step": statistics.fmean(r.rows for r in model) if model else 0.0,
            "mean_decode_batch": statistics.fmean(r.rows for r in decode) if decode else 0.0,
            "scheduler_busy_s": busy,
            "scheduler_idle_s": max(0.0, (t1 - t0) - busy),
            "longest_idle_gap_s": max(gaps),
            "mean_step_s": busy / len(recs) if recs else 0.0,
        }
