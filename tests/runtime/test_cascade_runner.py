"""Cascade decode through the ModelRunner: greedy tokens with prefix groups on and off, and with the
torch reference backend, must be identical (float32); on a GPU the decode steps replay CUDA graphs.

On CPU the Triton kernels run in the interpreter, so the model is tiny; the gpu-marked test runs
a real shape (SmolLM2-135M, random weights) with CUDA graphs.
"""
from __future__ import annotations

import pytest
import torch

from cascade_fixtures import greedy_shared_prefix
from radixserve.config import EngineConfig
from radixserve.runtime.model_runner import ModelRunner

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_runner(model: str, **options) -> ModelRunner:
    from model_fixtures import tokenizer_path
    options.setdefault("max_total_tokens", 2048)
    options.setdefault("max_running_requests", 8)
    return ModelRunner(EngineConfig(model=model, tokenizer=tokenizer_path(), device=DEVICE, dtype="float32",
                                    **options))


def check_cascade_greedy(model: str, prefix_len: int, suffix_lens: list[int], steps: int) -> None:
    cascade = make_runner(model, attention_backend="triton")
    plain = make_runner(model, attention_backend="triton")
    plain.attn.cascade = False
    if plain.graphs is not None:
        plain.graphs.attn.cascade = False
    ref = make_runner(model, attention_backend="torch-ref", cuda_graph=False)
    tok_c, logits_c = greedy_shared_prefix(cascade, prefix_len, suffix_lens, steps, groups=True)
    tok_p, logits_p = greedy_shared_prefix(plain, prefix_len, suffix_lens, steps, groups=True)
    tok_r, logits_r = greedy_shared_prefix(ref, prefix_len, suffix_lens, steps, groups=False)
    assert tok_c == tok_p == tok_r
    for lc, lp, lr in zip(logits_c, logits_p, logits_r):
        torch.testing.assert_close(lc, lr, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(lp, lr, atol=2e-4, rtol=1e-4)


def test_cascade_greedy_identical_tiny_model():
    check_cascade_greedy("dummy:tiny-llama", prefix_len=21, suffix_lens=[3, 7, 1, 5], steps=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cascade_greedy_identical_with_graphs_gpu():
    # 5 rows replay the bucket of 8 (three padding rows); four share a 300-token prefix.
    check_cascade_greedy("dummy:smollm2-135m", prefix_len=300, suffix_lens=[9, 40, 1, 17, 30], steps=12)
