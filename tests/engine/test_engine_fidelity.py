"""The engine's greedy output equals transformers' on the same weights (CPU, float32)."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import hf_greedy, hf_smollm2, make_engine, mixed_prompts
from radixserve import SamplingParams


@pytest.fixture(scope="module")
def engine():
    e = make_engine()
    yield e
    e.shutdown()


def test_greedy_matches_transformers_batched(engine):
    prompts = mixed_prompts()
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=32, temperature=0))
    hf = hf_smollm2()
    for prompt, out in zip(prompts, outs):
        ids = engine.tokenizer.encode(prompt)
        expected = hf_greedy(hf, ids, 32, engine.eos_ids)
        assert out.token_ids == expected, f"prompt {prompt[:40]!r}"
        assert out.prompt_tokens == len(ids)
        assert out.finish_reason == ("stop" if expected[-1] in engine.eos_ids else "length")
        assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    engine.check_integrity()


def test_prompt_logprobs_match_transformers(engine):
    ids = engine.tokenizer.encode(mixed_prompts()[5])
    start = 7
    out = engine.generate(input_ids=[ids], sampling_params=SamplingParams(
        max_new_tokens=0, prompt_logprobs_start=start, prompt_top_logprobs=3))[0]
    with torch.no_grad():
        logits = hf_smollm2()(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits, dim=-1)
    assert out.token_ids == [] and out.finish_reason == "length"
    assert len(out.prompt_logprobs) == len(ids) - start
    for i, lp in enumerate(out.prompt_logprobs):
        pos = start + i
        assert lp.token_id == ids[pos]
        assert abs(lp.logprob - ref[pos - 1, ids[pos]].item()) < 1e-4
        top = torch.topk(ref[pos - 1], 3)
        assert [t for t, _ in lp.top] == top.indices.tolist()


def test_prompt_logprobs_are_recomputed_even_when_cached(engine):
    """A cached prefix must not hide the positions whose logprobs were asked for."""
    ids = engine.tokenizer.encode(mixed_prompts()[2])
    engine.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=1, temperature=0))
    params = SamplingParams(max_new_tokens=0, prompt_logprobs_start=1)
    first = engine.generate(input_ids=[ids], sampling_params=params)[0]
    second = engine.generate(input_ids=[ids], sampling_params=params)[0]
    assert len(first.prompt_logprobs) == len(ids) - 1
    assert [x.logprob for x in first.prompt_logprobs] == pytest.approx([x.logprob for x in second.prompt_logprobs],
                                                                      abs=1e-4)


def test_output_logprobs_are_raw_log_softmax(engine):
    ids = engine.tokenizer.encode("The capital of France is")
    out = engine.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=3, temperature=0,
                                                                          logprobs=2))[0]
    full = ids + out.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_smollm2()(torch.tensor([full])).logits[0].float(), dim=-1)
    assert len(out.logprobs) == 3
    for i, lp in enumerate(out.logprobs):
        row = ref[len(ids) - 1 + i]
        assert lp.token_id == out.token_ids[i] == int(row.argmax())
        assert abs(lp.logprob - row[lp.token_id].item()) < 1e-4
        assert [t for t, _ in lp.top] == torch.topk(row, 2).indices.tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "qwen3-tied"])
def test_tiny_hf_directories_greedy_match_transformers(kind, tmp_path):
    """Random-weight Llama / Qwen2 / Qwen3 saved as safetensors directories, served end to end."""
    from model_fixtures import embedded_tokenizer, save_tiny_hf_model, tiny_hf_model

    path = save_tiny_hf_model(kind, str(tmp_path / kind), embedded_tokenizer())
    hf = tiny_hf_model(kind)
    e = make_engine(model=path, page_size=4)
    try:
        prompts = [[5 + i * 7 % 900 for i in range(n)] for n in (3, 17, 40, 9)]
        outs = e.generate(input_ids=prompts, sampling_params=SamplingParams(max_new_tokens=16, temperature=0,
                                                                            ignore_eos=True))
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(hf, ids, 16, set()), kind
        e.check_integrity()
    finally:
        e.shutdown()
