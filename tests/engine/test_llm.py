"""The vLLM-shaped offline facade (radixserve/offline/): every result equals the same request
through Engine.generate token for token (greedy, or seeded), and chat prompts are transformers'
own chat-template rendering."""
from __future__ import annotations

import dataclasses

import pytest

from engine_fixtures import mixed_prompts
from radixserve import LLM, SamplingParams
from radixserve.errors import FieldError
from radixserve.offline.llm import VLLM_DEFAULT_MAX_TOKENS


@pytest.fixture(scope="module")
def llm():
    # NOTE: pinned as make_engine pins the engine tests (CPU, float32); the LLM's own Engine is the oracle.
    opts = dict(device="cpu", dtype="float32", max_total_tokens=16384, check_integrity=True, max_context_len=1024)
    with LLM(**opts) as model:
        yield model
    assert not model.engine.is_alive()


def _hf_chat_ids(tok, conv, **kwargs) -> list[int]:
    """transformers' own rendering and tokenisation of a conversation, with the generation prompt."""
    out = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kw)


def test_generate_prompt_forms_equal_engine(llm):
    tok = llm.get_tokenizer()
    texts = mixed_prompts()[:4]
    ids = [tok.encode(t) for t in texts]
    params = _greedy(12)
    want = llm.engine.generate(input_ids=ids, sampling_params=params)
    forms = [texts[0], ids[1], {"prompt": texts[2]}, {"prompt_token_ids": ids[3]}]
    outs = llm.generate(forms, params)
    assert len(outs) == 4 and len({o.request_id for o in outs}) == 4
    for out, w, prompt_ids in zip(outs, want, ids):
        assert out.prompt_token_ids == prompt_ids and out.finished
        (c,) = out.outputs
        assert (c.index, c.token_ids, c.text, c.finish_reason) == (0, w.token_ids, w.text, w.finish_reason)
        assert c.cumulative_logprob is None and c.logprobs is None
    assert [o.prompt for o in outs] == [texts[0], None, texts[2], None]
    # one prompt alone (a string, or one list of token ids) is a batch of one
    (single,) = llm.generate(texts[0], params)
    assert single.outputs[0].token_ids == want[0].token_ids
    (single,) = llm.generate(ids[1], params)
    assert single.outputs[0].token_ids == want[1].token_ids


