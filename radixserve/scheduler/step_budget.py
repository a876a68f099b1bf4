"""How much prefill one step may carry, and the measurement of step times that teaches the cost model.

While requests are decoding, every step is a token of latency for each of them: a step that also
carries a 2048-token chunk of the 90k-th position of a long prompt makes all of them wait for
it. With `max_step_ms` set, such steps get a time budget: the decode rows' predicted time is
taken off first, and prefill chunks get what is left (sized by the cost model, which knows a
chunk deep in a long prompt costs more than one at its start). With nothing decoding there is
nobody to keep waiting, and chunks keep their full size.
"""
from __future__ import annotations

import math
from typing import Callable

from radixserve.scheduler.step_cost import NO_WORK, StepCostModel, StepWork, chunk_work

# NOTE: whole short prompts admitted ahead of running chunked prefills may use at most this share
# of a limited step's prefill time while a chunked prefill is in progress, so a stream of short
# requests cannot starve a long prompt.
SHORT_FIRST_SHARE = 0.5
# NOTE: so that a long prompt always moves (and a new one is admitted), the first chunked prefill of a
# limited step gets at least chunked_prefill_size // MIN_CHUNK_DIVISOR tokens, also when the decode
# rows alone use the budget up.
MIN_CHUNK_DIVISOR = 16


class StepBudget:
    """One step's prefill allowance: `tokens` (max_prefill_tokens) and, when `ms` is not None, time."""

    def __init__(self, tokens: int, ms: float | None = None, cost: StepCostModel | None = None,
                 min_chunk: int = 0) -> None:
        if ms is not None and cost is None:
            raise ValueError("a time budget needs a cost model")
        self.tokens = tokens
        self.ms = ms
        self.cost = cost
        self.min_chunk = min_chunk
        self.hold_ms = 0.0  # time kept back from grants (see SHORT_FIRST_SHARE)
        self._floor_used = False

    @property
    def limited(self) -> bool:
        return self.ms is not None

    @property
    def time_left(self) -> float:
        """Milliseconds grants may still use (infinite without a time budget)."""
        return math.inf if self.ms is None else self.ms - self.hold_ms

    @property
    def exhausted(self) -> bool:
        # NOTE: a step whose time is used up still has its floor chunk (see MIN_CHUNK_DIVISOR) until it is taken
        return self.tokens <= 0 or (self.ms is not None and self.ms - self.hold_ms <= 0 and self._floor_used)

    def grant(self, start: int, want: int, samples: bool = False, floor: bool = False) -> int:
        """Tokens (<= want) of a sequence whose first `start` are cached that fit; `floor`: a chunked
        prefill, of which the step's first gets at least `min_chunk` tokens."""
        n = min(want, self.tokens)
        if n <= 0 or self.ms is None:
            return max(n, 0)
        fit = self.cost.max_chunk(start, n, self.ms - self.hold_ms, samples)
        align = self.cost.chunk_align
        if align < fit < n:
            fit -= fit % align  # NOTE: a cut chunk in whole multiples of what the device computes anyway
        if floor and not self._floor_used:
            fit = max(fit, min(n, self.min_chunk))
        return fit

    def take(self, start: int, n: int, samples: bool = False, floor: bool = False) -> None:
        self.tokens -= n
        if floor:
            self._floor_used = True
        if self.ms is not None and n > 0:
            self.ms -= self.cost.work_ms(chunk_work(start, n, samples))


def step_budget(max_prefill_tokens: int, max_step_ms: float | None, cost: StepCostModel | None,
                decode: StepWork, chunked_prefill_size: int) -> StepBudget:
    """The budget of a step whose decode rows compute `decode` (NO_WORK: nothing decodes)."""
    if max_step_ms is None or decode == NO_WORK:
        return StepBudget(max_prefill_tokens)
    return StepBudget(max_prefill_tokens, max(0.0, max_step_ms - cost.predict_ms(decode)), cost,
                      min_chunk=max(1, chunked_prefill_size // MIN_CHUNK_DIVISOR))


class StepTimer:
    """Feeds measured step times to the cost model.

    A step's samples reach the host when the device has finished it, so the time between two
    such moments is the device time of the steps finished in between. With the overlap schedule
    step N+1 is launched before step N's samples are awaited; without it a step is launched after
    the previous one finished. Either way a group of steps is timed from the later of its first
    launch and the previous group's end, to its own end. Steps that sample nothing are not awaited;
    they are timed with the next step that is."""

    # NOTE: steps launched but never awaited (a flush that drops them) are forgotten past this many
    MAX_OPEN = 16

    def __init__(self, cost: StepCostModel, clock: Callable[[], float]) -> None:
        self.cost = cost
        self.clock = clock
        self._open: list[tuple[object, StepWork, float]] = []  # (step's samples, its work, launch time)
        self._last_end = -math.inf

    def launched(self, token: object, work: StepWork, at: float) -> None:
        self._open.append((token, work, at))
        del self._open[:-self.MAX_OPEN]

    def completed(self, token: object, synced: bool) -> None:
        """The step identified by `token` has its samples on the host (`synced`: the host waited
        for the device to get them; False when it sampled nothing)."""
        if not synced:
            return
        idx = next((i for i, (t, _, _) in enumerate(self._open) if t is token), None)
        if idx is None:
            return
        done, self._open = self._open[:idx + 1], self._open[idx + 1:]
        now = self.clock()
        work = NO_WORK
        for _, w, _ in done:
            work = work.plus(w)
        start = max(self._last_end, done[0][2])
        self._last_end = now
        self.cost.observe(work, 1e3 * (now - start), steps=len(done))
