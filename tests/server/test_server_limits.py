"""Request bounds (ServerConfig.max_*): a request past one is a 400 whose message names the limit
and whose param names the field; one at the bound is served; nothing leaks."""
from __future__ import annotations

import httpx
import pytest

from radixserve.cli import build_parser
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread

from server_fixtures import assert_no_leak, engine  # noqa: F401 - fixtures are used by name

LIMITS = dict(max_prompts=3, max_stop_strings=2, max_stop_string_chars=8, max_logit_bias=2, max_tools=1,
              max_tools_bytes=400, max_schema_bytes=120)
MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
SMALL_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
BIG_SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "integer"} for i in range(10)}}


@pytest.fixture(scope="module")
def http(engine):
    with ServerThread(build_app(engine, ServerConfig(**LIMITS))) as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            yield c


def chat(**kw):
    return {"messages": MSG, "max_tokens": 2, "temperature": 0, **kw}


def cmpl(**kw):
    return {"prompt": "hi", "max_tokens": 2, "temperature": 0, **kw}


OVER = [  # (id, path, body, param, limit named in the message)
    ("stop-count", "/v1/completions", cmpl(stop=["a", "b", "c"]), "stop", "max_stop_strings"),
    ("stop-length", "/v1/chat/completions", chat(stop=["x" * 9]), "stop", "max_stop_string_chars"),
    ("stop-token-ids", "/v1/completions", cmpl(stop_token_ids=[1, 2, 3]), "stop_token_ids", "max_stop_strings"),
    ("logit-bias", "/v1/chat/completions", chat(logit_bias={"1": 1, "2": 1, "3": 1}), "logit_bias", "max_logit_bias"),
    ("prompt-list", "/v1/completions", cmpl(prompt=["a", "b", "c", "d"]), "prompt", "max_prompts"),
    ("prompt-id-lists", "/v1/completions", cmpl(prompt=[[1], [2], [3], [4]]), "prompt", "max_prompts"),
    ("generate-texts", "/generate", {"text": ["a"] * 4}, "text", "max_prompts"),
    ("generate-stop", "/generate", {"text": "a", "sampling_params": {"stop": ["a", "b", "c"]}},
     "sampling_params.stop", "max_stop_strings"),
    ("generate-bias", "/generate", {"text": "a", "sampling_params": {"logit_bias": {"1": 1, "2": 1, "3": 1}}},
     "sampling_params.logit_bias", "max_logit_bias"),
    ("generate-schema", "/generate", {"text": "a", "sampling_params": {"json_schema": BIG_SCHEMA}},
     "sampling_params.json_schema", "max_schema_bytes"),
    ("tools-count", "/v1/chat/completions", chat(tools=[TOOL, {**TOOL, "function": {**TOOL["function"], "name": "g"}}]),
     "tools", "max_tools"),
    ("tools-bytes", "/v1/chat/completions",
     chat(tools=[{**TOOL, "function": {**TOOL["function"], "description": "d" * 500}}]), "tools", "max_tools_bytes"),
    ("schema-bytes", "/v1/chat/completions",
     chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": BIG_SCHEMA}}),
     "response_format.json_schema.schema", "max_schema_bytes"),
    ("regex-bytes", "/v1/completions", cmpl(regex="a" * 200), "regex", "max_schema_bytes"),
    ("responses-schema", "/v1/responses",
     {"input": "hi", "max_output_tokens": 2, "text": {"format": {"type": "json_schema", "name": "s",
                                                                  "schema": BIG_SCHEMA}}},
     "text.format.schema", "max_schema_bytes"),
]


@pytest.mark.parametrize("case", OVER, ids=[c[0] for c in OVER])
def test_over_limit_is_400_naming_it(http, case):
    _, path, body, param, limit = case
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert limit in err["message"] and str(LIMITS[limit]) in err["message"], err


AT = [  # at the bound: served
    ("/v1/completions", cmpl(stop=["a", "b"], prompt=["x", "y", "z"])),
    ("/v1/chat/completions", chat(stop=["x" * 8], logit_bias={"1": 1, "2": 1}, tools=[TOOL])),
    ("/v1/chat/completions", chat(response_format={"type": "json_schema",
                                                   "json_schema": {"name": "s", "schema": SMALL_SCHEMA}})),
]


@pytest.mark.parametrize("case", AT, ids=["completions", "chat-tools", "chat-schema"])
def test_at_limit_is_served(http, engine, case):  # noqa: F811
    path, body = case
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    assert_no_leak(engine)


def test_limits_are_validated_and_settable_from_the_cli():
    with pytest.raises(ValueError, match="max_tools"):
        ServerConfig(max_tools=0)
    args = build_parser().parse_args(["serve", "--max-stop-strings", "5", "--max-prompts", "9"])
    assert args.max_stop_strings == 5 and args.max_prompts == 9
    assert args.max_logit_bias == ServerConfig().max_logit_bias
