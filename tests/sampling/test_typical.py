"""Locally typical sampling (typical_p) against transformers' TypicalLogitsWarper: the same kept set,
and draws only from it."""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TypicalLogitsWarper

from radixserve.sampling.sampler import filtered_logits, sample
from radixserve.sampling.tensors import SamplingRow, build_sampling_tensors
from radixserve.sampling_params import SamplingParams

V = 50


def _tensors(params, seeds=None):
    rows = [SamplingRow(p, (seeds or [0] * len(params))[i], 0, [1], [], (), None, None) for i, p in enumerate(params)]
    return build_sampling_tensors(rows, V, "cpu")


@pytest.mark.parametrize("mass", [0.05, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_kept_set_equals_transformers(mass, temperature):
    torch.manual_seed(int(mass * 100))
    logits = torch.randn(6, V) * 3
    t = _tensors([SamplingParams(temperature=temperature, typical_p=mass)] * 6)
    ours = torch.isfinite(filtered_logits(logits, t))
    theirs = torch.isfinite(TypicalLogitsWarper(mass=mass)(None, logits / temperature))
    assert torch.equal(ours, theirs)


def test_rows_without_typical_p_keep_everything_and_draws_stay_in_the_set():
    torch.manual_seed(0)
    logits = torch.randn(2, V) * 3
    params = [SamplingParams(temperature=1.0, typical_p=0.2), SamplingParams(temperature=1.0)]
    t = _tensors(params)
    kept = torch.isfinite(filtered_logits(logits, t))
    # the other row is filtered as in a batch where nobody asks for typical_p
    ref = torch.isfinite(filtered_logits(logits, _tensors([SamplingParams(temperature=1.0, min_p=1e-30), params[1]])))
    assert torch.equal(kept[1], ref[1]) and 0 < int(kept[0].sum()) < V
    for seed in range(200):
        tok = sample(logits[:1], _tensors(params[:1], [seed])).token_ids
        assert bool(kept[0, tok])


def test_typical_p_must_be_in_range():
    with pytest.raises(ValueError, match="typical_p"):
        SamplingParams(typical_p=0)
    with pytest.raises(ValueError, match="typical_p"):
        SamplingParams(typical_p=1.5)
