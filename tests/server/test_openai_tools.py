"""Tool calling on /v1/chat/completions: reading calls out of text (whole and streamed in every
split), the prompt the tools go into, the history of calls and results, and bad input.

Oracles: hand-written answers with known calls, re-split at random (a streamed answer must read
exactly like the whole one), and the decoded prompt."""
from __future__ import annotations

import json
import random

import pytest

from radixserve.server.openai import tools
from radixserve.server.errors import APIError
from radixserve.server.openai.protocol import ChatCompletionRequest
from radixserve.server.openai.tool_stream import ToolReader, assemble
from server_fixtures import (  # noqa: F401 - fixtures are used by name
    assert_no_leak, client, engine, greedy, http, server)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def make_plan(tool_choice=None, parallel=None, tool_defs=(WEATHER, TIME)):
    body = {"messages": ASK, "tools": list(tool_defs)}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    return tools.plan(ChatCompletionRequest.model_validate(body), native=False)


def read(plan, text: str, rng: random.Random | None = None):
    """Feed `text` whole, or in random pieces; the assembled message."""
    reader = ToolReader(plan)
    pieces = []
    if rng is None:
        pieces += reader.feed(text)
    else:
        i = 0
        while i < len(text):
            n = rng.randrange(1, 9)
            pieces += reader.feed(text[i:i + n])
            i += n
    pieces += reader.finish()
    return assemble(pieces), reader


AUTO_CASES = [  # (text, content, [(name, arguments)])
    ("Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
     "Sure.", [("get_weather", {"city": "Paris"})]),
    ("<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>\n"
     "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}</tool_call>",
     None, [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]),
    ("No tools needed: 2 < 3 and <tool_ is not a tag.", "No tools needed: 2 < 3 and <tool_ is not a tag.", []),
    ("<tool_call>{\"name\": \"launch_rocket\", \"arguments\": {}}</tool_call> done",
     "<tool_call>{\"name\": \"launch_rocket\", \"arguments\": {}}</tool_call> done", []),  # unknown tool: text
    ("<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", []),
    ("Let me check. <tool_call>{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}</tool_call>  Then more.  ",
     "Let me check.   Then more.", [("get_time", {"zone": "UTC"})]),
    ("Cut short <tool_call>{\"name\": \"get_weather\", \"argu", "Cut short <tool_call>{\"name\": \"get_weather\", \"argu",
     []),
    ("<tool_call>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}</tool_call>", None,
     [("get_weather", {"city": "Oslo"})]),
]


@pytest.mark.parametrize("case", range(len(AUTO_CASES)))
def test_auto_reads_calls_whole_and_streamed(case):
    text, content, calls = AUTO_CASES[case]
    plan = make_plan()
    whole, reader = read(plan, text)
    assert whole.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole.tool_calls] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole.tool_calls)
    assert reader.calls == len(calls)
    for seed in range(25):  # any split of the stream reads the same
        streamed, _ = read(plan, text, random.Random(seed))
        assert streamed.content == content
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in streamed.tool_calls] == \
               [(c["function"]["name"], c["function"]["arguments"]) for c in whole.tool_calls]


def test_parallel_false_keeps_the_first_call():
    text = AUTO_CASES[1][0]
    got, _ = read(make_plan(parallel=False), text)
    assert [c["function"]["name"] for c in got.tool_calls] == ["get_weather"]


def test_required_reads_a_json_array_of_calls_in_any_split():
    calls = [{"name": "get_weather", "arguments": {"city": "Pa\"r{is}", "unit": "C"}},
             {"name": "get_time", "arguments": {"zone": "[UTC]\\"}}]
    text = json.dumps(calls)
    plan = make_plan("required")
    for seed in [None] + list(range(20)):
        got, _ = read(plan, text, None if seed is None else random.Random(seed))
        assert got.content is None
        assert [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                for c in got.tool_calls] == calls


def test_named_streams_arguments_as_they_grow():
    plan = make_plan({"type": "function", "function": {"name": "get_time"}})
    reader = ToolReader(plan)
    first = reader.feed('{"zone"')
    assert first[0].name == "get_time" and first[0].id.startswith("call_") and first[0].arguments == ""
    assert first[0].delta()["tool_calls"][0]["function"] == {"name": "get_time", "arguments": ""}
    rest = reader.feed(': "CET"}') + reader.finish()
    assert all(p.id is None and p.name is None for p in first[1:] + rest)
    got = assemble(first + rest)
    assert got.tool_calls[0]["function"] == {"name": "get_time", "arguments": '{"zone": "CET"}'}


