"""Structured output over HTTP (response_format, structured_outputs, the SGLang/vLLM spellings, the
native API, the Responses API), constrained tool calls, streaming, and bad constraints.

Oracles: the jsonschema package (every JSON output validates against the schema asked for), Python's
`re` for regexes, the choice list, the engine's own greedy output under the same SamplingParams, and
the openai SDK's own parsing (`chat.completions.parse`, the stream accumulator)."""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from radixserve import SamplingParams
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    API_KEY, assert_no_leak, client, engine, greedy, http, local_engine, server)

ASK = [{"role": "user", "content": "Describe a city as JSON."}]
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                         "population": {"type": "integer", "minimum": 0},
                                         "capital": {"type": "boolean"}},
        "required": ["name", "population", "capital"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET", "JST"]}}, "required": ["zone"],
    "additionalProperties": False}}}


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=150)
    languages: list[str] = Field(max_length=3)


# ---- response_format ------------------------------------------------------------------------------

def test_sdk_parse_with_a_pydantic_model(client, engine):
    messages = [{"role": "user", "content": "Invent a person."}]
    resp = client.chat.completions.parse(model="smollm2", messages=messages, response_format=Person, max_tokens=120,
                                         temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    jsonschema.validate(json.loads(choice.message.content), Person.model_json_schema())
    # the server constrains with the schema the SDK sent (strict): the engine under that schema agrees
    from openai.lib._pydantic import to_strict_json_schema
    ref = engine.chat(messages, greedy(120, json_schema=to_strict_json_schema(Person)))
    assert choice.message.content == ref.text


def test_json_object_and_text(client):
    resp = client.chat.completions.create(model="smollm2", messages=ASK, response_format={"type": "json_object"},
                                          max_tokens=80, temperature=0)
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)
    text = client.chat.completions.create(model="smollm2", messages=ASK, response_format={"type": "text"},
                                          max_tokens=6, temperature=0)
    assert text.choices[0].message.content


SPELLINGS = [  # (body fields, check of the output text)
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}},
     lambda t: jsonschema.validate(json.loads(t), CITY)),
    ({"structured_outputs": {"json": CITY}}, lambda t: jsonschema.validate(json.loads(t), CITY)),
    ({"structured_outputs": {"json_object": True}}, lambda t: isinstance(json.loads(t), dict) or 1 / 0),
    ({"structured_outputs": {"regex": r"[A-Z][a-z]{2,8} has \d{1,7} people"}},
     lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} has \d{1,7} people", t) or 1 / 0),
    ({"structured_outputs": {"choice": ["Paris", "Rome", "Oslo"]}}, lambda t: t in ("Paris", "Rome", "Oslo") or 1 / 0),
    ({"structured_outputs": {"grammar": 'root ::= "city: " name\nname ::= [A-Z] [a-z] [a-z] [a-z]?'}},
     lambda t: re.fullmatch(r"city: [A-Z][a-z]{2,3}", t) or 1 / 0),
    ({"regex": r"(yes|no), \d\d"}, lambda t: re.fullmatch(r"(yes|no), \d\d", t) or 1 / 0),
    ({"ebnf": 'root ::= ("red" | "green") " " [0-9]'}, lambda t: re.fullmatch(r"(red|green) [0-9]", t) or 1 / 0),
    ({"json_schema": json.dumps(CITY)}, lambda t: jsonschema.validate(json.loads(t), CITY)),
    ({"guided_json": CITY}, lambda t: jsonschema.validate(json.loads(t), CITY)),
    ({"guided_regex": r"\d{3}-\d{4}"}, lambda t: re.fullmatch(r"\d{3}-\d{4}", t) or 1 / 0),
    ({"guided_choice": ["alpha", "beta"]}, lambda t: t in ("alpha", "beta") or 1 / 0),
    ({"guided_grammar": 'root ::= "A" | "B"'}, lambda t: t in ("A", "B") or 1 / 0),
]


@pytest.mark.parametrize("case", range(len(SPELLINGS)), ids=[next(iter(s[0])) + str(i) for i, s in enumerate(SPELLINGS)])
def test_every_spelling_on_chat_and_completions(http, case):
    fields, check = SPELLINGS[case]
    for temperature in (0, 1.0):
        chat = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 100, "temperature": temperature,
                                                       "seed": 3, **fields}).json()
        assert chat["choices"][0]["finish_reason"] == "stop", chat
        check(chat["choices"][0]["message"]["content"])
    if "response_format" not in fields:
        cmpl = http.post("/v1/completions", json={"prompt": "A city:", "max_tokens": 100, "temperature": 0,
                                                  **fields}).json()
        assert cmpl["choices"][0]["finish_reason"] == "stop", cmpl
        check(cmpl["choices"][0]["text"])


def test_native_generate_and_responses_api(http, client):
    out = http.post("/generate", json={"text": "Phone:", "sampling_params": {
        "max_new_tokens": 20, "temperature": 0, "regex": r"\+\d{2} \d{3} \d{4}"}}).json()
    assert re.fullmatch(r"\+\d{2} \d{3} \d{4}", out["text"]) and out["meta_info"]["finish_reason"] == "stop"
    out = http.post("/generate", json={"text": "City:", "sampling_params": {
        "max_new_tokens": 100, "temperature": 0, "json_schema": CITY}}).json()
    jsonschema.validate(json.loads(out["text"]), CITY)
    resp = client.responses.create(model="smollm2", input="Describe a city.", max_output_tokens=100, temperature=0,
                                   text={"format": {"type": "json_schema", "name": "city", "schema": CITY,
                                                    "strict": True}})
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), CITY)
    parsed = client.responses.parse(model="smollm2", input="Invent a person.", text_format=Person,
                                    max_output_tokens=120, temperature=0)
    assert isinstance(parsed.output_parsed, Person)


