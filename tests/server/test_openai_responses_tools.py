"""Function calling on the Responses API (/v1/responses) through the openai SDK and raw HTTP.

Oracles: jsonschema validation of every call's arguments against the function's `parameters`;
the SDK's pydantic models of response objects and stream events (and its own stream
accumulator); /v1/chat/completions on the same conversation (a route with its own request shape,
which renders the same prompt for tool_choice auto); the engine's greedy output on the exact
prompt a follow-up stored; a hand-written chat-template tail for a tool result."""
from __future__ import annotations

import json
import uuid

import jsonschema
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from server_fixtures import (  # noqa: F401 - fixtures are used by name
    assert_no_leak, client, engine, greedy, http, server)

EVENTS = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}}},
           "strict": True}
TIME = {"type": "function", "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                       "properties": {"zone": {"type": "string", "maxLength": 12}}},
        "strict": True}
SCHEMAS = {t["name"]: t["parameters"] for t in (WEATHER, TIME)}
ASK = "What is the weather in Paris?"


def salt() -> dict:
    return {"cache_salt": uuid.uuid4().hex}  # a fresh prefix-cache namespace: cached_tokens start at 0


def nested(tool: dict) -> dict:
    """The chat completions shape of a Responses function tool."""
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


def calls_of(output: list) -> list:
    return [item for item in output if item.type == "function_call"]


def check_call(call, names=tuple(SCHEMAS)) -> dict:
    assert call.type == "function_call" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name in names
    args = json.loads(call.arguments)
    jsonschema.validate(args, SCHEMAS[call.name])
    return args


def sse_events(http, body: dict) -> list:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as s:
        assert s.status_code == 200
        lines = [line for line in s.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [EVENTS.validate_python(orjson.loads(line[len("data: "):])) for line in lines if line.startswith("data: ")]
    assert names == [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("parallel", [True, False])
def test_required_gives_calls_valid_under_their_schemas(client, http, parallel):
    resp = client.responses.create(model="smollm2", input="What is the weather in Paris, and the time in Tokyo?",
                                   tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel,
                                   max_output_tokens=80, temperature=0)
    assert resp.tool_choice == "required" and resp.parallel_tool_calls is parallel
    calls = calls_of(resp.output)
    assert calls and len(calls) == len(resp.output)  # only calls: the output is constrained to a call array
    for call in calls:  # every whole call in the array, also when a long array was cut short
        check_call(call)
    if not parallel:  # maxItems 1: the array closes after one call
        assert len(calls) == 1 and resp.status == "completed"
    assert [t.name for t in resp.tools] == ["get_weather", "get_time"]
    raw = http.post("/v1/responses", json={"input": ASK, "tools": [WEATHER], "tool_choice": "required",
                                           "max_output_tokens": 60, "temperature": 0}).json()
    Response.model_validate(raw)
    assert [o["type"] for o in raw["output"]] == ["function_call"] * len(raw["output"])


def test_required_streamed_through_create_reads_like_the_whole_answer(client):
    body = dict(model="smollm2", input=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                max_output_tokens=60, temperature=0)
    whole = client.responses.create(**body)
    events = list(client.responses.create(stream=True, **body))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(d.name, d.arguments) for d in done] == [(c.name, c.arguments) for c in whole.output]
    assert check_call(done[0]) == json.loads(whole.output[0].arguments)
    args_done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.arguments for e in args_done] == [d.arguments for d in done]
    assert events[-1].type == "response.completed" and events[-1].response.output[0].call_id == done[0].call_id


