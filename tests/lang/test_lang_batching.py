"""What makes a batch of lang programs batch in the engine: requests that continue different cached
prefixes with the same tokens (the "Way 1:" of every program's first fork branch) are admitted in
one step, while true duplicates still wait for each other's prefill; a non-streaming call wakes its
event loop once, not once per token; and the benchmark's step trace counts what the scheduler ran."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from radixserve import Engine, SamplingParams
from radixserve.bench.step_trace import StepTrace

PREFIX_LEN = 40


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine():
    e = Engine("dummy:tiny-llama", device="cpu", max_total_tokens=8192, check_integrity=True)
    yield e
    e.shutdown()


def _submit_together(engine: Engine, prompts: list[list[int]], params: SamplingParams):
    """Submit every prompt while the loop is held, so one scheduler step sees them all; returns
    (outputs, model steps the scheduler launched for them)."""
    gate = threading.Event()
    engine.loop.submit(lambda s: gate.wait(30))
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("out", engine.generate(input_ids=prompts,
                                                                                 sampling_params=params)))
    t.start()
    deadline = time.monotonic() + 30
    while engine.loop._inbox.qsize() < len(prompts) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.loop._inbox.qsize() >= len(prompts), "the requests did not reach the engine's inbox"
    steps0 = engine.scheduler.step_count  # NOTE: the loop is held in gate.wait: nothing steps meanwhile
    gate.set()
    t.join(60)
    return result["out"], engine.scheduler.step_count - steps0


def _cache(engine: Engine, *prefixes: list[int]) -> None:
    engine.flush_cache()
    engine.generate(input_ids=list(prefixes), sampling_params=greedy(1))  # the prefixes are now in the tree


def test_same_tokens_after_different_prefixes_are_admitted_in_one_step(engine):
    a = [100 + i for i in range(PREFIX_LEN)]
    b = [300 + i for i in range(PREFIX_LEN)]  # same length, other tokens
    tail = [7, 8, 9, 10, 11]
    _cache(engine, a)
    (alone,), alone_steps = _submit_together(engine, [a + tail], greedy(1))
    _cache(engine, a, b)
    outs, steps = _submit_together(engine, [a + tail, b + tail], greedy(1))
    assert [o.cached_tokens for o in outs] == [PREFIX_LEN, PREFIX_LEN]
    # no step more than one request alone (the second used to wait a step for a "duplicate" it
    # shares nothing with)
    assert steps == alone_steps
    assert outs[0].token_ids == alone.token_ids
    engine.flush_cache()
    assert engine.generate(input_ids=[b + tail], sampling_params=greedy(1))[0].token_ids == outs[1].token_ids


def test_true_duplicates_still_wait_and_then_hit_the_cache(engine):
    a = [500 + i for i in range(PREFIX_LEN)]
    tail = [21, 22, 23, 24, 25, 26]
    _cache(engine, a)
    _, alone_steps = _submit_together(engine, [a + tail + [1]], greedy(1))
    _cache(engine, a)
    outs, steps = _submit_together(engine, [a + tail + [1], a + tail + [2]], greedy(1))
    # one computed the shared tail, the other waited a step and found it cached
    assert sorted(o.cached_tokens for o in outs) == [PREFIX_LEN, PREFIX_LEN + len(tail)]
    assert steps == alone_steps + 1


def test_agenerate_wakes_its_event_loop_once_per_request(engine):
    prompt = [40 + i for i in range(12)]
    wakeups = []

    async def go():
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(cb, *args, **kw):
            if threading.current_thread() is not threading.main_thread():
                wakeups.append(cb)
            return real(cb, *args, **kw)

        loop.call_soon_threadsafe = counting
        try:
            return await engine.agenerate(prompt, greedy(20))
        finally:
            del loop.call_soon_threadsafe

    (out,) = asyncio.run(go())
    assert len(out.token_ids) == 20
    assert len(wakeups) == 1  # the finished event only (was one per decode step)
    assert out.token_ids == engine.generate(input_ids=[prompt], sampling_params=greedy(20))[0].token_ids


def test_step_trace_counts_the_scheduler_steps_and_restores_it(engine):
    engine.flush_cache()
    sched = engine.scheduler
    steps0 = sched.step_count
    with StepTrace(engine) as trace:
        t0 = time.perf_counter()
        _, steps = _submit_together(engine, [[60 + i for i in range(16)], [90 + i for i in range(16)]], greedy(6))
        t1 = time.perf_counter()
    s = trace.summary(t0, t1)
    assert s["model_steps"] == sched.step_count - steps0 == steps
    first = next(r for r in trace.records if r.rows)
    assert (first.rows, first.tokens, first.decode) == (2, 32, False)  # both prompts in one prefill step
    assert s["decode_steps"] >= 5 and s["mean_decode_batch"] == 2.0
    assert 0 <= s["scheduler_busy_s"] <= t1 - t0 and s["scheduler_idle_s"] >= 0
    assert "step" not in vars(sched)  # the class's step again
    n = len(trace.records)
    engine.generate(input_ids=[[5, 6, 7]], sampling_params=greedy(2))
    assert len(trace.records) == n  # no longer recording


# ---- the backend's encode cache -------------------------------------------------------------------
def test_backend_encode_is_the_tokenizers_and_tokenises_each_text_once(engine):
    import radixserve.lang as sgl

    backend = sgl.LocalBackend(engine)
    try:
        texts = ["Way 1:", "\nIs this way right?", " yes", " no", "Question: Ana has 3 apples.\n" * 40, "é🙂"]
        for _ in range(3):
            for t in texts:
                ids = backend.encode(t)
                assert ids == list(engine.tokenizer.encode(t, add_special_tokens=False))
                ids.append(-1)  # a caller's list is its own
        assert backend.encode("") == []
        assert (backend.encode_cache.misses, backend.encode_cache.hits) == (len(texts), 2 * len(texts))
    finally:
        backend.shutdown()


def test_encode_cache_concurrent_misses_encode_once_and_errors_are_not_kept():
    from radixserve.lang.encode_cache import EncodeCache

    calls = []

    def slow(text):
        calls.append(text)
        time.sleep(0.05)
        if text == "bad":
            raise ValueError("cannot encode")
        return [ord(c) for c in text]

    cache = EncodeCache(slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache("abc"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[97, 98, 99]] * 16 and calls == ["abc"]
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot encode"):
            cache("bad")
    assert calls.count("bad") == 2 and len(cache) == 1


def test_encode_cache_is_bounded_least_recently_used_first():
    from radixserve.lang.encode_cache import EncodeCache

    calls = []
    cache = EncodeCache(lambda t: calls.append(t) or [len(t)], max_entries=2, max_chars=10)
    cache("a"), cache("b"), cache("a"), cache("c")  # "b" is the least recently used
    assert len(cache) == 2
    cache("a"), cache("b")
    assert calls == ["a", "b", "c", "b"]
    cache("0123456789")  # 10 chars: everything else goes
    assert len(cache) == 1
    cache("01234567890")  # longer than max_chars: never kept
    cache("01234567890")
    assert calls[-2:] == ["01234567890", "01234567890"]
    with pytest.raises(ValueError):
        EncodeCache(lambda t: [], max_entries=0)
