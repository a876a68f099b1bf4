"""Ollama's HTTP API, driven by the real `ollama` Python client (and raw httpx for what it does not
send) against one running server. Oracles: the native /generate route and Engine.chat on the same
rendered prompt (greedy), the tokenizer (counts), the GGUF file itself (model facts), jsonschema."""
from __future__ import annotations

import json
import os
from datetime import datetime

import asyncio

import jsonschema
import ollama
import pytest

from radixserve.models.loader import embedded_model_path
from radixserve.outputs import StreamDelta
from radixserve.server.ollama import ndjson, tools
from radixserve.server.openai.bodies import TokenTexts
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    API_KEY, assert_no_leak, engine, greedy, http, server)

ASK = [{"role": "user", "content": "Name a colour of the sky."}]
GREEDY = {"temperature": 0, "num_predict": 8}
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                         "population": {"type": "integer", "minimum": 0}},
        "required": ["name", "population"], "additionalProperties": False}
# NOTE: in the key order the ollama client's Tool model sends, so the OpenAI route renders the same prompt
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "required": ["city"], "properties": {
                                                "city": {"type": "string", "description": "the city"}}}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


def native(http, ids: list[int], n: int = 8) -> dict:
    resp = http.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0}})
    assert resp.status_code == 200, resp.text
    return resp.json()


def output_tokens(engine, text: str) -> int:
    return len(engine.tokenizer.encode(text, add_special_tokens=False))


def assert_done(final, engine, prompt_tokens: int, text: str, reason: str) -> None:
    assert final.done is True and final.done_reason == reason
    assert final.prompt_eval_count == prompt_tokens
    if reason == "length":  # (a stop token ends the output without text of its own)
        assert final.eval_count == output_tokens(engine, text)
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, name), int) and getattr(final, name) >= 0, name
    assert final.total_duration >= final.prompt_eval_duration
    assert datetime.fromisoformat(final.created_at.replace("Z", "+00:00")).tzinfo is not None


# ---- /api/chat --------------------------------------------------------------------------------------

def test_chat_matches_native_generate(client, engine, http):
    resp = client.chat(model="llama3", messages=ASK, options=GREEDY, keep_alive="5m")
    prompt = engine.apply_chat_template(ASK)
    ref = native(http, prompt)
    assert resp.message.role == "assistant"
    assert resp.message.content == ref["text"] == engine.chat(ASK, greedy(8)).text
    assert resp.model == "smollm2"  # any name is accepted; the served one is reported
    assert_done(resp, engine, len(prompt), resp.message.content, ref["meta_info"]["finish_reason"])
    assert resp.eval_count == ref["meta_info"]["completion_tokens"]


def test_chat_stream_equals_whole(client, engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    whole = client.chat(model="smollm2", messages=messages, options=GREEDY, stream=False)
    chunks = list(client.chat(model="smollm2", messages=messages, options=GREEDY, stream=True))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    text = "".join(c.message.content for c in chunks)
    assert text == whole.message.content and text
    final = chunks[-1]
    assert final.message.content == "" and final.eval_count == whole.eval_count
    assert_done(final, engine, len(engine.apply_chat_template(messages)), text, whole.done_reason)
    assert final.eval_count == len(engine.chat(messages, greedy(8)).token_ids)


def test_chat_json_schema_format(client):
    resp = client.chat(model="smollm2", messages=[{"role": "user", "content": "Describe a city as JSON."}],
                       format=CITY, options={"temperature": 0, "num_predict": 100})
    assert resp.done_reason == "stop"
    jsonschema.validate(json.loads(resp.message.content), CITY)
    any_json = client.chat(model="smollm2", messages=ASK, format="json", options={"temperature": 0, "num_predict": 60})
    assert isinstance(json.loads(any_json.message.content), dict)


def test_chat_logprobs(client):
    resp = client.chat(model="smollm2", messages=ASK, options=GREEDY, logprobs=True, top_logprobs=2)
    assert len(resp.logprobs) == resp.eval_count
    assert "".join(lp.token for lp in resp.logprobs) == resp.message.content
    assert all(len(lp.top_logprobs) == 2 and lp.top_logprobs[0].logprob >= lp.logprob - 1e-4 for lp in resp.logprobs)


def test_chat_tools_render_as_on_the_openai_route(client, http):
    history = ASK_WEATHER + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                         "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp_c": 21}', "tool_name": "get_weather"}]
    openai_history = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'}]
    for ours, theirs in ((ASK_WEATHER, ASK_WEATHER), (history, openai_history)):
        resp = client.chat(model="smollm2", messages=ours, tools=[WEATHER], options=GREEDY)
        ref = http.post("/v1/chat/completions", json={"messages": theirs, "tools": [WEATHER], "max_tokens": 8,
                                                      "temperature": 0}).json()
        assert resp.prompt_eval_count == ref["usage"]["prompt_tokens"]
        assert resp.message.content == (ref["choices"][0]["message"]["content"] or "")
        assert resp.eval_count == ref["usage"]["completion_tokens"]


