"""Quantized checkpoints (GPTQ v1, AWQ GEMM, compressed-tensors pack-quantized and FP8) written by
the test in each format's on-disk convention: radixserve's greedy output equals transformers'
float32 forward on the dequantised weights, and stays the same when the prompt is cached."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import hf_greedy, make_engine
from model_fixtures import embedded_tokenizer
from quant_fixtures import write_fp8_checkpoint, write_int4_checkpoint
from radixserve import SamplingParams

CASES = {  # name: (format, group, sym, act_order)
    "gptq-g32-asym": ("gptq", 32, False, False),
    "gptq-g64-sym-actorder": ("gptq", 64, True, True),
    "gptq-g128-asym-actorder": ("gptq", 128, False, True),
    "awq-g32": ("awq", 32, False, False),
    "awq-g128": ("awq", 128, False, False),
    "ct-w4a16-g32-sym": ("compressed-tensors", 32, True, False),
    "ct-w4a16-g64-asym-actorder": ("compressed-tensors", 64, False, True),
}


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (5, 17, 33)]


def _check_greedy(model_dir: str, oracle, expect_method: str) -> None:
    engine = make_engine(model=model_dir, cuda_graph=False)
    try:
        layer = engine.runner.model.layers[0]
        assert layer.self_attn.qkv_proj.method.name == layer.mlp.down_proj.method.name == expect_method
        prompts = _prompts()
        params = SamplingParams(max_new_tokens=12, temperature=0)
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(oracle, ids, 12, engine.eos_ids), f"prompt of {len(ids)} tokens"
        again = engine.generate(input_ids=prompts, sampling_params=params)  # prompts now cached in the tree
        assert [o.token_ids for o in again] == [o.token_ids for o in outs]
        engine.check_integrity()
    finally:
        engine.shutdown()


@pytest.mark.parametrize("case", sorted(CASES))
def test_int4_checkpoint_greedy_matches_transformers(case, tmp_path, tokenizer):
    fmt, group, sym, act_order = CASES[case]
    oracle = write_int4_checkpoint(fmt, str(tmp_path), tokenizer, group=group, sym=sym, act_order=act_order)
    _check_greedy(str(tmp_path), oracle, "int4")


def test_fp8_checkpoint_greedy_matches_transformers(tmp_path, tokenizer):
    oracle = write_fp8_checkpoint(str(tmp_path), tokenizer)
    _check_greedy(str(tmp_path), oracle, "fp8")
