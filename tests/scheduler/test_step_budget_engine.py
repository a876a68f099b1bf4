"""max_step_ms in the engine: while requests decode, a long prompt's chunks shrink to the step budget
and short prompts go in ahead of them; alone, it prefills in full chunks; outputs do not change."""
from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch

from radixserve import Engine, EngineConfig, SamplingParams
from radixserve.cli import build_parser
from radixserve.models.dummy import dummy_config
from radixserve.scheduler.step_budget import MIN_CHUNK_DIVISOR
from radixserve.scheduler.step_cost import batch_work, chunk_work, for_model

MODEL = "dummy:tiny-llama"
CHUNK, LONG, SHORT, SHORTS, SHORT_OUT = 256, 2000, 24, 6, 8
# the budget: a decode step of the short requests plus about 48 tokens of a fresh prompt, by the prior
PRIOR = for_model(dummy_config("tiny-llama"), torch.float32, "cpu", online=False)
BUDGET_MS = PRIOR.predict_ms(batch_work([(SHORT, 1, True)] * SHORTS)) + PRIOR.work_ms(chunk_work(0, 48, True))


def _engine(max_step_ms: float | None, **kw) -> Engine:
    opts = dict(device="cpu", dtype="float32", max_total_tokens=8192, chunked_prefill_size=CHUNK,
                max_step_ms=max_step_ms, step_cost_online=False, check_integrity=True)
    return Engine(MODEL, **{**opts, **kw})


@pytest.fixture(scope="module")
def engines():
    on, off = _engine(BUDGET_MS), _engine(None)
    yield on, off
    on.shutdown()
    off.shutdown()


def _prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 30000) for _ in range(n)] for n in [LONG] + [SHORT] * SHORTS]


def _run(engine: Engine, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[tuple]]]:
    """Outputs, and each step's rows as (prompt length, tokens computed, cached before, request id)."""
    sched = engine.scheduler
    log: list[list[tuple]] = []
    inner = sched._schedule

    def logged():
        rows = inner()
        log.append([(len(r.req.prompt_ids), r.extend_len, r.req.kv.kv_len, r.req.rid) for r in rows])
        return rows

    engine.loop.call(lambda s: setattr(s, "_schedule", logged))
    try:
        params = [SamplingParams(max_new_tokens=4 if len(p) == LONG else SHORT_OUT, temperature=0, ignore_eos=True)
                  for p in prompts]
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    finally:
        engine.loop.call(lambda s: s.__dict__.pop("_schedule"))
    engine.check_integrity()
    return [o.token_ids for o in outs], log


def _long_prefill_done(log) -> int:
    return next(i for i, rows in enumerate(log) for n, ext, kv, _ in rows if n == LONG and kv + ext == LONG)


def _last_short_step(log) -> int:
    return max(i for i, rows in enumerate(log) for n, _, _, _ in rows if n == SHORT)


def _first_short_decode(log) -> int:
    return min(i for i, rows in enumerate(log) for n, ext, kv, _ in rows if n == SHORT and kv >= SHORT)


def test_short_requests_finish_while_a_long_prompt_prefills(engines):
    on, off = engines
    prompts = _prompts(0)
    out_on, log_on = _run(on, prompts)
    out_off, log_off = _run(off, _prompts(0))
    # budget on: the short requests decode (first tokens) and finish before the long prompt's first token
    assert _first_short_decode(log_on) < _last_short_step(log_on) < _long_prefill_done(log_on), log_on
    # budget off, the same workload: every step carries a full long chunk, so the long prompt's prefill ends
    # before the short requests have all their tokens (this is what the budget changes)
    assert _long_prefill_done(log_off) < _last_short_step(log_off), log_off
    assert out_on == out_off  # greedy, float32: chunk sizes do not change tokens


def test_every_decoding_step_stays_within_the_budget(engines):
    on, _ = engines
    _, log = _run(on, _prompts(1))
    floor = CHUNK // MIN_CHUNK_DIVISOR
    limited = 0
    for rows in log:
        decode = [(kv, 1, True) for n, ext, kv, _ in rows if ext == 1 and kv >= n]
        if not decode:
            continue
        limited += 1
        prefill = [(kv, ext, kv + ext == n) for n, ext, kv, _ in rows if not (ext == 1 and kv >= n)]
        predicted = PRIOR.predict_ms(batch_work(decode + prefill))
        over_by_floor = len(prefill) >= 1 and prefill[-1][1] <= floor
        assert predicted <= BUDGET_MS + 1e-9 or over_by_floor, (rows, predicted, BUDGET_MS)
    assert limited >= SHORT_OUT


