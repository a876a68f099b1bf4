"""End-to-end tests of the HTTP server: a real uvicorn server on loopback around the embedded model,
driven by the official `openai` SDK and raw httpx. The oracle for every generated text is
`Engine.generate` / `Engine.chat` on the same engine with the same sampling parameters."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import orjson
import pytest

from radixserve import SamplingParams
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    API_KEY, LONG_SYSTEM, assert_no_leak, client, engine, greedy, http, metric, server, wait_idle)


# ---- OpenAI SDK: chat -----------------------------------------------------------------------------

def test_models_and_health(client, http, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    assert httpx.get(server.url + "/health").status_code == 200  # no API key needed
    assert client.models.retrieve("smollm2").id == "smollm2"


def test_chat_matches_engine(client, engine):
    messages = [{"role": "user", "content": "Name a colour of the sky."}]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=0)
    ref = engine.chat(messages, greedy(8))
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert resp.usage.prompt_tokens == len(engine.apply_chat_template(messages))
    assert resp.usage.completion_tokens == len(ref.token_ids)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_stream_with_usage(client, engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    ref = engine.chat(messages, greedy(8))
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == ref.text
    assert [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason] == [ref.finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(ref.token_ids)
    assert usage.prompt_tokens == len(engine.apply_chat_template(messages))
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_n2_seeded_reproducible(client, engine):
    messages = [{"role": "user", "content": "Write a word."}]
    kw = dict(model="smollm2", messages=messages, max_tokens=6, temperature=1.0, seed=1234, n=2)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    ref = engine.chat(messages, SamplingParams(max_new_tokens=6, temperature=1.0, seed=1234, n=2))
    assert [c.message.content for c in a.choices] == [r.text for r in ref]
    assert a.usage.completion_tokens == sum(len(r.token_ids) for r in ref)


def test_chat_logprobs(client, engine):
    messages = [{"role": "user", "content": "Count: one, two,"}]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=3)
    ref = engine.chat(messages, greedy(5, logprobs=3))
    content = resp.choices[0].logprobs.content
    assert len(content) == len(ref.token_ids)
    assert "".join(e.token for e in content) == resp.choices[0].message.content
    for entry, lp in zip(content, ref.logprobs):
        assert entry.logprob == pytest.approx(lp.logprob, abs=1e-4)
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy = best token
        assert bytes(entry.bytes) == entry.token.encode()


def test_chat_stop(client, engine):
    messages = [{"role": "user", "content": "List three fruits separated by commas."}]
    full = engine.chat(messages, greedy(16)).text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0, stop=[stop])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == full[:full.index(stop)]
    assert resp.choices[0].message.content == engine.chat(messages, greedy(16, stop=[stop])).text


# ---- OpenAI SDK: completions ----------------------------------------------------------------------

def test_completions_batch_n2(client, engine):
    prompts = ["The capital of France is", "1, 2, 3,"]
    resp = client.completions.create(model="smollm2", prompt=prompts, max_tokens=5, temperature=0, n=2)
    ref = engine.generate(prompts, greedy(5, n=2))
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert [c.text for c in resp.choices] == [r.text for r in ref]
    assert resp.usage.prompt_tokens == sum(len(engine.tokenizer.encode(p)) for p in prompts)
    assert resp.usage.completion_tokens == sum(len(r.token_ids) for r in ref)


def test_completions_token_ids_and_logprobs(client, engine):
    ids = engine.tokenizer.encode("Water boils at")
    by_ids = client.completions.create(model="smollm2", prompt=ids, max_tokens=5, temperature=0, logprobs=2)
    by_text = client.completions.create(model="smollm2", prompt="Water boils at", max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == engine.generate(input_ids=ids, sampling_params=greedy(5))[0].text
    lp = by_ids.choices[0].logprobs
    assert "".join(lp.tokens) == by_ids.choices[0].text
    assert len(lp.token_logprobs) == by_ids.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_completions_stream(client, engine):
    prompts = ["Roses are red,", "Once upon a time"]
    ref = engine.generate(prompts, greedy(6))
    texts = {0: "", 1: ""}
    chunks = list(client.completions.create(model="smollm2", prompt=prompts, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [r.text for r in ref]
    assert chunks[-1].usage.completion_tokens == sum(len(r.token_ids) for r in ref)


# ---- prefix cache, tenants, metrics ---------------------------------------------------------------

def test_shared_prefix_is_cached_and_metrics_move(client, http, engine):
    before = http.get("/metrics").text
    usages = []
    for question in ("When do you open?", "Do you sell bread?"):
        resp = client.chat.completions.create(
            model="smollm2", max_tokens=3, temperature=0, extra_body={"cache_salt": "metrics-test"},
            messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": question}])
        usages.append(resp.usage)
    assert usages[0].prompt_tokens > 100
    assert usages[0].prompt_tokens_details.cached_tokens == 0  # a fresh namespace
    shared = len(engine.apply_chat_template([{"role": "system", "content": LONG_SYSTEM}]))
    assert usages[1].prompt_tokens_details.cached_tokens >= shared - 8  # the system prompt, minus the template tail
    after = http.get("/metrics").text
    delta = lambda name, labels="": metric(after, name, labels) - metric(before, name, labels)  # noqa: E731
    assert delta("radixserve_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("radixserve_cached_tokens_total") == sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert delta("radixserve_generated_tokens_total") == sum(u.completion_tokens for u in usages)
    assert delta("radixserve_requests_finished_total", '{finish_reason="length"}') == 2
    assert delta("radixserve_e2e_request_latency_seconds_count") == 2
    assert "radixserve_kv_usage " in after and "radixserve_time_to_first_token_seconds_bucket" in after


def test_cache_salt_isolates_tenants(client):
    messages = [{"role": "system", "content": LONG_SYSTEM + " Tenant test."}, {"role": "user", "content": "Hi"}]

    def cached(salt):
        resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=1, temperature=0,
                                              extra_body={"cache_salt": salt})
        return resp.usage.prompt_tokens_details.cached_tokens

    # NOTE: namespaces no other test uses: the engine is shared with the other server modules
    tenant_a, tenant_b = f"tenant-a-{uuid.uuid4().hex}", f"tenant-b-{uuid.uuid4().hex}"
    assert cached(tenant_a) == 0
    assert cached(tenant_b) == 0  # same prompt, other namespace: nothing shared
    assert cached(tenant_a) > 100


# ---- native routes --------------------------------------------------------------------------------

def test_native_generate(http, engine):
    sp = {"max_new_tokens": 4, "temperature": 0}
    one = http.post("/generate", json={"text": "The sun is", "sampling_params": sp}).json()
    ref = engine.generate("The sun is", greedy(4))[0]
    assert one["text"] == ref.text and one["output_ids"] == ref.token_ids
    assert one["meta_info"]["completion_tokens"] == len(ref.token_ids)
    assert one["meta_info"]["prompt_tokens"] == ref.prompt_tokens
    assert one["meta_info"]["finish_reason"] == ref.finish_reason
    batch = http.post("/generate", json={"input_ids": [ref.token_ids, [1, 2, 3]], "sampling_params": sp}).json()
    refs = engine.generate(input_ids=[ref.token_ids, [1, 2, 3]], sampling_params=greedy(4))
    assert [b["text"] for b in batch] == [r.text for r in refs]
    with http.stream("POST", "/generate", json={"text": "The sun is", "sampling_params": sp, "stream": True}) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert last["text"] == ref.text and last["meta_info"]["finish_reason"] == ref.finish_reason


def test_tokenize_detokenize(http, engine):
    tok = http.post("/tokenize", json={"prompt": "héllo wörld 😀"}).json()
    assert tok["tokens"] == engine.tokenizer.encode("héllo wörld 😀") and tok["count"] == len(tok["tokens"])
    assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == "héllo wörld 😀"
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}]}).json()
    assert chat["tokens"] == engine.apply_chat_template([{"role": "user", "content": "x"}])


# ---- disconnects ----------------------------------------------------------------------------------

def test_client_disconnect_mid_stream_aborts(server, engine):
    body = {"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True, "stream": True}
    finished_before = engine.stats()["requests_finished"].get("abort", 0)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as s:
            lines = s.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few events, then hang up
    assert any(line.startswith("data: ") for line in got)
    stats = wait_idle(engine)
    assert stats["requests_finished"].get("abort", 0) == finished_before + 1
    assert_no_leak(engine)


def test_client_timeout_non_streaming_aborts(server, engine):
    body = {"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True}
    aborted_before = engine.stats()["requests_finished"].get("abort", 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                   timeout=1.0)
    stats = wait_idle(engine)
    assert stats["requests_finished"].get("abort", 0) == aborted_before + 1
    assert_no_leak(engine)


def test_concurrent_streams(server, engine):
    """32 streaming clients at once: every one completes, with its own text, and nothing leaks."""
    prompts = [f"Item {i}: the number after {i} is" for i in range(32)]

    async def one(c, prompt):
        text, finish, usage = "", None, None
        stream = await c.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        return text, finish, usage

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    results = asyncio.run(run())
    refs = engine.generate(prompts, greedy(4))
    assert [r[0] for r in results] == [r.text for r in refs]
    assert all(r[1] in ("length", "stop") and r[2].completion_tokens >= 1 for r in results)
    assert_no_leak(engine)
