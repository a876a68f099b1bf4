"""TGI's API (POST /, /generate with an `inputs` body, /generate_stream, /info, and TGI's model ids
and response_format on /v1/chat/completions), driven by the real `huggingface_hub.InferenceClient`
pointed at one running server. Oracles: the native /generate body and `Engine.generate` with the
same greedy parameters, the tokenizer (token counts, token texts), jsonschema for structured output."""
from __future__ import annotations

import json

import jsonschema
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from server_fixtures import API_KEY, CONTEXT, engine, greedy, http, server  # noqa: F401 - fixtures are used by name

PROMPT = "The capital of France is"
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                         "population": {"type": "integer", "minimum": 0, "maximum": 100000000}},
        "required": ["name", "population"], "additionalProperties": False}


@pytest.fixture(scope="module")
def hf(server):
    return InferenceClient(base_url=server.url, api_key=API_KEY, timeout=120)


def test_text_generation_matches_native_generate(hf, http, engine):
    text = hf.text_generation(PROMPT, max_new_tokens=12)
    native = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 12,
                                                                              "temperature": 0}}).json()
    assert text == native["text"] == engine.generate(PROMPT, greedy(12))[0].text
    assert text  # the model said something


def test_tgi_body_on_generate_route(http, engine):
    """POST /generate takes TGI's body as well as the native one, told apart by `inputs`."""
    body = http.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}).json()
    assert body == {"generated_text": engine.generate(PROMPT, greedy(6))[0].text}


def test_details(hf, engine):
    out = hf.text_generation(PROMPT, max_new_tokens=7, details=True, decoder_input_details=True, top_n_tokens=2)
    ref = engine.generate(PROMPT, greedy(7))[0]
    d = out.details
    assert out.generated_text == ref.text
    assert d.finish_reason == "length" and d.generated_tokens == 7 and d.seed is None
    assert [t.id for t in d.tokens] == ref.token_ids
    tok = engine.tokenizer
    assert [t.text for t in d.tokens] == [tok.decode([i]) for i in ref.token_ids]
    assert all(t.logprob <= 0 for t in d.tokens) and not any(t.special for t in d.tokens)
    assert [p.id for p in d.prefill] == tok.encode(PROMPT, add_special_tokens=True)
    assert d.prefill[0].logprob is None and all(p.logprob <= 0 for p in d.prefill[1:])
    assert len(d.top_tokens) == 7 and all(len(top) == 2 for top in d.top_tokens)
    # greedy: the sampled token is the most likely one
    assert [top[0]["id"] for top in d.top_tokens] == ref.token_ids  # (the client leaves these as dicts)


def test_finish_reasons(hf, engine):
    ref = engine.generate(PROMPT, greedy(12))[0]
    word = ref.text.split()[1]  # a stop string the greedy output reaches
    out = hf.text_generation(PROMPT, max_new_tokens=12, stop=[word], details=True)
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text == engine.generate(PROMPT, greedy(12, stop=[word]))[0].text
    eos = hf.text_generation("Say hi.", max_new_tokens=CONTEXT // 2, details=True,
                             grammar={"type": "regex", "value": "(hi|hello)"})
    assert eos.generated_text in ("hi", "hello") and eos.details.finish_reason == "eos_token"
    tokens = eos.details.tokens
    assert eos.details.generated_tokens == len(tokens)
    assert "".join(t.text for t in tokens if not t.special) == eos.generated_text
    assert all(t.special == (t.id in engine.eos_ids) for t in tokens)


def test_stream_tokens_join_to_text(hf):
    full = hf.text_generation(PROMPT, max_new_tokens=10, return_full_text=True)
    pieces = list(hf.text_generation(PROMPT, max_new_tokens=10, stream=True))
    assert full == PROMPT + "".join(pieces)
    events = list(hf.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True))
    assert [e.token.text for e in events] == pieces
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == "".join(pieces)
    assert last.details.finish_reason == "length" and last.details.generated_tokens == len(events) == 10