def test_named_function_streams_its_arguments(client, http):
    body = {"input": ASK, "tools": [TIME, WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 60, "temperature": 0}
    whole = client.responses.create(model="smollm2", **body)
    (call,) = whole.output
    assert check_call(call, ("get_weather",))["city"]
    assert whole.tool_choice.name == "get_weather"
    events = sse_events(http, body)
    names = [e.type for e in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert set(names[3:-3]) == {"response.function_call_arguments.delta"}
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.status == "in_progress" and added.arguments == ""
    assert added.call_id == done.call_id and added.id == done.id == events[3].item_id
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == events[-3].arguments == done.arguments == call.arguments  # greedy: the same call
    assert done.status == "completed" and events[-1].response.output[0].arguments == call.arguments
    with client.responses.stream(model="smollm2", **body) as stream:  # the SDK's own accumulator
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output[0].arguments == call.arguments and final.output[0].name == "get_weather"


def test_named_call_cut_short_is_incomplete(client):
    resp = client.responses.create(model="smollm2", input=ASK, tools=[WEATHER], max_output_tokens=3, temperature=0,
                                   tool_choice={"type": "function", "name": "get_weather"})
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    (call,) = resp.output
    assert call.type == "function_call" and call.status == "incomplete" and resp.usage.output_tokens == 3


def test_auto_gives_text_or_parseable_calls_like_chat(client, http):
    resp = client.responses.create(model="smollm2", input=ASK, tools=[WEATHER], max_output_tokens=24, temperature=0)
    assert resp.tool_choice == "auto"
    for item in resp.output:
        assert item.type in ("message", "function_call")
        if item.type == "function_call":
            check_call(item)
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": ASK}],
                                          tools=[nested(WEATHER)], max_tokens=24, temperature=0)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens  # the same prompt as the chat route
    assert resp.output_text == (chat.choices[0].message.content or "")
    assert len(calls_of(resp.output)) == len(chat.choices[0].message.tool_calls or [])
    # streamed, the same text arrives in deltas
    events = sse_events(http, {"input": ASK, "tools": [WEATHER], "max_output_tokens": 24, "temperature": 0})
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == resp.output_text
    assert events[-1].response.output_text == resp.output_text


def test_function_call_output_follow_up_continues_the_cached_tokens(client, server, engine):
    extra = salt()
    first = client.responses.create(model="smollm2", input=ASK, tools=[WEATHER], tool_choice="required",
                                    parallel_tool_calls=False, max_output_tokens=60, temperature=0, extra_body=extra)
    assert first.status == "completed"
    (call,) = first.output
    check_call(call)
    result = '{"temp_c": 21, "sky": "clear"}'
    second = client.responses.create(model="smollm2", previous_response_id=first.id, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": result}],
                                     max_output_tokens=24, temperature=0, extra_body=extra)
    turn1 = first.usage.input_tokens + first.usage.output_tokens
    # every token turn 1 read or wrote is served from the radix tree (the last one too, unless the
    # step after it was launched before the stop was seen)
    assert second.usage.input_tokens_details.cached_tokens >= turn1 - 1
    store = server.server.config.app.state.responses
    ids1, ids2 = list(store.get(first.id).tokens), list(store.get(second.id).tokens)
    prompt2 = ids2[:second.usage.input_tokens]
    assert prompt2[:len(ids1)] == ids1  # token-exact: turn 2 starts with all of turn 1
    tail = engine.tokenizer.decode(prompt2[len(ids1):], skip_special_tokens=False)
    assert tail == f"\n<|im_start|>user\n<tool_response>\n{result}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ref = engine.generate(input_ids=prompt2, sampling_params=greedy(24))[0]
    assert second.output_text == ref.text.strip()  # auto: content is the text with its ends trimmed
    # streamed, the same follow-up reads the same
    with client.responses.stream(model="smollm2", previous_response_id=first.id, tools=[WEATHER],
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": result}],
                                 max_output_tokens=24, temperature=0, extra_body=extra) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    assert streamed.output_text == second.output_text
    assert streamed.usage.input_tokens_details.cached_tokens >= turn1 - 1


def test_whole_conversation_as_input_items_matches_chat(client, http):
    """Calls and results sent as input items (no stored state) read as chat's tool_calls history."""
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Lyon"}',
              "id": "fc_2", "status": "completed"},
             {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
             {"type": "function_call_output", "call_id": "call_2",
              "output": [{"type": "input_text", "text": '{"temp_c": 18}'}]}]
    resp = client.responses.create(model="smollm2", input=items, tools=[WEATHER], max_output_tokens=16, temperature=0)
    messages = [{"role": "user", "content": ASK},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Lyon"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
                {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c": 18}'}]
    chat = client.chat.completions.create(model="smollm2", messages=messages, tools=[nested(WEATHER)], max_tokens=16,
                                          temperature=0)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.output_text == (chat.choices[0].message.content or "")
    # an SDK output sent back as it was returned is valid input
    first = client.responses.create(model="smollm2", input=ASK, tools=[WEATHER], tool_choice="required",
                                    max_output_tokens=60, temperature=0)
    back = [{"role": "user", "content": ASK}] + [o.model_dump(exclude_none=True) for o in first.output] + [
        {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "21 C"}]
    assert http.post("/v1/responses", json={"input": back, "tools": [WEATHER], "max_output_tokens": 4}).status_code == 200


def test_tool_choice_none_offers_no_tools(client):
    plain = client.responses.create(model="smollm2", input=ASK, max_output_tokens=12, temperature=0)
    none = client.responses.create(model="smollm2", input=ASK, tools=[WEATHER], tool_choice="none",
                                   max_output_tokens=12, temperature=0)
    assert none.output_text == plain.output_text and none.usage.input_tokens == plain.usage.input_tokens
    assert none.tool_choice == "none" and not calls_of(none.output)


CALL = {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city": "Oslo"}'}


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}, "tools[0].function"),
    ({"tools": ["get_weather"]}, "tools[0]"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_stock"}}, "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"tools": [WEATHER], "include": ["message.output_text.logprobs"]}, "include"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input[0].call_id"),
    ({"input": [{**CALL, "arguments": "{city"}]}, "input[0].arguments"),
    ({"input": [{**CALL, "arguments": "[1]"}]}, "input[0].arguments"),
    ({"input": [{k: v for k, v in CALL.items() if k != "call_id"}]}, "input[0].call_id"),
    ({"input": [CALL, {"type": "function_call_output", "call_id": "call_9", "output": 7}]}, "input[1].output"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": "hi", "extra": 1}]}, "input[0].extra"),
])
def test_bad_tool_input(http, engine, body, param):
    resp = http.post("/v1/responses", json={"input": ASK, "max_output_tokens": 2, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    assert len(err["message"]) > 20 and err["type"] == "invalid_request_error"


def test_bad_schema_in_a_required_call_names_the_tool(http):
    bad = {**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": "strin"}}}}
    resp = http.post("/v1/responses", json={"input": ASK, "tools": [bad], "max_output_tokens": 4,
                                            "tool_choice": {"type": "function", "name": "get_weather"}})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "tools[0].parameters"


def test_nothing_leaked(engine, http):
    assert http.get("/health").status_code == 200
    assert_no_leak(engine)
