"""OpenAI-compatible leniency: explicit nulls, vLLM/SGLang chat extras, CORS, /version, /docs, the
default max_tokens, and required / named tool calls through the openai SDK's `parse`.

One server for the module, over an engine process with jump-forward off (the default): the
required tool call must end by its grammar alone. Oracles: the same request without the field
(a null means the default), the tokenizer's own apply_chat_template, the engine's generate on
the same token ids, the openai SDK.
"""
from __future__ import annotations

import copy
import json

import httpx
import openai
import pytest
from pydantic import BaseModel

import radixserve
from radixserve.engine.chat_template import apply_chat_template
from radixserve.server import ServerConfig, build_app
from radixserve.server.openai import params
from radixserve.server.openai.defaults import DEFAULT_MAX_TOKENS, default_max_new, resolve_default_max_tokens
from radixserve.server.openai.protocol import ChatCompletionRequest
from radixserve.server.testing import ServerThread
from model_fixtures import embedded_tokenizer
from server_fixtures import API_KEY, CONTEXT, MAX_N, SPLIT, greedy

ORIGIN = "http://app.example"
DEFAULT_MAX = 12  # the server's default max_tokens here (small: the default is what is tested)
ASK = [{"role": "user", "content": "Name three colours."}]
CONTINUE = ASK + [{"role": "assistant", "content": "Sure: red,"}]


