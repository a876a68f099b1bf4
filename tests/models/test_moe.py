"""Mixture-of-experts models (Qwen3-MoE, Mixtral) vs transformers on the same random weights:
prefill logits, greedy generation through the Engine, the radix cache and batching."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import hf_greedy, make_engine
from model_fixtures import PagedRunner, Step, embedded_tokenizer, save_tiny_hf_model, tiny_hf_model
from radixserve import SamplingParams
from radixserve.models.loader import load_model
from radixserve.models.moe import SparseMoE, route

KINDS = ["qwen3-moe", "mixtral", "qwen2-moe"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root, tok = tmp_path_factory.mktemp("tiny_moe"), embedded_tokenizer()
    return {kind: save_tiny_hf_model(kind, str(root / kind), tok) for kind in KINDS}


@pytest.fixture(scope="module")
def hf_models():
    return {kind: tiny_hf_model(kind) for kind in KINDS}


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _prefill_logits(model, tokens: list[int]) -> torch.Tensor:
    runner = PagedRunner(model)
    runner.seqs[0] = tokens
    return runner.step([Step(0, 0, len(tokens))])


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_logits_match_transformers(kind, hf_dirs, hf_models):
    model = load_model(hf_dirs[kind], "float32", "cpu", with_tokenizer=False).model
    assert any(isinstance(m, SparseMoE) for m in model.modules())
    for n, seed in ((1, 0), (23, 1)):
        tokens = _tokens(n, seed)
        with torch.no_grad():
            ref = hf_models[kind](torch.tensor([tokens])).logits[0].float()
        torch.testing.assert_close(_prefill_logits(model, tokens), ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_a_single_token_leaves_experts_empty(kind, hf_dirs, hf_models):
    """One token goes to top-2 of 8 experts: six run on no tokens, and the logits still match."""
    model = load_model(hf_dirs[kind], "float32", "cpu", with_tokenizer=False).model
    moe = next(m for m in model.modules() if isinstance(m, SparseMoE))
    x = torch.randn(1, moe.hidden, generator=torch.Generator().manual_seed(3))
    _, ids = route(moe.gate(x), moe.top_k, moe.renormalize)
    assert len(set(ids.flatten().tolist())) == 2 < moe.num_experts
    tokens = _tokens(1, 7)
    with torch.no_grad():
        ref = hf_models[kind](torch.tensor([tokens])).logits[0].float()
    torch.testing.assert_close(_prefill_logits(model, tokens), ref, atol=2e-4, rtol=2e-4)


def test_route_renormalises_only_when_asked():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    w, ids = route(logits, 2, renormalize=False)
    probs = torch.softmax(logits, -1)
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(w, probs[:, :2])
    w, _ = route(logits, 2, renormalize=True)
    torch.testing.assert_close(w, probs[:, :2] / probs[:, :2].sum())


@pytest.fixture(scope="module", params=KINDS)
def served(request, hf_dirs, hf_models):
    engine = make_engine(model=hf_dirs[request.param], page_size=4)
    yield request.param, engine, hf_models[request.param]
    engine.shutdown()


def test_greedy_matches_transformers_generate(served):
    kind, engine, hf = served
    prompts = [_tokens(n, 10 + n) for n in (3, 17, 40)]
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
    for ids, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(hf, ids, GREEDY.max_new_tokens, set()), kind
    engine.check_integrity()


def test_radix_cache_changes_nothing(served):
    """The same prompt twice (second from the cache), and two prompts sharing a prefix."""
    _, engine, hf = served
    prefix = _tokens(24, 50)
    first = engine.generate(input_ids=[prefix], sampling_params=GREEDY)[0]
    again = engine.generate(input_ids=[prefix], sampling_params=GREEDY)[0]
    assert again.cached_tokens > 0 and again.token_ids == first.token_ids
    other = prefix + _tokens(5, 51)
    shared = engine.generate(input_ids=[other], sampling_params=GREEDY)[0]
    assert shared.cached_tokens >= 20
    assert shared.token_ids == hf_greedy(hf, other, GREEDY.max_new_tokens, set())
    engine.check_integrity()


def test_batch_equals_one_at_a_time(served):
    _, engine, _ = served
    prompts = [_tokens(n, 70 + n) for n in (2, 9, 31, 14, 5)]
    alone = [engine.generate(input_ids=[p], sampling_params=GREEDY)[0].token_ids for p in prompts]
    together = [o.token_ids for o in engine.generate(input_ids=prompts, sampling_params=GREEDY)]
    assert together == alone


def test_dummy_moe_configs_build():
    for name in ("tiny-qwen3-moe", "tiny-mixtral"):
        model = load_model(f"dummy:{name}", "float32", "cpu", with_tokenizer=False).model
        assert isinstance(model.layers[0].mlp, SparseMoE)
        assert _prefill_logits(model, _tokens(5, 9)).shape == (5, 49152)


def test_chunked_prefill_matches_transformers(hf_dirs, hf_models):
    """A prompt prefilled in chunks of 8 tokens (each chunk its own routing) gives transformers' tokens."""
    engine = make_engine(model=hf_dirs["mixtral"], page_size=4, chunked_prefill_size=8, max_prefill_tokens=8)
    try:
        prompt = _tokens(37, 90)
        out = engine.generate(input_ids=[prompt], sampling_params=GREEDY)[0]
        assert out.token_ids == hf_greedy(hf_models["mixtral"], prompt, GREEDY.max_new_tokens, set())
        engine.check_integrity()
    finally:
        engine.shutdown()


def test_moe_gguf_is_refused_with_what_works(tmp_path):
    """llama.cpp writes Mixtral as architecture "llama" plus an expert count: refused by name, not mis-loaded."""
    import gguf

    from radixserve.models.gguf_file import gguf_config, open_gguf

    path = str(tmp_path / "mixtral.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.expert_count", 8)
    writer.add_uint32("llama.expert_used_count", 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="mixture-of-experts GGUF files .8 experts. are not supported yet"):
        gguf_config(open_gguf(path), path)
