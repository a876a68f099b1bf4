"""The Responses API (/v1/responses) through the openai SDK and raw HTTP.

Oracles: the engine's own greedy output on the prompt the chat template renders for the same
conversation (transformers' template, not ours), the SDK's pydantic models of every response object
and stream event, and a brute-force model of the LRU store."""
from __future__ import annotations

import uuid

import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from radixserve.server import ServerConfig, build_app
from radixserve.server.responses_api.store import ResponseStore, StoredResponse
from radixserve.server.testing import ServerThread
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    assert_no_leak, client, engine, greedy, http, server)

EVENTS = TypeAdapter(ResponseStreamEvent)
SYSTEM = "You are a terse assistant. Answer in one short sentence."


def salt() -> dict:
    return {"cache_salt": uuid.uuid4().hex}  # a fresh prefix-cache namespace: cached_tokens start at 0


def test_create_matches_engine_and_sdk_model(client, http, engine):
    resp = client.responses.create(model="smollm2", instructions=SYSTEM, input="Name a fruit.",
                                   max_output_tokens=40, temperature=0, extra_body=salt())
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a fruit."}]
    ref = engine.chat(messages, greedy(40))
    assert resp.output_text == ref.text
    assert resp.status == ("completed" if ref.finish_reason == "stop" else "incomplete")
    assert resp.usage.input_tokens == len(engine.apply_chat_template(messages))
    assert resp.usage.output_tokens == len(ref.token_ids)
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.output[0].role == "assistant" and resp.output[0].id.startswith("msg_")
    raw = http.post("/v1/responses", json={"input": "Name a fruit.", "instructions": SYSTEM, "max_output_tokens": 3,
                                           "temperature": 0, "metadata": {"run": "7"}, "store": False}).json()
    Response.model_validate(raw)  # every field the SDK requires, with the right types
    assert raw["status"] == "incomplete" and raw["incomplete_details"] == {"reason": "max_output_tokens"}
    assert raw["metadata"] == {"run": "7"} and raw["store"] is False and raw["usage"]["output_tokens"] == 3


def test_input_messages_with_content_parts(client, engine):
    items = [{"role": "developer", "content": SYSTEM},
             {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "Blue.", "annotations": []}]},
             {"role": "user", "content": "Another one?"}]
    resp = client.responses.create(model="smollm2", input=items, max_output_tokens=24, temperature=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}]
    assert resp.output_text == engine.chat(messages, greedy(24)).text


def test_stream_events_as_the_sdk_expects(client, http):
    body = {"input": "Say hello to Ada.", "instructions": SYSTEM, "max_output_tokens": 48, "temperature": 0}
    full = http.post("/v1/responses", json=body).json()
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in s.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [EVENTS.validate_python(orjson.loads(line[len("data: "):])) for line in lines if line.startswith("data: ")]
    assert names == [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert full["status"] == "completed"  # the answer ended by itself, so the stream ends with response.completed
    final = "response.completed"
    head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done", final]
    assert names[:4] == head and names[-4:] == tail
    assert set(names[4:-4]) == {"response.output_text.delta"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == events[-4].text == done.output_text == full["output"][0]["content"][0]["text"]
    assert done.usage.output_tokens == full["usage"]["output_tokens"]
    assert events[0].response.status == "in_progress" and done.status == full["status"]
    # the SDK's own accumulator agrees
    with client.responses.stream(model="smollm2", **{k: v for k, v in body.items() if k != "temperature"},
                                 temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        assert stream.get_final_response().output_text == "".join(deltas) == text


def test_previous_response_id_continues_from_the_cached_tokens(client, engine):
    extra = salt()
    first = client.responses.create(model="smollm2", instructions=SYSTEM, input="Name a fruit.",
                                    max_output_tokens=64, temperature=0, extra_body=extra)
    assert first.status == "completed"  # ended with the end-of-turn token
    second = client.responses.create(model="smollm2", instructions=SYSTEM, input="And a vegetable?",
                                     previous_response_id=first.id, max_output_tokens=64, temperature=0,
                                     extra_body=extra)
    turn1 = first.usage.input_tokens + first.usage.output_tokens
    # every token turn 1 read or wrote comes from the radix tree (the last one too, when the step
    # after it was launched before the stop was seen: overlap scheduling)
    assert second.usage.input_tokens_details.cached_tokens >= turn1 - 1
    # the prompt is exactly what the model's chat template renders for the whole conversation
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "And a vegetable?"}]
    full = engine.apply_chat_template(messages)
    assert second.usage.input_tokens == len(full)
    assert second.output_text == engine.generate(input_ids=full, sampling_params=greedy(64))[0].text
    assert second.previous_response_id == first.id
    third = client.responses.create(model="smollm2", instructions=SYSTEM, input="Thanks.",
                                    previous_response_id=second.id, max_output_tokens=8, temperature=0,
                                    extra_body=extra)
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.total_tokens - 1


def test_new_instructions_replace_the_old_ones(client, engine):
    first = client.responses.create(model="smollm2", instructions=SYSTEM, input="Name a fruit.",
                                    max_output_tokens=64, temperature=0)
    second = client.responses.create(model="smollm2", instructions="Answer in French.", input="And a colour?",
                                     previous_response_id=first.id, max_output_tokens=16, temperature=0)
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "And a colour?"}]
    full = engine.apply_chat_template(messages)
    assert second.usage.input_tokens == len(full)
    assert second.output_text == engine.generate(input_ids=full, sampling_params=greedy(16))[0].text