def test_streamed_constrained_output_equals_whole(client):
    kw = dict(model="smollm2", messages=ASK, max_tokens=100, temperature=0,
              response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    jsonschema.validate(json.loads(whole), CITY)


# ---- tools ----------------------------------------------------------------------------------------

def _calls(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_named_tool_choice(client):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (name, args), = _calls(choice.message)
    assert name == "get_weather" and choice.message.tool_calls[0].id.startswith("call_")
    jsonschema.validate(args, WEATHER["function"]["parameters"])


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_choice(client, parallel):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}],
        tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel, max_tokens=120, temperature=0)
    choice = resp.choices[0]
    calls = _calls(choice.message)
    assert choice.finish_reason == "tool_calls" and calls and (parallel or len(calls) == 1)
    schemas = {"get_weather": WEATHER, "get_time": TIME}
    for name, args in calls:
        jsonschema.validate(args, schemas[name]["function"]["parameters"])


def test_streamed_tool_calls_as_the_sdk_accumulates_them(client):
    kw = dict(model="smollm2", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER, TIME],
              max_tokens=120, temperature=0)
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        whole = client.chat.completions.create(**kw, tool_choice=choice).choices[0]
        with client.chat.completions.stream(**kw, tool_choice=choice) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion().choices[0]
        assert final.finish_reason == "tool_calls"
        assert _calls(final.message) == _calls(whole.message)


def test_sdk_parse_with_a_strict_pydantic_tool(client):
    class GetTime(BaseModel):
        zone: str = Field(pattern="^(UTC|CET|JST)$")

    resp = client.chat.completions.parse(model="smollm2", messages=[{"role": "user", "content": "Time in Berlin?"}],
                                         tools=[openai.pydantic_function_tool(GetTime)], tool_choice="required",
                                         max_tokens=60, temperature=0)
    call = resp.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetTime)


class _ForcedText:
    """The shared engine, made to emit a given text (a regex constraint of exactly that text): how
    the server reads a tool call out of an answer the model wrote itself under tool_choice auto."""

    def __init__(self, engine, text: str) -> None:
        self._engine, self._regex = engine, re.escape(text)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _forced(self, sp: SamplingParams) -> SamplingParams:
        import dataclasses
        return dataclasses.replace(sp, regex=self._regex)

    def prepare(self, ids, sp, over_context="clamp"):  # the routes prepare every request through this
        return self._engine.prepare(ids, self._forced(sp), over_context)


def test_auto_reads_the_calls_the_model_writes(engine):
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    app = build_app(_ForcedText(engine, text), ServerConfig())
    with ServerThread(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        kw = dict(model=engine.model_name, messages=[{"role": "user", "content": "Weather and time in Oslo?"}],
                  tools=[WEATHER, TIME], max_tokens=100, temperature=0)
        whole = c.chat.completions.create(**kw).choices[0]
        assert whole.finish_reason == "tool_calls" and whole.message.content == "Let me look."
        assert _calls(whole.message) == [("get_weather", {"city": "Oslo", "unit": "C"}), ("get_time", {"zone": "CET"})]
        with c.chat.completions.stream(**kw) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion().choices[0]
        assert final.message.content == "Let me look." and _calls(final.message) == _calls(whole.message)
        one = c.chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
        assert [n for n, _ in _calls(one.message)] == ["get_weather"]


# ---- bad constraints ------------------------------------------------------------------------------

BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"guided_grammar": "root ::= ("}, "guided_grammar"),
    ({"ebnf": "no_root ::= \"a\""}, "ebnf"),
    ({"guided_choice": []}, "guided_choice"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"regex": "a+", "guided_json": CITY}, "guided_json"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"json": {"type": "object", "not": {"required": ["a"]}}}}, "structured_outputs.json"),
]


@pytest.mark.parametrize("body, param", BAD, ids=[p for _, p in BAD])
def test_bad_constraints_name_the_field(http, engine, body, param):
    resp = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 4, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    assert len(err["message"]) > 20
    if "not" in json.dumps(body):
        assert "'not'" in err["message"] or "`not`" in err["message"] or " not " in err["message"], err


def test_compile_timeout_is_a_400_naming_the_field(local_engine, monkeypatch):
    """A grammar that compiles past the timeout: 400 naming the field, streamed or not, and the
    server goes on serving (compiles are held here, deterministically, instead of being slow; that
    reaches into the engine, so this server runs it in process)."""
    import dataclasses
    import threading
    import uuid

    from radixserve.server import ServerConfig, build_app
    from radixserve.server.testing import ServerThread

    engine = local_engine
    with ServerThread(build_app(engine, ServerConfig())) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        _compile_timeout(http, engine, monkeypatch, dataclasses, threading, uuid)


def _compile_timeout(http, engine, monkeypatch, dataclasses, threading, uuid):

    release = threading.Event()
    real = engine.grammar._compile
    monkeypatch.setattr(engine.grammar, "_compile", lambda spec: release.wait(60) and real(spec))
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, grammar_compile_timeout_s=0.5))
    monkeypatch.setattr(engine.grammar, "timeout_s", 0.5)
    try:
        for stream in (False, True):
            schema = {**CITY, "description": uuid.uuid4().hex}  # never compiled before
            resp = http.post("/v1/chat/completions", json={
                "messages": ASK, "max_tokens": 8, "stream": stream,
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert err["param"] == "response_format.json_schema.schema" and "did not compile" in err["message"]
    finally:
        release.set()
    assert http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2}).status_code == 200
    assert_no_leak(engine)


def test_nothing_leaked_after_all(engine, http):
    assert http.get("/health").status_code == 200
    assert_no_leak(engine)