class _Clock:
    def tokens(self, index: int, count: int) -> None: ...

    def done(self) -> None: ...


def test_tool_calls_are_read_out_of_the_stream(engine):
    """The model here does not call tools unprompted, so the reading is driven with the text a
    calling model writes, split at awkward places, through the route's own streaming path."""
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    cuts = [0, 5, 16, 20, 41, 70, len(text)]
    deltas = [StreamDelta("r", 0, text[a:b], [1], None, "stop" if b == len(text) else None, 3, 0, i + 1)
              for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]

    async def stream():
        for d in deltas:
            yield 0, d

    plan = tools.plan([WEATHER], False)
    gen = ndjson.Generation(TokenTexts(engine.tokenizer), False, _Clock(), tools.reader_of(plan))
    lines = asyncio.run(_lines(ndjson.stream_lines(stream(), gen, lambda p: {"part": p}, {}, lambda g: g.done())))
    parts = [x["part"] for x in lines]
    assert "".join(p["text"] for p in parts) == "Let me check."
    assert [c for p in parts for c in p["tool_calls"]] == [{"function": {"name": "get_weather",
                                                                         "arguments": {"city": "Paris"}}}]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == len(deltas) and lines[-1]["prompt_eval_count"] == 3
    assert gen.whole()["tool_calls"] == [c for p in parts for c in p["tool_calls"]]


async def _lines(it) -> list[dict]:
    return [json.loads(x) async for x in it]


# ---- /api/generate ----------------------------------------------------------------------------------

def test_generate_templated_and_raw(client, engine, http):
    resp = client.generate(model="smollm2", prompt="Why is the sky blue?", system="Answer in one sentence.",
                           options=GREEDY)
    prompt = engine.apply_chat_template([{"role": "system", "content": "Answer in one sentence."},
                                         {"role": "user", "content": "Why is the sky blue?"}])
    ref = native(http, prompt)
    assert resp.response == ref["text"]
    assert_done(resp, engine, len(prompt), resp.response, ref["meta_info"]["finish_reason"])
    assert list(resp.context) == prompt + ref["output_ids"]
    raw = client.generate(model="smollm2", prompt="The capital of France is", raw=True, options=GREEDY)
    raw_ref = http.post("/generate", json={"text": "The capital of France is",
                                           "sampling_params": {"max_new_tokens": 8, "temperature": 0}}).json()
    assert raw.response == raw_ref["text"] and raw.context is None
    # the returned context continues the exchange: it is the next prompt's prefix
    more = client.generate(model="smollm2", prompt="And why at sunset?", context=resp.context, options=GREEDY)
    follow = list(resp.context) + engine.apply_chat_template([{"role": "user", "content": "And why at sunset?"}])
    assert more.prompt_eval_count == len(follow) and more.response == native(http, follow)["text"]


