"""Greedy rows without penalties (ignore_eos and min_new_tokens included) skip the sampling
tensors: the argmax over their unblocked ids must be what the full sampler picks."""
from __future__ import annotations

import random

import pytest
import torch

from radixserve.sampling.sampler import greedy_argmax, sample
from radixserve.sampling.tensors import SamplingRow, build_sampling_tensors, greedy_blocked_ids
from radixserve.sampling_params import SamplingParams

V = 64
EOS = (2, 60)


def _rows(rng: random.Random, n: int) -> list[SamplingRow]:
    choices = [dict(), dict(ignore_eos=True), dict(min_new_tokens=3, max_new_tokens=9, stop_token_ids=[5, 99]),
               dict(ignore_eos=True, min_new_tokens=2, max_new_tokens=9, stop_token_ids=[7])]
    rows = []
    for _ in range(n):
        params = SamplingParams(temperature=0, **rng.choice(choices))
        out = [11] * rng.randrange(5)
        rows.append(SamplingRow(params, rng.randrange(100), len(out), [1, 2], out, EOS))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_full_sampler(seed):
    rng = random.Random(seed)
    rows = _rows(rng, 12) if seed % 2 else [_rows(rng, 1)[0]] * 12  # mixed blocks, then identical ones
    logits = torch.randn(12, V, generator=torch.Generator().manual_seed(seed))
    logits[:, EOS[0]] += 4.0  # EOS (and the stop ids) often win unless blocked
    logits[::3, 5] += 6.0
    logits[1::3, 7] += 6.0
    blocked = [greedy_blocked_ids(r, V) for r in rows]
    assert all(b is not None for b in blocked)
    want = sample(logits, build_sampling_tensors(rows, V)).token_ids
    got = greedy_argmax(logits.clone(), blocked)
    assert torch.equal(got, want)
    for r, tok in zip(rows, got.tolist()):
        if r.params.ignore_eos:
            assert tok not in EOS


def test_ignore_eos_blocks_only_eos_and_rows_with_penalties_take_the_full_path():
    ignore = SamplingRow(SamplingParams(temperature=0, ignore_eos=True), 0, 0, [1], [], EOS)
    assert greedy_blocked_ids(ignore, V) == [2, 60]
    assert greedy_blocked_ids(ignore, 50) == [2]  # ids past the vocabulary cannot be sampled anyway
    assert greedy_blocked_ids(SamplingRow(SamplingParams(temperature=0), 0, 0, [1], [], EOS), V) == []
    for params in (dict(temperature=0, repetition_penalty=1.2), dict(temperature=0, presence_penalty=0.5),
                   dict(temperature=0, frequency_penalty=0.1), dict(temperature=0, logprobs=0),
                   dict(temperature=0.7, ignore_eos=True), dict(temperature=0, logit_bias={3: 5.0})):
        assert greedy_blocked_ids(SamplingRow(SamplingParams(**params), 0, 0, [1], [3], EOS), V) is None
    masked = SamplingRow(SamplingParams(temperature=0), 0, 0, [1], [], EOS, torch.ones(V, dtype=torch.bool))
    assert greedy_blocked_ids(masked, V) is None