def test_stored_responses_get_delete_and_404(client, http):
    kept = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, temperature=0)
    assert client.responses.retrieve(kept.id).output_text == kept.output_text
    unstored = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, temperature=0, store=False)
    for rid in (unstored.id, "resp_doesnotexist"):
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.create(model="smollm2", input="Again", previous_response_id=rid, max_output_tokens=2)
        assert err.value.body["param"] == "previous_response_id"
        assert "store=false" in err.value.body["message"] and "evicted" in err.value.body["message"]
    client.responses.delete(kept.id)
    resp = http.get(f"/v1/responses/{kept.id}")
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "response_id"


def test_cache_salt_scopes_previous_response_id(client):
    first = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, temperature=0,
                                    extra_body={"cache_salt": "tenant-a"})
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="smollm2", input="More", previous_response_id=first.id, max_output_tokens=2,
                                extra_body={"cache_salt": "tenant-b"})


def test_output_logprobs(client, engine):
    resp = client.responses.create(model="smollm2", input="Count: one, two,", max_output_tokens=5, temperature=0,
                                   include=["message.output_text.logprobs"], top_logprobs=2)
    ref = engine.chat([{"role": "user", "content": "Count: one, two,"}], greedy(5, logprobs=2))
    lps = resp.output[0].content[0].logprobs
    assert len(lps) == len(ref.token_ids)
    for got, want in zip(lps, ref.logprobs):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert [t.logprob for t in got.top_logprobs] == pytest.approx([v for _, v in want.top], abs=1e-4)


def test_bounded_store_evicts_least_recently_used(engine):
    app = build_app(engine, ServerConfig(responses_max_stored=2, responses_max_stored_tokens=10_000))
    with ServerThread(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        ids = [c.responses.create(input=f"Say {w}.", max_output_tokens=2, temperature=0).id for w in "abc"]
        with pytest.raises(openai.NotFoundError) as err:
            c.responses.retrieve(ids[0])
        assert "2 most recently used responses" in err.value.body["message"]
        assert c.responses.retrieve(ids[1]).id == ids[1]
        assert len(app.state.responses) == 2


def _item(rid: str, n: int) -> StoredResponse:
    from array import array
    return StoredResponse(rid, array("l", range(n)), (), None, None, {})


def test_response_store_against_a_brute_force_lru():
    import random

    rng = random.Random(5)
    store = ResponseStore(max_responses=4, max_tokens=50)
    model: list[tuple[str, int]] = []  # (id, size), least recently used first
    for step in range(400):
        rid = f"r{rng.randrange(12)}"
        if rng.random() < 0.5:
            size = rng.randrange(1, 60)
            stored = store.put(_item(rid, size))
            if size > 50:
                assert not stored
                continue
            model = [m for m in model if m[0] != rid] + [(rid, size)]
            while len(model) > 4 or sum(s for _, s in model) > 50:
                model.pop(0)
        else:
            got = store.get(rid)
            hit = [m for m in model if m[0] == rid]
            assert (got is not None) == bool(hit), step
            if hit:
                model = [m for m in model if m[0] != rid] + hit
        assert len(store) == len(model) and store.total_tokens == sum(s for _, s in model)


@pytest.mark.parametrize("body, param", [
    ({"include": ["reasoning.encrypted_content"]}, "include[0]"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"truncation": "auto"}, "truncation"),
    ({"input": []}, "input"),
    ({"text": {"format": {"type": "mystery"}}}, "text.format.type"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"max_output_tokens": -1}, "max_output_tokens"),
    ({"max_output_tokens": 5000}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_input(http, body, param):
    resp = http.post("/v1/responses", json={"input": "hi", "max_output_tokens": 2, **body})
    assert resp.status_code in (400, 404), resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    assert len(err["message"]) > 20


def test_ignored_fields_accepted(http):
    body = {"input": "hi", "max_output_tokens": 2, "temperature": 0, "user": "u", "service_tier": "auto",
            "safety_identifier": "s", "prompt_cache_key": "k", "parallel_tool_calls": False, "tool_choice": "auto",
            "tools": [], "reasoning": {"effort": None}, "truncation": "disabled", "text": {"format": {"type": "text"}},
            "include": [], "background": False}
    resp = http.post("/v1/responses", json=body)
    assert resp.status_code == 200, resp.text


def test_server_healthy_after_all(http, engine):
    assert http.get("/health").status_code == 200
    assert_no_leak(engine)