def test_generate_stream_route_and_sampling_seed(http, hf):
    """/generate_stream answers TGI's events; a sampled request reports the seed that reproduces it."""
    with http.stream("POST", "/generate_stream", json={"inputs": PROMPT, "parameters": {
            "max_new_tokens": 8, "do_sample": True, "seed": 7}}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data:")]
    events = [json.loads(line[len("data:"):]) for line in lines]
    assert events[-1]["details"]["seed"] == 7 and events[-1]["details"]["input_length"] > 0
    again = hf.text_generation(PROMPT, max_new_tokens=8, do_sample=True, seed=7)
    assert again == events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)
    drawn = hf.text_generation(PROMPT, max_new_tokens=8, temperature=0.9, details=True)
    assert isinstance(drawn.details.seed, int)
    replay = hf.text_generation(PROMPT, max_new_tokens=8, temperature=0.9, seed=drawn.details.seed)
    assert replay == drawn.generated_text


def test_grammar_json(hf):
    text = hf.text_generation("A city as JSON:", max_new_tokens=96, grammar={"type": "json", "value": CITY})
    jsonschema.validate(json.loads(text), CITY)


@pytest.mark.parametrize("model", [None, "smollm2", "tgi"])
def test_chat_completion_model_ids(hf, engine, model):
    messages = [{"role": "user", "content": "Name a colour."}]
    out = hf.chat_completion(messages, model=model, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == engine.chat(messages, greedy(8)).text
    assert out.model == "smollm2"  # the served id, whatever placeholder the client sent


def test_chat_completion_json_schema(hf):
    out = hf.chat_completion([{"role": "user", "content": "Describe a city as JSON."}], max_tokens=96,
                             response_format={"type": "json_schema",
                                              "json_schema": {"name": "city", "schema": CITY}})
    jsonschema.validate(json.loads(out.choices[0].message.content), CITY)
    tgi = hf.chat_completion([{"role": "user", "content": "A city?"}], max_tokens=96,
                             response_format={"type": "json", "value": CITY})
    jsonschema.validate(json.loads(tgi.choices[0].message.content), CITY)


def test_chat_regex_and_unknown_model(hf):
    out = hf.chat_completion([{"role": "user", "content": "Yes or no?"}], max_tokens=16,
                             response_format={"type": "regex", "value": "(yes|no)"})
    assert out.choices[0].message.content in ("yes", "no")
    with pytest.raises(HfHubHTTPError) as info:  # a real model id that is not ours is still refused
        hf.chat_completion([{"role": "user", "content": "Hi"}], model="meta-llama/Llama-3.1-8B", max_tokens=4)
    assert info.value.response.status_code == 404
    assert info.value.response.json()["error"]["param"] == "model"


def test_info(hf, http, engine):
    """What InferenceClient.get_endpoint_info reads (it needs provider='hf-inference')."""
    info = http.get("/info").json()
    assert info["model_id"] == "smollm2"
    assert info["max_total_tokens"] == engine.limits.max_sequence_len == info["max_input_tokens"] + 1
    assert info["max_best_of"] == 1 and info["model_pipeline_tag"] == "text-generation"
    assert info["max_batch_total_tokens"] == engine.limits.kv_capacity
    endpoint = InferenceClient(base_url=hf.model, api_key=API_KEY, provider="hf-inference", timeout=120)
    assert endpoint.get_endpoint_info() == info


@pytest.mark.parametrize("parameters, param", [
    ({"best_of": 2}, "parameters.best_of"),
    ({"watermark": True}, "parameters.watermark"),
    ({"typical_p": 0}, "parameters.typical_p"),
    ({"temperature": -1.0}, "parameters.temperature"),
    ({"top_n_tokens": 50}, "parameters.top_n_tokens"),
    ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
    ({"max_new_tokens": CONTEXT * 2}, "parameters.max_new_tokens"),
    ({"grammar": {"type": "json", "value": {"type": "nonsense"}}}, "parameters.grammar.value"),
    ({"grammar": {"type": "yaml", "value": "x"}}, "parameters.grammar.type"),
    ({"stop": "word"}, "parameters.stop"),
    ({"no_such_thing": 1}, "parameters.no_such_thing"),
])
def test_bad_bodies_name_the_field(http, parameters, param):
    r = http.post("/", json={"inputs": PROMPT, "parameters": parameters})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_client_sees_the_error(hf):
    with pytest.raises(HfHubHTTPError) as info:
        hf.text_generation(PROMPT, max_new_tokens=4, best_of=3)
    assert info.value.response.status_code == 400
    assert info.value.response.json()["error"]["param"] == "parameters.best_of"
