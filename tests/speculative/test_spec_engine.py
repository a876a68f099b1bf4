"""Speculative decoding in the engine: greedy output token for token that of speculation off, with
each proposer, over batch sizes, max_tokens, stops, n > 1, streaming and retraction; drafts are
accepted where the text repeats; no slot leaks."""
from __future__ import annotations

import asyncio
import random

import pytest

from radixserve import Engine, SamplingParams

MODEL = "dummy:tiny-llama"
METHODS = ("ngram", "radix")


def _engine(spec: str | None, **kw) -> Engine:
    opts = dict(device="cpu", dtype="float32", max_total_tokens=8192, check_integrity=True)
    if spec is not None:
        opts["speculative_config"] = {"method": spec, "num_speculative_tokens": 4}
    return Engine(MODEL, **{**opts, **kw})


@pytest.fixture(scope="module")
def engines():
    es = {m: _engine(m) for m in (None,) + METHODS}
    yield es
    for e in es.values():
        e.shutdown()


def _prompts(seed: int, count: int) -> list[list[int]]:
    """Half repeat a phrase (drafts get accepted), half are random (drafts mostly fail)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % 2 == 0:
            phrase = [rng.randrange(100, 3000) for _ in range(rng.randrange(3, 9))]
            out.append(phrase * rng.randrange(3, 6))
        else:
            out.append([rng.randrange(100, 3000) for _ in range(rng.randrange(5, 60))])
    return out


def _run(engine: Engine, prompts, params):
    return [(o.token_ids, o.finish_reason) for o in engine.generate(input_ids=prompts, sampling_params=params)]


@pytest.mark.parametrize("batch,max_tokens", [(1, 40), (3, 1), (3, 2), (3, 3), (8, 17), (8, 64)])
def test_greedy_output_equals_speculation_off(engines, batch, max_tokens):
    prompts = _prompts(batch * 100 + max_tokens, batch)
    params = SamplingParams(max_new_tokens=max_tokens, temperature=0, ignore_eos=True)
    want = _run(engines[None], prompts, params)
    for m in METHODS:
        assert _run(engines[m], prompts, params) == want, m


def test_drafts_are_accepted_and_slots_come_back(engines):
    prompts = _prompts(7, 6)
    params = SamplingParams(max_new_tokens=48, temperature=0, ignore_eos=True)
    want = _run(engines[None], prompts, params)
    for m in METHODS:
        e = engines[m]
        before = e.stats()
        assert _run(e, prompts, params) == want
        after = e.stats()
        assert after["spec_accepted_tokens"] > before["spec_accepted_tokens"], m
        assert after["spec_draft_tokens"] >= after["spec_accepted_tokens"]
        e.check_integrity()
        assert e.flush_cache()
        assert e.stats()["kv_used_tokens"] == 0, m


def test_radix_drafts_a_regenerated_answer_from_the_tree(engines):
    """The same prompt again: the tree holds the first answer, and the radix proposer drafts all of it."""
    prompt = [random.Random(3).randrange(100, 3000) for _ in range(40)]
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    e = engines["radix"]
    first = _run(e, [prompt], params)
    s0 = e.stats()
    assert _run(e, [prompt], params) == first == _run(engines[None], [prompt], params)
    s1 = e.stats()
    drafted = s1["spec_draft_tokens"] - s0["spec_draft_tokens"]
    accepted = s1["spec_accepted_tokens"] - s0["spec_accepted_tokens"]
    assert drafted > 0 and accepted == drafted  # every drafted token was the model's own
    # with drafts of up to 4 tokens, the 40 tokens took far fewer steps than 40
    assert accepted >= 40 // 2


def test_stops_inside_a_draft(engines):
    prompts = _prompts(11, 4)
    free = _run(engines[None], prompts, SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))
    stop_ids = sorted({ids[12] for ids, _ in free})  # tokens each output reaches mid-way
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=stop_ids, ignore_eos=True)
    want = _run(engines[None], prompts, params)
    assert all(reason == "stop" for _, reason in want)
    for m in METHODS:
        assert _run(engines[m], prompts, params) == want


def test_n_samples_and_mixed_sampled_requests(engines):
    prompts = _prompts(13, 3)
    greedy = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True, n=2)
    sampled = SamplingParams(max_new_tokens=24, temperature=0.8, seed=5, ignore_eos=True, presence_penalty=0.5)
    params = [greedy, sampled, greedy]
    want = _run(engines[None], prompts, params)
    for m in METHODS:
        assert _run(engines[m], prompts, params) == want  # a penalised request decodes one token per step, unchanged


def test_streaming_delivers_every_token_once(engines):
    prompt = _prompts(17, 1)[0]
    params = SamplingParams(max_new_tokens=32, temperature=0, ignore_eos=True)
    want = engines[None].generate(input_ids=[prompt], sampling_params=params)[0].token_ids

    async def stream(e):
        out = []
        async for d in e.generate_stream(prompt, params):
            out += d.token_ids
        return out
    for m in METHODS:
        assert asyncio.run(stream(engines[m])) == want


@pytest.mark.parametrize("method", METHODS)
def test_retraction_with_speculation_keeps_outputs(engines, method):
    rng = random.Random(21)
    prompts = [[rng.randrange(100, 3000) for _ in range(4)] * 6 for _ in range(12)]
    params = SamplingParams(max_new_tokens=60, temperature=0, ignore_eos=True)
    want = _run(engines[None], prompts, params)
    small = _engine(method, max_total_tokens=640)
    try:
        assert _run(small, prompts, params) == want
        assert small.scheduler.retractions > 0
        small.check_integrity()
        assert small.flush_cache() and small.stats()["kv_used_tokens"] == 0
    finally:
        small.shutdown()


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.0, 0.9), (1.3, 1.0)])
def test_seeded_sampling_equals_speculation_off(engines, temperature, top_p):
    """Each draft position is drawn as the plain decode step would be (same distribution, same
    seeded noise): the output is token for token that of speculation off, for every seed."""
    prompts = _prompts(23, 4)
    params = [SamplingParams(max_new_tokens=40, temperature=temperature, top_p=top_p, seed=s, ignore_eos=True)
              for s in range(4)]
    want = _run(engines[None], prompts, params)
    for m in METHODS:
        before = engines[m].stats()["spec_accepted_tokens"]
        assert _run(engines[m], prompts, params) == want, m
        assert _run(engines[m], prompts, params) == want, m  # radix: drafts the first run's samples from the tree
    assert engines["radix"].stats()["spec_accepted_tokens"] > before  # sampled requests did draft, and kept


def test_large_batches_switch_drafting_off_and_back_on(engines):
    """Above max_batch running requests no request drafts (and the overlapped schedule stays on); as
    requests finish, the rest draft again. Outputs never change."""
    prompts = _prompts(29, 6)
    # prompt 2's output falls into a loop (drafts hit); it runs longest, alone at the end
    params = [SamplingParams(max_new_tokens=60 if i == 2 else 8 + 2 * i, temperature=0, ignore_eos=True) for i in range(6)]
    want = _run(engines[None], prompts, params)
    e = Engine(MODEL, device="cpu", dtype="float32", max_total_tokens=8192, check_integrity=True,
               speculative_config={"method": "ngram", "num_speculative_tokens": 4, "max_batch": 2})
    try:
        assert _run(e, prompts, params) == want
        assert e.stats()["spec_accepted_tokens"] > 0  # the last request drafted
        e.check_integrity()
    finally:
        e.shutdown()
