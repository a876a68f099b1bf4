"""/v1/completions as evaluation harnesses and SDKs use it (echo, prompt logprobs, best_of, suffix),
logit_bias on every route, and the policy for OpenAI fields the server ignores or refuses.

Oracles: the engine's own prompt logprobs and samples (same weights, same seeds), the unbiased
distribution's top alternatives for logit_bias, and the documented field lists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from radixserve import SamplingParams
from radixserve.server.openai import field_policy
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    assert_no_leak, client, engine, greedy, http, local_engine, server)

README = Path(__file__).resolve().parents[2] / "README.md"
PROMPT = "The capital of France is"


def engine_prompt_logprobs(engine, ids, k=0):
    out = engine.generate(input_ids=ids, sampling_params=SamplingParams(
        max_new_tokens=0, prompt_logprobs_start=1, prompt_top_logprobs=k))[0]
    return out.prompt_logprobs


# ---- echo and prompt logprobs ---------------------------------------------------------------------

@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_prompt_logprobs_match_engine(http, engine, max_tokens):
    ids = engine.tokenizer.encode(PROMPT)
    body = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": max_tokens, "echo": True,
                                               "logprobs": 2, "temperature": 0}).json()
    choice = body["choices"][0]
    ref = engine_prompt_logprobs(engine, ids, k=2)
    gen = engine.generate(input_ids=ids, sampling_params=greedy(max_tokens, logprobs=2))[0]
    lp = choice["logprobs"]
    assert choice["text"] == PROMPT + gen.text
    n = len(ids) + max_tokens
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert lp["tokens"] == [engine.tokenizer.decode([t]) for t in ids + gen.token_ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing precedes the first token
    for got, want in zip(lp["token_logprobs"][1:len(ids)], ref):
        assert got == pytest.approx(want.logprob, abs=1e-4)
    for got, want in zip(lp["top_logprobs"][1:len(ids)], ref):
        assert len(got) == 2
        assert list(got.values()) == pytest.approx([v for _, v in want.top], abs=1e-4)
    if max_tokens:
        assert lp["token_logprobs"][-1] == pytest.approx(gen.logprobs[0].logprob, abs=1e-4)
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n)]  # ASCII: plain sums
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == max_tokens


def test_echo_token_ids_and_multibyte_offsets(http, engine):
    text = "Café ☕ and 😀 emoji"
    ids = engine.tokenizer.encode(text)
    body = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    choice = body["choices"][0]
    assert choice["text"] == text  # token-id prompts echo their decoded text
    lp = choice["logprobs"]
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    split = 0
    for tok, off in zip(lp["tokens"], offsets):
        whole = tok.split("\ufffd")[0]  # the whole characters a token starts with sit at its offset
        assert text[off:off + len(whole)] == whole, (tok, off)
        if not whole:  # a token that starts inside a character points at that character
            split += 1
            assert ord(text[off]) > 127, (tok, off)
    assert split, "the emoji should be split over byte tokens for this test to mean anything"


def test_echo_without_logprobs_batch_and_n(client, engine):
    prompts = ["Roses are red,", "1, 2, 3,"]
    resp = client.completions.create(model="smollm2", prompt=prompts, max_tokens=4, temperature=0, echo=True, n=2)
    refs = engine.generate(prompts, greedy(4, n=2))
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert [c.text for c in resp.choices] == [prompts[i // 2] + refs[i].text for i in range(4)]
    assert all(c.logprobs is None for c in resp.choices)


def test_echo_stream_matches_non_stream(client):
    kw = dict(model="smollm2", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1)
    full = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].text == PROMPT  # the prompt comes first, in a chunk of its own
    assert "".join(c.choices[0].text for c in chunks) == full.text
    streamed = [x for c in chunks for x in c.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None
    assert streamed[1:] == pytest.approx(full.logprobs.token_logprobs[1:], abs=1e-5)
    assert [x for c in chunks for x in c.choices[0].logprobs.text_offset] == full.logprobs.text_offset


# ---- best_of and suffix ---------------------------------------------------------------------------

def test_best_of_returns_the_most_likely_samples(client, engine):
    prompt, seed = "My favourite animal is", 4321
    resp = client.completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=1.0, seed=seed,
                                      best_of=4, n=2, logprobs=1)
    cands = engine.generate(prompt, SamplingParams(max_new_tokens=6, temperature=1.0, seed=seed, n=4, logprobs=1))
    totals = [sum(lp.logprob for lp in c.logprobs) for c in cands]
    assert len(set(c.text for c in cands)) > 1, "the candidates should differ for this test to mean anything"
    order = sorted(range(4), key=lambda i: -totals[i])[:2]
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.text for c in resp.choices] == [cands[i].text for i in order]
    got = [sum(c.logprobs.token_logprobs) for c in resp.choices]
    assert got == pytest.approx([totals[i] for i in order], abs=1e-3)
    assert resp.usage.completion_tokens == sum(len(c.token_ids) for c in cands)  # every candidate was generated
    plain = client.completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=1.0, seed=seed,
                                      best_of=3)
    assert len(plain.choices) == 1 and plain.choices[0].logprobs is None  # ranked with logprobs, not shown


@pytest.mark.parametrize("body, param", [
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"best_of": 3, "stream": True}, "best_of"),
    ({"best_of": 10 ** 6}, "best_of"),
    ({"suffix": " and that is all."}, "suffix"),
])
def test_best_of_and_suffix_refused(http, body, param):
    resp = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and len(err["message"]) > 30


def test_empty_suffix_is_no_suffix(http, engine):
    body = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "suffix": ""}).json()
    assert body["choices"][0]["text"] == engine.generate(PROMPT, greedy(3))[0].text


# ---- logit_bias -----------------------------------------------------------------------------------

def test_logit_bias_bans_the_greedy_token_on_every_route(client, http, engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_ids = engine.apply_chat_template(messages)
    free = engine.generate(input_ids=chat_ids, sampling_params=greedy(1, logprobs=2))[0]
    best, runner_up = (t for t, _ in free.logprobs[0].top)
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=1, temperature=0,
                                          logprobs=True, logit_bias={str(best): -100})
    assert resp.choices[0].message.content == engine.tokenizer.decode([runner_up])
    # logprobs stay those of the model's own distribution (what OpenAI reports too)
    assert resp.choices[0].logprobs.content[0].logprob == pytest.approx(free.logprobs[0].top[1][1], abs=1e-4)

    ids = engine.tokenizer.encode(PROMPT)
    free = engine.generate(input_ids=ids, sampling_params=greedy(1, logprobs=2))[0]
    best, runner_up = (t for t, _ in free.logprobs[0].top)
    cmpl = client.completions.create(model="smollm2", prompt=ids, max_tokens=1, temperature=0,
                                     logit_bias={str(best): -100})
    assert cmpl.choices[0].text == engine.tokenizer.decode([runner_up])
    native = http.post("/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 1, "temperature": 0, "logit_bias": {str(best): -100}}}).json()
    assert native["output_ids"] == [runner_up]


def test_logit_bias_forces_a_token_while_sampling(http, engine):
    forced = engine.tokenizer.encode(" banana")[0]
    body = http.post("/generate", json={"text": "I like", "sampling_params": {
        "max_new_tokens": 5, "temperature": 1.0, "seed": 7, "ignore_eos": True, "logit_bias": {str(forced): 100}}})
    assert body.json()["output_ids"] == [forced] * 5
    # a small bias shifts the distribution without forcing: the same seed gives the engine's own answer
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11, logit_bias={forced: 3.0})
    ref = engine.generate("I like", sp)[0]
    got = http.post("/v1/completions", json={"prompt": "I like", "max_tokens": 6, "temperature": 1.0, "seed": 11,
                                             "logit_bias": {str(forced): 3.0}}).json()
    assert got["choices"][0]["text"] == ref.text


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"49152": 5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"10": 101}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"10": -100.5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"ten": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"1": "1"}}, "logit_bias.1"),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"99999999": 1}}}, "sampling_params.logit_bias"),
])
def test_logit_bias_bad_input(http, engine, path, body, param):
    resp = http.post(path, json={"max_tokens": 2, **body} if path != "/generate" else body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param, resp.text


def test_logit_bias_tensor_is_built_once_per_request(local_engine, monkeypatch):
    from radixserve.scheduler import results

    engine = local_engine  # patched inside the scheduler's module: in this process
    calls = []
    real = results.logit_bias_row
    monkeypatch.setattr(results, "logit_bias_row", lambda *a: calls.append(a[0]) or real(*a))
    outs = engine.generate(["Once", "Twice"], [SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True,
                                                              logit_bias={5: -1.0}),
                                               SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)])
    assert [len(o.token_ids) for o in outs] == [8, 8]
    assert calls == [{5: -1.0}]  # one request with a bias: one tensor, reused by all its 8 steps


# ---- the policy for OpenAI fields -----------------------------------------------------------------

IGNORED_VALUES = {"store": True, "metadata": {"team": "eval"}, "service_tier": "flex", "user": "u-42",
                  "safety_identifier": "hash-1", "prompt_cache_key": "k1", "prompt_cache_retention": "24h",
                  "prompt_cache_options": {"mode": "implicit"}, "prediction": {"type": "content", "content": ""},
                  "modalities": ["text"]}


def test_ignored_fields_are_accepted_and_change_nothing(http, engine):
    messages = [{"role": "user", "content": "Name a planet."}]
    ref = engine.chat(messages, greedy(6)).text
    body = {"messages": messages, "max_tokens": 6, "temperature": 0, **IGNORED_VALUES}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == ref
    resp = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "suffix": None,
                                              **{k: v for k, v in IGNORED_VALUES.items() if k != "modalities"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == engine.generate(PROMPT, greedy(3))[0].text


REFUSED_VALUES = {"prediction": {"type": "content", "content": "the answer"}, "audio": {"voice": "alloy", "format": "mp3"},
                  "modalities": ["text", "audio"], "web_search_options": {"search_context_size": "low"},
                  "reasoning_effort": "high", "verbosity": "low", "moderation": {"model": "omni"},
                  "functions": [{"name": "f", "parameters": {}}], "function_call": "auto"}


@pytest.mark.parametrize("field", sorted(REFUSED_VALUES))
def test_refused_fields_name_the_field(http, field):
    assert field in field_policy.REFUSED
    resp = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                   field: REFUSED_VALUES[field]})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == field and err["code"] == "unsupported_parameter"
    assert field in err["message"] and "not supported" in err["message"]


def test_readme_lists_the_field_policy():
    text = README.read_text()
    section = text[text.index("### Accepted and ignored"):]
    section = section[:section.index("\n## ")]
    for field in field_policy.IGNORED:
        assert f"`{field.split(' ')[0]}`" in section, field
    refused = text[text.index("### Refused"):]
    for field in list(field_policy.REFUSED) + list(field_policy.RESPONSES_REFUSED):
        assert re.search(rf"`{field}[`:]", refused), field


def test_nothing_leaked(engine, http):
    assert http.get("/health").status_code == 200
    assert_no_leak(engine)