@pytest.mark.parametrize("late_len", [SHORT, 150])
def test_short_prompt_goes_in_before_the_next_long_chunk(engines, late_len):
    """A short request arriving while a long prompt is being chunked and others decode is admitted in the
    next step (whole, when it fits the step's share), not after the long prompt's remaining chunks; one
    that does not fit (150 tokens, ~3 steps' budget) continues before the long prompt's chunks."""
    on, _ = engines
    rng = random.Random(late_len)
    long_ids = [rng.randrange(100, 30000) for _ in range(LONG)]
    first = [[rng.randrange(100, 30000) for _ in range(SHORT)] for _ in range(2)]
    late = [rng.randrange(100, 30000) for _ in range(late_len)]
    sched = on.scheduler
    log: list[list[tuple]] = []
    inner = sched._schedule
    submitted: list[int] = []
    sending = threading.Event()

    def logged():
        rows = inner()
        log.append([(len(r.req.prompt_ids), r.extend_len, r.req.kv.kv_len, r.req.prompt_ids[:1]) for r in rows])
        # once the long prompt is chunking beside decoding requests, the late request arrives
        if not submitted and any(n == LONG and kv > 0 for n, _, kv, _ in log[-1]) and any(
                n == SHORT and kv >= SHORT for n, _, kv, _ in log[-1]):
            submitted.append(len(log))
            # NOTE: the loop takes requests in between steps: hold this step until the late request is on
            # its way, so that a loaded machine cannot let the long prompt finish first
            sending.wait(10)
            time.sleep(0.2)
        return rows

    on.loop.call(lambda s: setattr(s, "_schedule", logged))
    try:
        params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
        result: list = []
        t = threading.Thread(target=lambda: result.append(on.generate(input_ids=[long_ids] + first,
                                                                       sampling_params=params)))
        t.start()
        while not submitted and t.is_alive():
            t.join(0.01)
        assert submitted, "the long prompt never chunked beside decoding requests"
        sending.set()
        late_out = on.generate(input_ids=[late], sampling_params=SamplingParams(max_new_tokens=2, temperature=0,
                                                                                ignore_eos=True))
        t.join()
    finally:
        on.loop.call(lambda s: s.__dict__.pop("_schedule"))
    admitted = next(i for i, rows in enumerate(log) for n, ext, kv, head in rows if head == late[:1] and kv == 0)
    if late_len == SHORT:
        assert [r for r in log[admitted] if r[3] == late[:1]][0][1] == SHORT  # its whole prefill in one step
    late_done = next(i for i, rows in enumerate(log) for n, ext, kv, head in rows
                     if head == late[:1] and kv + ext == late_len)
    # taken in between steps submitted[0] - 1 and submitted[0] (log indices), admitted in the next step or
    # the one after (the loop may have started a step before it drained its inbox)
    assert admitted <= submitted[0] + 1, (admitted, submitted)
    long_done = next(i for i, rows in enumerate(log) for n, ext, kv, _ in rows if n == LONG and kv + ext == LONG)
    assert admitted <= late_done < long_done  # not behind the long prompt's remaining chunks
    assert any(n == SHORT and kv >= SHORT for n, _, kv, _ in log[admitted])  # beside decoding requests
    assert len(late_out[0].token_ids) == 2
    on.check_integrity()


def test_a_lone_long_prompt_prefills_in_full_chunks(engines):
    on, _ = engines
    _, log = _run(on, [_prompts(3)[0]])
    chunks = [ext for rows in log for n, ext, kv, _ in rows if kv < n]
    assert chunks == [CHUNK] * (LONG // CHUNK) + [LONG % CHUNK]


def test_slots_return_after_budgeted_runs(engines):
    on, _ = engines
    _run(on, _prompts(4))
    s = on.stats()
    assert not s["running"] and not s["waiting"]
    on.check_integrity()  # free + tree + private == capacity
    assert on.flush_cache()
    kv = on.kv
    assert kv.allocator.num_free_slots == kv.allocator.capacity


def test_retraction_under_the_budget_keeps_outputs():
    """A pool too small for every request at once: requests are retracted and re-admitted, and the
    tokens are those of a roomy engine without the budget. The short requests alone outgrow the pool
    (24 x (24 + 120) tokens > LONG + 400) while admission reserves only part of their output, so
    retraction happens in every admission order, whatever the timing of the submissions."""
    rng = random.Random(5)
    prompts = [[rng.randrange(100, 30000) for _ in range(n)] for n in [LONG] + [SHORT] * 24]
    params = [SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)] + \
        [SamplingParams(max_new_tokens=120, temperature=0, ignore_eos=True)] * 24
    small = _engine(BUDGET_MS, max_total_tokens=LONG + 400)
    roomy = _engine(None)
    try:
        a = [o.token_ids for o in small.generate(input_ids=prompts, sampling_params=params)]
        b = [o.token_ids for o in roomy.generate(input_ids=prompts, sampling_params=params)]
        assert small.scheduler.retractions > 0
        assert a == b
        small.check_integrity()
    finally:
        small.shutdown()
        roomy.shutdown()


def test_online_cost_model_learns_from_the_engine_steps():
    e = Engine(MODEL, device="cpu", dtype="float32", max_total_tokens=4096, max_step_ms=1000.0)
    try:
        e.generate(input_ids=_prompts(7)[1:], sampling_params=SamplingParams(max_new_tokens=6, ignore_eos=True))
        assert e.scheduler.step_cost.observations >= 5
    finally:
        e.shutdown()


def test_config_and_flag():
    with pytest.raises(ValueError, match="max_step_ms"):
        EngineConfig(max_step_ms=0)
    with pytest.raises(ValueError, match="max_step_ms"):
        EngineConfig(max_step_ms=float("inf"))
    assert dataclasses.replace(EngineConfig(), max_step_ms=50.0).max_step_ms == 50.0
    args = build_parser().parse_args(["serve", "--max-step-ms", "120", "--no-step-cost-online"])
    assert args.max_step_ms == 120.0 and args.step_cost_online is False