def test_generate_stream_equals_whole(client, engine):
    whole = client.generate(model="smollm2", prompt="Count to five.", options=GREEDY)
    chunks = list(client.generate(model="smollm2", prompt="Count to five.", options=GREEDY, stream=True))
    assert "".join(c.response for c in chunks) == whole.response
    assert chunks[-1].done and chunks[-1].eval_count == whole.eval_count == output_tokens(engine, whole.response)
    assert list(chunks[-1].context) == list(whole.context)


def test_empty_prompt_loads(client):
    assert client.generate(model="smollm2").done_reason == "load"
    assert client.chat(model="smollm2", messages=[]).done_reason == "load"


def test_stream_left_early_frees_the_engine(client, engine):
    for chunk in client.generate(model="smollm2", prompt="Tell a long story.", options={"num_predict": 200},
                                 stream=True):
        assert not chunk.done
        break
    assert_no_leak(engine)


# ---- the model ------------------------------------------------------------------------------------

def test_list_show_ps_version(client, engine, http):
    size = os.path.getsize(embedded_model_path())
    (listed,) = client.list().models
    assert listed.model == "smollm2" and listed.size == size and listed.modified_at is not None
    details = listed.details
    assert (details.family, details.format, details.quantization_level) == ("llama", "gguf", "Q4_1")
    assert details.parameter_size.endswith("M") and 130 < float(details.parameter_size[:-1]) < 140
    shown = client.show("llama3")
    assert shown.details == details and "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == engine.max_context_len
    assert shown.template == engine.tokenizer.chat_template
    (running,) = client.ps().models
    assert running.model == "smollm2" and running.size == size and running.context_length == engine.max_context_len
    assert http.get("/").status_code == 200 and http.head("/").status_code == 200  # clients probe the root
    version = http.get("/api/version")
    assert version.status_code == 200 and version.json()["version"].count(".") == 2


# ---- errors -----------------------------------------------------------------------------------------

def error_of(call) -> ollama.ResponseError:
    with pytest.raises(ollama.ResponseError) as info:
        call()
    assert 400 <= info.value.status_code < 500 and isinstance(info.value.error, str)
    return info.value


@pytest.mark.parametrize("kw, names", [
    ({"options": {"mirostat": 2}}, "options.mirostat"),
    ({"options": {"bogus": 1}}, "options.bogus"),
    ({"options": {"num_predict": 100_000}}, "options.num_predict"),
    ({"options": {"temperature": -1}}, "options.temperature"),
    ({"think": True}, "think"),
    ({"format": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "format"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "messages[0].images"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0]"),
    ({"tools": [WEATHER], "format": "json"}, "format"),
    ({"messages": [{"role": "tool", "content": "21", "tool_name": "get_weather"}]}, "messages[0]"),
])
def test_chat_errors_name_the_field(client, kw, names):
    kw = {"model": "smollm2", "messages": ASK, **kw}
    err = error_of(lambda: client.chat(**kw))
    assert err.status_code == 400 and names in err.error


def test_generate_refusals(client):
    for kw, name in (({"images": ["aGk="]}, "images"), ({"template": "{{ .Prompt }}"}, "template"),
                     ({"suffix": "end"}, "suffix"), ({"raw": True, "system": "x"}, "system")):
        err = error_of(lambda: client.generate(model="smollm2", prompt="hi", **kw))
        assert err.status_code == 400 and name in err.error


def test_bad_bodies_are_ollama_errors(http):
    for path, body, name in (("/api/chat", {"model": "m", "messages": "hi"}, "messages"),
                             ("/api/generate", {"prompt": "hi"}, "model"),
                             ("/api/generate", {"model": "m", "prompt": 3}, "prompt")):
        resp = http.post(path, json=body)
        assert resp.status_code == 400 and list(resp.json()) == ["error"] and name in resp.json()["error"]
    bad_json = http.post("/api/chat", content=b"{not json")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    missing = http.post("/api/pull", json={"model": "llama3"})
    assert missing.status_code == 404 and "/api/chat" in missing.json()["error"]