@pytest.fixture(scope="module")
def engine():
    options = dict(max_total_tokens=4096, max_context_len=CONTEXT, max_queued_requests=64)
    if SPLIT:
        from radixserve.engine.client import EngineClient

        eng = EngineClient(**options)
    else:
        eng = radixserve.Engine(**options)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    config = ServerConfig(api_key=API_KEY, max_n=MAX_N, served_model_name="smollm2", allowed_origins=(ORIGIN,),
                          default_max_tokens=DEFAULT_MAX)
    with ServerThread(build_app(engine, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def chat(http, **body) -> dict:
    r = http.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert r.status_code == 200, r.text
    return r.json()


def answer(body: dict) -> tuple:
    c = body["choices"][0]
    return c["message"]["content"], c["finish_reason"], body["usage"]["completion_tokens"]


# ---- explicit nulls mean the default ---------------------------------------------------------------
CHAT_NULLS = ["n", "stream", "logprobs", "top_logprobs", "top_p", "stop", "seed", "presence_penalty",
              "frequency_penalty", "logit_bias", "tools", "tool_choice", "parallel_tool_calls", "stream_options",
              "response_format", "max_completion_tokens", "user", "metadata", "store", "service_tier",
              "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
              "skip_special_tokens", "chat_template_kwargs", "add_generation_prompt", "continue_final_message",
              "include_stop_str_in_output", "typical_p", "modalities", "prediction", "cache_salt"]


@pytest.fixture(scope="module")
def chat_baseline(http):
    return answer(chat(http, temperature=0, max_tokens=6))


@pytest.mark.parametrize("field", CHAT_NULLS)
def test_chat_null_is_the_default(http, chat_baseline, field):
    assert answer(chat(http, temperature=0, max_tokens=6, **{field: None})) == chat_baseline


def test_chat_all_nulls_at_once(http, chat_baseline):
    assert answer(chat(http, temperature=0, max_tokens=6, **{f: None for f in CHAT_NULLS})) == chat_baseline


def test_null_temperature_and_max_tokens(http):
    # temperature null = 1.0 (sampled; the same seed gives the same sample); max_tokens null = the default
    assert answer(chat(http, seed=5, max_tokens=6, temperature=None)) == answer(chat(http, seed=5, max_tokens=6))
    assert (answer(chat(http, temperature=0, max_tokens=None, ignore_eos=True))
            == answer(chat(http, temperature=0, ignore_eos=True)))


def test_every_field_with_a_default_takes_null():
    """A field that defaults to something other than None maps null to that default only if it is
    listed in DEFAULTED_FIELDS: a new such field must be listed there."""
    from radixserve.server.openai.protocol import DEFAULTED_FIELDS, CompletionRequest, StreamOptions
    from radixserve.server.responses_api.protocol import ResponsesRequest

    for model in (ChatCompletionRequest, CompletionRequest, ResponsesRequest, StreamOptions):
        for name, f in model.model_fields.items():
            if not f.is_required() and f.get_default() is not None:
                assert name in DEFAULTED_FIELDS, (model.__name__, name)


def test_null_keeps_json_keys_as_integers(http, chat_baseline):
    """logit_bias keys are JSON strings read as token ids; nulls beside them change nothing."""
    got = chat(http, temperature=0, max_tokens=6, n=None, stream=None, logit_bias={"0": 0})
    assert answer(got) == chat_baseline


def test_completions_and_responses_nulls(http):
    base = {"prompt": "The sky is", "max_tokens": 5, "temperature": 0}
    nulls = {f: None for f in ("n", "stream", "logprobs", "echo", "best_of", "suffix", "stop", "seed", "top_p",
                               "stream_options", "include_stop_str_in_output", "user")}
    got = [http.post("/v1/completions", json=body) for body in (base, {**base, **nulls})]
    assert [r.status_code for r in got] == [200, 200], got[1].text
    assert got[0].json()["choices"][0]["text"] == got[1].json()["choices"][0]["text"]
    base = {"input": "The sky is", "max_output_tokens": 5, "temperature": 0}
    nulls = {f: None for f in ("stream", "stream_options", "instructions", "top_p", "tools", "store", "include")}
    got = [http.post("/v1/responses", json=body) for body in (base, {**base, **nulls})]
    assert [r.status_code for r in got] == [200, 200], got[1].text
    texts = [[c["text"] for item in r.json()["output"] if item["type"] == "message" for c in item["content"]]
             for r in got]
    assert texts[0] and texts[0] == texts[1]


# ---- vLLM / SGLang extras ------------------------------------------------------------------------------
def test_add_generation_prompt_false_and_continue_final_message_render_as_the_tokenizer(http, engine):
    tok = engine.tokenizer
    oracle = {
        "open": tok.apply_chat_template(CONTINUE, add_generation_prompt=False, tokenize=True),
        "continue": tok.apply_chat_template(CONTINUE, continue_final_message=True, tokenize=True),
    }
    oracle = {k: list(v["input_ids"] if isinstance(v, dict) or hasattr(v, "input_ids") else v)
              for k, v in oracle.items()}
    assert tok.decode(oracle["continue"]).endswith("Sure: red,")  # no end-of-turn after the continued message
    assert oracle["open"] != oracle["continue"]
    for key, body in (("open", {"add_generation_prompt": False}),
                      ("continue", {"continue_final_message": True}),
                      ("continue", {"continue_final_message": True, "add_generation_prompt": False})):
        got = chat(http, messages=CONTINUE, temperature=0, max_tokens=6, **body)
        assert got["usage"]["prompt_tokens"] == len(oracle[key]), body
        expected = engine.generate(input_ids=[oracle[key]], sampling_params=greedy(6))[0]
        assert got["choices"][0]["message"]["content"] == expected.text, body


@pytest.mark.parametrize("body, param", [
    ({"messages": CONTINUE, "continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    ({"messages": ASK, "continue_final_message": True}, "continue_final_message"),
    ({"messages": ASK, "chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
    ({"messages": ASK, "chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
    ({"messages": ASK, "typical_p": 1.5}, "typical_p"),  # honoured, but only in (0, 1]
    ({"messages": ASK, "use_beam_search": True}, "use_beam_search"),
    ({"messages": ASK, "chat_template": "{{ messages }}"}, "chat_template"),
])
def test_extras_that_cannot_be_honoured_are_refused_by_name(http, body, param):
    r = http.post("/v1/chat/completions", json={"max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_typical_p_is_honoured(http):
    """A seeded typical_p request is accepted and reproducible; 1.0 (off) gives what omitting it gives."""
    a = chat(http, temperature=1.0, seed=3, max_tokens=8, typical_p=0.3)
    assert answer(a) == answer(chat(http, temperature=1.0, seed=3, max_tokens=8, typical_p=0.3))
    assert answer(chat(http, temperature=1.0, seed=3, max_tokens=8, typical_p=1.0)) == \
        answer(chat(http, temperature=1.0, seed=3, max_tokens=8))


def test_harmless_values_of_refused_extras_are_accepted(http, chat_baseline):
    extras = {"typical_p": 1.0, "use_beam_search": False, "length_penalty": 1.0, "chat_template_kwargs": {}}
    assert answer(chat(http, temperature=0, max_tokens=6, **extras)) == chat_baseline


QWEN3_LIKE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")


class _Templated:
    """A ChatTokenizer over a tokenizer with a Qwen3-like chat template (the one function engines use)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, tools=None, **options):
        return apply_chat_template(self.tokenizer, messages, tools, **options)


def test_chat_template_kwargs_reach_the_template():
    tok = copy.deepcopy(embedded_tokenizer())
    tok.chat_template = QWEN3_LIKE
    eng = _Templated(tok)

    def ids(**body) -> list[int]:
        req = ChatCompletionRequest.model_validate({"messages": ASK, **body})
        return params.chat_prompt(eng, req.messages, None, req)

    thinking, plain = ids(), ids(chat_template_kwargs={"enable_thinking": False})
    rendered = tok.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert thinking == tok(rendered, add_special_tokens=False)["input_ids"]
    # what the template says: enable_thinking false closes an empty think block after the turn header
    assert plain == tok(rendered + "<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert ids(chat_template_kwargs={"enable_thinking": True}) == thinking


def test_include_stop_str_in_output(http):
    free = chat(http, temperature=0, max_tokens=12)["choices"][0]["message"]["content"]
    words = free.split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    cut = free[:free.index(stop)]
    assert chat(http, temperature=0, max_tokens=12, stop=[stop])["choices"][0]["message"]["content"] == cut
    kept = chat(http, temperature=0, max_tokens=12, stop=[stop], include_stop_str_in_output=True)
    assert kept["choices"][0]["message"]["content"] == cut + stop
    assert kept["choices"][0]["finish_reason"] == "stop"
    streamed = http.post("/v1/chat/completions", json={"messages": ASK, "temperature": 0, "max_tokens": 12,
                                                       "stop": [stop], "include_stop_str_in_output": True,
                                                       "stream": True})
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in streamed.text.splitlines() if line.startswith("data: {"))
    assert text == cut + stop
    comp = http.post("/v1/completions", json={"prompt": "Colours: red, green,", "temperature": 0, "max_tokens": 12})
    ctext = comp.json()["choices"][0]["text"]
    cstop = ctext.strip()[:2]
    kept = http.post("/v1/completions", json={"prompt": "Colours: red, green,", "temperature": 0, "max_tokens": 12,
                                              "stop": [cstop], "include_stop_str_in_output": True}).json()
    assert kept["choices"][0]["text"] == ctext[:ctext.index(cstop) + len(cstop)]


# ---- default max_tokens --------------------------------------------------------------------------------
def test_default_max_tokens_bounds_an_unbounded_chat(http):
    got = chat(http, temperature=0, ignore_eos=True)
    assert got["usage"]["completion_tokens"] == DEFAULT_MAX
    assert got["choices"][0]["finish_reason"] == "length"
    assert chat(http, temperature=0, ignore_eos=True, max_tokens=DEFAULT_MAX + 3)["usage"]["completion_tokens"] \
        == DEFAULT_MAX + 3  # an explicit max_tokens is not capped by the default


def test_default_max_tokens_resolution(tmp_path):
    assert resolve_default_max_tokens(None, None) == DEFAULT_MAX_TOKENS
    assert resolve_default_max_tokens(7, str(tmp_path)) == 7
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 333}))
    assert resolve_default_max_tokens(None, str(tmp_path)) == 333
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_length": 20}))
    assert resolve_default_max_tokens(None, str(tmp_path)) == DEFAULT_MAX_TOKENS
    assert default_max_new(4096, 1000, 1024) == 24  # within the context left
    assert default_max_new(4096, 1024, 1024) == 1  # a full prompt meets the context rule as before


# ---- tools through the openai SDK ----------------------------------------------------------------------
class GetWeather(BaseModel):
    city: str


class GetTime(BaseModel):
    zone: str


WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "GetWeather"}}])
def test_sdk_parse_with_a_required_or_named_tool(client, choice):
    done = client.chat.completions.parse(model="smollm2", messages=WEATHER_Q, temperature=0, max_tokens=120,
                                         tools=[openai.pydantic_function_tool(GetWeather)], tool_choice=choice)
    c = done.choices[0]
    assert c.finish_reason == "tool_calls"
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_required_call_schema_admits_one_call_per_tool_at_most():
    """The grammar's schema, checked by jsonschema (an independent validator): a required
    tool_choice admits 1..len(tools) calls with parallel calls, exactly 1 without."""
    import jsonschema

    from radixserve.server.openai import tools

    defs = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]
    call = {"name": "GetWeather", "arguments": {"city": "Paris"}}
    other = {"name": "GetTime", "arguments": {"zone": "CET"}}
    for offered, parallel, most in ((defs[:1], None, 1), (defs, None, 2), (defs, False, 1)):
        body = {"messages": WEATHER_Q, "tools": offered, "tool_choice": "required"}
        if parallel is not None:
            body["parallel_tool_calls"] = parallel
        schema = tools.constraint(tools.plan(ChatCompletionRequest.model_validate(body), native=False)).value
        calls = [call, other if len(offered) > 1 else call, call]
        for k in range(4):
            ok = jsonschema.Draft202012Validator(schema).is_valid(calls[:k])
            assert ok == (1 <= k <= most), (len(offered), parallel, k)


def test_required_parallel_calls_are_bounded_by_the_tools_offered(http):
    body = {"messages": WEATHER_Q, "temperature": 0, "max_tokens": 200, "tool_choice": "required",
            "tools": [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]}
    c = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert c["finish_reason"] == "tool_calls"
    assert 1 <= len(c["message"]["tool_calls"]) <= 2


# ---- CORS, /version, /docs -----------------------------------------------------------------------------
def test_cors_preflight_and_headers(server):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with httpx.Client(base_url=server.url, timeout=60) as anon:  # a browser's preflight carries no key
        r = anon.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "POST" in r.headers["access-control-allow-methods"]
        bad = anon.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        denied = anon.get("/v1/models", headers={"Origin": ORIGIN})  # 401, readable by the page
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
        ok = anon.get("/v1/models", headers={"Origin": ORIGIN, "Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_headers_without_allowed_origins(engine):
    from starlette.testclient import TestClient

    app = build_app(engine, ServerConfig(served_model_name="smollm2"))  # the app alone: no second server
    r = TestClient(app).get("/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_version_docs_and_openapi_are_open(server):
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        assert anon.get("/version").json() == {"version": radixserve.__version__}
        docs = anon.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        spec = anon.get("/openapi.json").json()
        assert spec["info"]["version"] == radixserve.__version__
        assert "/v1/chat/completions" in spec["paths"] and "/version" in spec["paths"]
        assert anon.post("/v1/chat/completions", json={"messages": ASK}).status_code == 401  # the rest stays guarded
