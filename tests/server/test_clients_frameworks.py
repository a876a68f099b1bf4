"""Clients nobody here wrote, against a real server: LangChain's ChatOpenAI and
lm-evaluation-harness's `local-completions` model.

Oracles: the engine's own output and prompt logprobs on the same prompts (float32 on CPU).
lm-evaluation-harness must reach nothing but the server: the test forbids every connection that
is not to the loopback address, and the hub is set offline."""
from __future__ import annotations

import socket
from typing import Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from radixserve import SamplingParams
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    API_KEY, CONTEXT, LONG_SYSTEM, assert_no_leak, engine, greedy, server)


@pytest.fixture
def loopback_only(monkeypatch):
    """Every socket connection must go to this machine's loopback address."""
    real = socket.socket.connect
    tried = []

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            tried.append(address)
            raise OSError(f"test forbids a connection to {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield tried
    assert not tried, f"something tried to reach {tried}"


# ---- LangChain ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_model(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="smollm2", base_url=server.url + "/v1", api_key=API_KEY, temperature=0, max_tokens=10,
                      max_retries=0, timeout=120)


def test_langchain_invoke(chat_model, engine):
    msg = chat_model.invoke("Name a large city.")
    ref = engine.chat([{"role": "user", "content": "Name a large city."}], greedy(10))
    assert msg.content == ref.text
    assert msg.usage_metadata["output_tokens"] == len(ref.token_ids)
    assert msg.response_metadata["finish_reason"] == ref.finish_reason


def test_langchain_stream_with_usage(chat_model, engine):
    from langchain_core.messages import HumanMessage, SystemMessage

    chunks = list(chat_model.stream([SystemMessage("Be brief."), HumanMessage("Say hello.")], stream_usage=True))
    ref = engine.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
                      greedy(10))
    assert "".join(c.content for c in chunks) == ref.text
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] == len(ref.token_ids)


def test_langchain_batch_and_cached_tokens(chat_model, engine):
    from langchain_core.messages import HumanMessage, SystemMessage

    convs = [[SystemMessage(LONG_SYSTEM + " Clients test."), HumanMessage(q)] for q in ("Open on Sunday?", "Any cake?")]
    first = chat_model.invoke(convs[0])
    outs = chat_model.batch(convs)
    refs = [engine.chat([{"role": "system", "content": LONG_SYSTEM + " Clients test."},
                         {"role": "user", "content": q}], greedy(10)) for q in ("Open on Sunday?", "Any cake?")]
    assert [o.content for o in outs] == [r.text for r in refs] and first.content == refs[0].text
    # the long system prompt came from the radix tree for the batch
    assert all(o.usage_metadata["input_token_details"]["cache_read"] > 100 for o in outs)


@pytest.fixture(scope="module")
def roomy_model(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="smollm2", base_url=server.url + "/v1", api_key=API_KEY, temperature=0, max_tokens=150,
                      max_retries=0, timeout=120)


def test_langchain_bind_tools(roomy_model):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: Literal["C", "F"]) -> str:
        """Current weather in a city."""
        return "sunny"

    schema = get_weather.args_schema.model_json_schema()
    for choice in ("get_weather", "any"):  # a named function, and LangChain's spelling of "required"
        llm = roomy_model.bind_tools([get_weather], tool_choice=choice)
        msg = llm.invoke("What is the weather in Paris?")
        assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather", msg
        jsonschema.validate(msg.tool_calls[0]["args"], schema)
        assert msg.response_metadata["finish_reason"] == "tool_calls"
        streamed = None
        for chunk in llm.stream("What is the weather in Paris?"):
            streamed = chunk if streamed is None else streamed + chunk
        assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(c["name"], c["args"]) for c in msg.tool_calls]


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=150)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(roomy_model, method):
    structured = roomy_model.with_structured_output(Person, method=method)
    person = structured.invoke("Invent a person.")
    assert isinstance(person, Person)


# ---- lm-evaluation-harness ------------------------------------------------------------------------

LOGLIKELIHOOD = [("The capital of France is", " Paris"), ("The capital of France is", " Berlin"),
                 ("Question: what is two plus two?\nAnswer:", " four"), ("Roses are red, violets are", " blue")]


def engine_loglikelihood(engine, context: str, continuation: str) -> tuple[float, bool]:
    """The oracle: the engine's own prompt logprobs over the continuation's tokens, and whether
    each continuation token is the most likely one."""
    whole = engine.tokenizer.encode(context + continuation)
    start = len(engine.tokenizer.encode(context))
    out = engine.generate(input_ids=whole, sampling_params=SamplingParams(
        max_new_tokens=0, prompt_logprobs_start=start, prompt_top_logprobs=1))[0]
    assert len(out.prompt_logprobs) == len(whole) - start
    return sum(lp.logprob for lp in out.prompt_logprobs), all(lp.top[0][0] == lp.token_id for lp in out.prompt_logprobs)


@pytest.fixture
def harness_lm(server, loopback_only, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    def make(**kw):
        # tokenizer_backend "auto": it finds /tokenizer_info and /tokenize and uses the server's tokenizer
        return LocalCompletionsAPI(base_url=server.url + "/v1/completions", model="smollm2", auth_token=API_KEY,
                                   max_length=CONTEXT, max_retries=1, **kw)
    return make


@pytest.mark.parametrize("batch_size", [1, 3])
def test_lm_eval_loglikelihood_equals_engine_prompt_logprobs(harness_lm, engine, batch_size):
    from lm_eval.api.instance import Instance

    lm = harness_lm(batch_size=batch_size)
    assert lm.tokenizer_backend == "remote"
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(LOGLIKELIHOOD)],
                           disable_tqdm=True)
    for (ctx, cont), (ll, greedy_) in zip(LOGLIKELIHOOD, got):
        want_ll, want_greedy = engine_loglikelihood(engine, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-4), (ctx, cont)
        assert greedy_ == want_greedy, (ctx, cont)
    assert got[0][0] > got[1][0]  # Paris beats Berlin, or the model is not the one we think


def test_lm_eval_rolling_loglikelihood(harness_lm, engine):
    from lm_eval.api.instance import Instance

    text = "The quick brown fox jumps over the lazy dog."
    lm = harness_lm()
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = [lm.prefix_token_id] + engine.tokenizer.encode(text, add_special_tokens=False)
    out = engine.generate(input_ids=ids, sampling_params=SamplingParams(max_new_tokens=0, prompt_logprobs_start=1))[0]
    assert got == pytest.approx(sum(lp.logprob for lp in out.prompt_logprobs), abs=1e-4)


def test_lm_eval_generate_until(harness_lm, engine):
    from lm_eval.api.instance import Instance

    lm = harness_lm()
    reqs = [("Q: What is the capital of Italy?\nA:", {"until": ["\n"], "max_gen_toks": 12}),
            ("List three colours:", {"until": ["."], "max_gen_toks": 16})]
    got = lm.generate_until([Instance("generate_until", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    for (ctx, kw), text in zip(reqs, got):
        ids = engine.tokenizer.encode(ctx, add_special_tokens=False)
        want = engine.generate(input_ids=ids, sampling_params=greedy(
            kw["max_gen_toks"], stop=kw["until"] + [engine.tokenizer.eos_token]))[0].text
        assert text == want


def test_nothing_leaked(engine, server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert_no_leak(engine)