def test_constraints_of_required_and_named():
    req = tools.constraint(make_plan("required"))
    assert req.field == "json_schema" and req.value["minItems"] == 1
    assert req.value["maxItems"] == 2  # parallel calls: at most one per tool offered
    items = req.value["items"]["anyOf"]
    assert [i["properties"]["name"]["const"] for i in items] == ["get_weather", "get_time"]
    assert items[0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    assert tools.constraint(make_plan("required", parallel=False)).value["maxItems"] == 1
    named = tools.constraint(make_plan({"type": "function", "function": {"name": "get_weather"}}))
    assert named.value == WEATHER["function"]["parameters"] and named.param == "tools[0].function.parameters"
    assert tools.constraint(make_plan("auto")) is None and tools.constraint(make_plan("none")) is None


def test_plan_rejects_unknown_and_duplicate_names():
    with pytest.raises(APIError) as err:
        make_plan({"type": "function", "function": {"name": "get_stock"}})
    assert err.value.param == "tool_choice.function.name" and "get_weather" in err.value.message
    with pytest.raises(APIError) as err:
        make_plan(tool_defs=(WEATHER, WEATHER))
    assert err.value.param == "tools[1].function.name"


# ---- over HTTP (the embedded model) ---------------------------------------------------------------

def decoded_prompt(engine, body: dict) -> str:
    req = ChatCompletionRequest.model_validate(body)
    plan = tools.plan(req, native=tools.template_renders_tools(engine.tokenizer))
    return engine.tokenizer.decode(engine.apply_chat_template(tools.template_messages(req.messages, plan)),
                                   skip_special_tokens=False)


def test_embedded_template_gets_tools_in_the_system_prompt(engine):
    assert not tools.template_renders_tools(engine.tokenizer)  # SmolLM2's template has no tools section
    text = decoded_prompt(engine, {"messages": [{"role": "system", "content": "Be brief."}] + ASK, "tools": [WEATHER]})
    system = text[:text.index("<|im_end|>")]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n")
    assert json.dumps(WEATHER) in system and "<tool_call>" in system
    assert "What is the weather in Paris?" in text[len(system):]
    none = decoded_prompt(engine, {"messages": ASK, "tools": [WEATHER], "tool_choice": "none"})
    assert "get_weather" not in none  # tool_choice none: the tools are not offered


def test_auto_answer_without_calls_is_plain_content(client, engine):
    resp = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=12,
                                          temperature=0)
    req = ChatCompletionRequest.model_validate({"messages": ASK, "tools": [WEATHER]})
    ids = engine.apply_chat_template(tools.template_messages(req.messages, tools.plan(req, False)))
    ref = engine.generate(input_ids=ids, sampling_params=greedy(12))[0]
    assert "<tool_call>" not in ref.text  # this model does not call tools unprompted
    assert resp.choices[0].message.content == ref.text.strip() and resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == ref.finish_reason
    plain = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=12, temperature=0)
    assert plain.choices[0].message.content == engine.chat(ASK, greedy(12)).text


def test_history_with_tool_calls_and_results(client, http, engine):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c": 18}'}]
    text = decoded_prompt(engine, {"messages": history, "tools": [WEATHER]})
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call><|im_end|>') in text
    assert ('<|im_start|>user\n<tool_response>\n{"temp_c": 21}\n</tool_response>\n<tool_response>\n{"temp_c": 18}'
            '\n</tool_response><|im_end|>\n<|im_start|>assistant\n') in text
    resp = client.chat.completions.create(model="smollm2", messages=history, tools=[WEATHER], max_tokens=8,
                                          temperature=0)
    assert resp.usage.prompt_tokens == len(engine.tokenizer.encode(text))
    # the SDK's own message object can be sent back as it was returned
    back = history[:1] + [resp.choices[0].message.model_dump()] + [{"role": "user", "content": "Thanks."}]
    assert http.post("/v1/chat/completions", json={"messages": back, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_stock"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name"),
    ({"messages": ASK + [{"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{city"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
])
def test_bad_tool_input(http, body, param):
    resp = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2, **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param, resp.text


def test_nothing_leaked(engine, http):
    assert http.get("/health").status_code == 200
    assert_no_leak(engine)