def test_default_params_are_vllm_default_length(llm):
    assert VLLM_DEFAULT_MAX_TOKENS == 16  # vLLM's SamplingParams().max_tokens
    (out,) = llm.generate(["Once upon a time, in a small village by the sea,"])
    c = out.outputs[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 16 or c.finish_reason == "stop" and len(c.token_ids) < 16


def test_n_samples_with_seed_and_logprobs(llm):
    prompts = ["Write a short poem about the sea.", "List three colours:"]
    params = SamplingParams(max_tokens=10, n=3, temperature=1.0, seed=11, logprobs=2)
    want = llm.engine.generate(prompts, params)
    outs = llm.generate(prompts, params)
    assert [len(o.outputs) for o in outs] == [3, 3]
    got = [c for o in outs for c in o.outputs]
    assert [c.index for c in got] == [0, 1, 2, 0, 1, 2]
    assert [c.token_ids for c in got] == [w.token_ids for w in want]
    assert len({tuple(c.token_ids) for c in outs[0].outputs}) > 1  # different seeds per sample
    for c, w in zip(got, want):
        # NOTE: the second run reads the prompt from the tree (another kernel path than the first
        # run's prefill), so logprobs agree to float32 noise, not bit for bit; tokens are exact.
        assert c.cumulative_logprob == pytest.approx(sum(p.logprob for p in w.logprobs), abs=1e-4)
        assert len(c.logprobs) == len(c.token_ids)
        for pos, tok, lp in zip(c.logprobs, c.token_ids, w.logprobs):
            assert next(iter(pos)) == tok and pos[tok].logprob == pytest.approx(lp.logprob, abs=1e-4)
            assert set(pos) == {tok} | {t for t, _ in lp.top}
            for rank, (t, v) in enumerate(lp.top, start=1):
                assert pos[t].rank == rank and pos[t].logprob == pytest.approx(v, abs=1e-4)
                assert pos[t].decoded_token == llm.get_tokenizer().decode([t])


def test_chat_batch_equals_engine_on_templated_ids(llm):
    convs = [[{"role": "user", "content": "Name a river in Europe."}],
             [{"role": "system", "content": "You answer in one word."},
              {"role": "user", "content": "What colour is the sky?"}]]
    tok = llm.get_tokenizer()
    templated = [_hf_chat_ids(tok, c) for c in convs]
    params = _greedy(16)
    want = llm.engine.generate(input_ids=templated, sampling_params=params)
    outs = llm.chat(convs, params)
    assert [o.prompt_token_ids for o in outs] == templated
    assert [o.outputs[0].token_ids for o in outs] == [w.token_ids for w in want]
    assert [o.outputs[0].text for o in outs] == [w.text for w in want]
    assert outs[0].prompt == tok.decode(templated[0], skip_special_tokens=False)
    (one,) = llm.chat(convs[0], params)  # a single conversation
    assert one.outputs[0].token_ids == want[0].token_ids
    assert one.num_cached_tokens >= len(templated[0]) - 1  # the second time, the prompt comes from the tree


def test_chat_template_kwargs_reach_the_template(llm):
    conv = [{"role": "user", "content": "Hi"}]
    tok = llm.get_tokenizer()
    template = tok.chat_template
    try:  # a template that reads a variable, rendered by transformers itself as the oracle
        tok.chat_template = "{% if shout %}LOUD {% endif %}" + template
        want = _hf_chat_ids(tok, conv, shout=True)
        (out,) = llm.chat(conv, _greedy(1), chat_template_kwargs={"shout": True})
        (plain,) = llm.chat(conv, _greedy(1))
    finally:
        tok.chat_template = template
    assert out.prompt_token_ids == want and out.prompt.startswith("LOUD ")
    assert plain.prompt_token_ids != want
    with pytest.raises(ValueError, match="add_generation_prompt"):
        llm.chat(conv, _greedy(1), chat_template_kwargs={"add_generation_prompt": False})


def test_stop_reason_and_per_prompt_params(llm):
    prompt = "1, 2, 3, 4, 5,"
    free = llm.generate([prompt], _greedy(12))[0].outputs[0]
    stop_tok = free.token_ids[2]
    stop_str = llm.get_tokenizer().decode(free.token_ids[:3]).strip()[-1]
    outs = llm.generate([prompt, prompt], [_greedy(12, stop_token_ids=[stop_tok]), _greedy(12, stop=[stop_str])])
    by_tok, by_str = (o.outputs[0] for o in outs)
    assert by_tok.finish_reason == "stop" and by_tok.stop_reason == stop_tok and by_tok.token_ids[-1] == stop_tok
    assert by_str.finish_reason == "stop" and by_str.stop_reason == stop_str
    with pytest.raises(ValueError, match="2 sampling_params for 1 prompts"):
        llm.generate([prompt], [_greedy(1), _greedy(1)])


def test_max_tokens_alias():
    assert SamplingParams(max_tokens=7).max_new_tokens == 7
    assert SamplingParams(max_tokens=7, min_tokens=3).min_new_tokens == 3
    assert SamplingParams(max_tokens=7) == SamplingParams(max_new_tokens=7)
    assert SamplingParams(max_tokens=7, max_new_tokens=7).max_new_tokens == 7
    assert "max_tokens" not in {f.name for f in dataclasses.fields(SamplingParams)}  # never stored
    fitted = dataclasses.replace(SamplingParams(max_tokens=50), max_new_tokens=20)  # as prepare's clamp does
    assert fitted.max_new_tokens == 20
    for kw, field in [(dict(max_tokens=-1), "max_tokens"), (dict(max_tokens=1.5), "max_tokens"),
                      (dict(min_tokens=-2), "min_tokens"), (dict(max_tokens=5, min_tokens=9), "min_new_tokens"),
                      (dict(max_tokens=5, max_new_tokens=6), "max_tokens")]:
        with pytest.raises(FieldError) as err:
            SamplingParams(**kw)
        assert err.value.field == field, kw


@pytest.mark.parametrize("name,hint", [("best_of", "use n"), ("use_beam_search", "beam search"),
                                       ("prompt_logprobs", "prompt_logprobs_start"),
                                       ("include_stop_str_in_output", "matched_stop"),
                                       ("no_such_field", "fields it takes")])
def test_unknown_or_unsupported_field_is_named(name, hint):
    with pytest.raises(FieldError, match=hint) as err:
        SamplingParams(max_tokens=4, **{name: 1})
    assert err.value.field == name and name in str(err.value)


def test_bad_prompts_and_engine_options(llm):
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        llm.generate(["ok", 3.5], _greedy(1))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate([{"text": "x"}], _greedy(1))
    with pytest.raises(ValueError, match="multi_modal_data"):
        llm.generate([{"prompt": "x", "multi_modal_data": {}}], _greedy(1))
    with pytest.raises(ValueError, match="conversation"):
        llm.chat([], _greedy(1))
    with pytest.raises(ValueError, match="same setting"):
        LLM(max_model_len=512, max_context_len=512)
    with pytest.raises(ValueError, match="unknown Engine options"):
        LLM(no_such_option=1)
