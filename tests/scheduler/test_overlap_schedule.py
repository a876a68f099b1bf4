"""Overlap scheduling (step N+1 launched before the host has seen step N's samples) changes no
output: greedy, seeded sampling, penalties (which force a synchronous step), stops, n > 1,
logprobs, retraction under memory pressure."""
from __future__ import annotations

import pytest

from engine_fixtures import make_engine
from radixserve import SamplingParams


def _workload(tok):
    prompts = [tok.encode(f"Story {i}: once upon a time" + " there was a river" * (i % 4)) for i in range(10)]
    params = [SamplingParams(max_new_tokens=12, temperature=0),
              SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5),
              SamplingParams(max_new_tokens=12, temperature=0.7, seed=9, repetition_penalty=1.3),
              SamplingParams(max_new_tokens=12, temperature=0, presence_penalty=0.5, frequency_penalty=0.3),
              SamplingParams(max_new_tokens=12, temperature=0, min_new_tokens=6, stop=[" the"]),
              SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, n=3),
              SamplingParams(max_new_tokens=12, temperature=0, logprobs=2),
              SamplingParams(max_new_tokens=0, prompt_logprobs_start=2),
              SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True),
              SamplingParams(max_new_tokens=1, temperature=0)]
    return prompts, params


def _run(**options):
    e = make_engine(**options)
    try:
        prompts, params = _workload(e.tokenizer)
        outs = e.generate(input_ids=prompts, sampling_params=params)
        e.check_integrity()
        stats = e.stats()
        assert stats["running"] == 0 and stats["kv_private_tokens"] == 0
        return [(o.token_ids, o.text, o.finish_reason, [x.logprob for x in o.logprobs or []],
                 [x.logprob for x in o.prompt_logprobs or []]) for o in outs], stats
    finally:
        e.shutdown()


def _assert_same(a, b):
    """Same tokens, text and stops; logprobs equal up to float32 reordering (batch composition,
    chunks and recomputation after retraction sum in another order)."""
    for (toks, text, reason, lps, plps), (toks2, text2, reason2, lps2, plps2) in zip(a, b, strict=True):
        assert (toks, text, reason) == (toks2, text2, reason2)
        assert lps == pytest.approx(lps2, abs=1e-3) and plps == pytest.approx(plps2, abs=1e-3)


def test_overlap_matches_synchronous_steps():
    sync, _ = _run(overlap_schedule=False)
    overlap, _ = _run(overlap_schedule=True)
    _assert_same(overlap, sync)


def test_overlap_under_memory_pressure_matches():
    sync, _ = _run(overlap_schedule=False)
    tight, stats = _run(overlap_schedule=True, max_total_tokens=160, max_prefill_tokens=64, chunked_prefill_size=32)
    assert stats["retractions"] > 0
    _assert_same(tight, sync)
