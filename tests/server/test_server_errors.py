"""Bad input over HTTP: every case gets the right status and an OpenAI error body, and the
server keeps serving with nothing leaked."""
from __future__ import annotations


import httpx
import openai
import pytest

from server_fixtures import (  # noqa: F401 - fixtures are used by name
    API_KEY, BODY_LIMIT, CONTEXT, assert_no_leak, client, engine, greedy, http, server)


# ---- bad input: every case gets the right status and an OpenAI error body -------------------------

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"model": "smollm2", "messages": MSG, "max_tokens": 2, **kw}


def cmpl(**kw):
    return {"model": "smollm2", "prompt": "hi", "max_tokens": 2, **kw}


BAD = [  # (id, path, json body or raw bytes, expected status, expected param or None)
    ("malformed-json", CHAT, b'{"messages": [', 400, None),
    ("body-not-object", CHAT, b"[1, 2]", 400, None),
    ("invalid-utf8", CMPL, b'{"prompt": "\xff\xfe", "max_tokens": 2}', 400, None),
    ("lone-surrogate", CMPL, b'{"prompt": "\\ud800", "max_tokens": 2}', 400, None),
    ("nan-temperature", CMPL, b'{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("missing-messages", CHAT, {"model": "smollm2"}, 400, "messages"),
    ("empty-messages", CHAT, chat(messages=[]), 400, "messages"),
    ("unknown-role", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    ("content-wrong-type", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content"),
    ("image-part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
     400, "messages.0.content"),
    ("max-tokens-string", CHAT, chat(max_tokens="ten"), 400, "max_tokens"),
    ("max-tokens-float", CHAT, chat(max_tokens=2.5), 400, "max_tokens"),
    ("max-tokens-negative", CHAT, chat(max_tokens=-1), 400, None),
    ("temperature-negative", CHAT, chat(temperature=-0.5), 400, None),
    ("top-p-zero", CHAT, chat(top_p=0.0), 400, None),
    ("top-p-above-one", CMPL, cmpl(top_p=1.5), 400, None),
    ("presence-penalty-range", CMPL, cmpl(presence_penalty=5), 400, None),
    ("n-zero", CHAT, chat(n=0), 400, "n"),
    ("n-huge", CHAT, chat(n=100000), 400, "n"),
    ("top-logprobs-range", CHAT, chat(logprobs=True, top_logprobs=50), 400, None),
    ("top-logprobs-without-logprobs", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("min-tokens-over-max", CMPL, cmpl(min_tokens=5, max_tokens=2), 400, None),
    ("seed-string", CMPL, cmpl(seed="42"), 400, "seed"),
    ("unknown-model", CHAT, chat(model="gpt-7"), 404, "model"),
    ("unknown-field", CHAT, chat(frobnicate=1), 400, "frobnicate"),
    ("empty-stop", CMPL, cmpl(stop=[""]), 400, None),
    ("stop-wrong-type", CMPL, cmpl(stop=5), 400, "stop"),
    ("stream-options-without-stream", CMPL, cmpl(stream_options={"include_usage": True}), 400, "stream_options"),
    ("prompt-over-context", CMPL, cmpl(prompt=[100] * (CONTEXT + 10)), 400, None),
    ("prompt-plus-max-tokens-over-context", CMPL, cmpl(max_tokens=CONTEXT), 400, "max_tokens"),
    ("token-id-out-of-vocab", CMPL, cmpl(prompt=[10 ** 9]), 400, None),
    ("token-id-negative", CMPL, cmpl(prompt=[5, -1]), 400, None),
    ("mixed-prompt-list", CMPL, cmpl(prompt=[1, "a"]), 400, "prompt"),
    ("empty-prompt-list", CMPL, cmpl(prompt=[]), 400, "prompt"),
    ("empty-prompt-string", CMPL, cmpl(prompt=""), 400, None),
    ("generate-text-and-ids", "/generate", {"text": "a", "input_ids": [1]}, 400, "text"),
    ("generate-unknown-sampling-key", "/generate", {"text": "a", "sampling_params": {"beam": 2}}, 400,
     "sampling_params.beam"),
    ("detokenize-bad-id", "/detokenize", {"tokens": [-3]}, 400, "tokens"),
    ("tokenize-nothing", "/tokenize", {}, 400, None),
    ("oversized-body", CMPL, cmpl(prompt="x" * (BODY_LIMIT + 10)), 413, None),
]


def assert_error_body(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "Traceback" not in resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert isinstance(err["type"], str) and err["type"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(http, case):
    _, path, body, status, param = case
    if isinstance(body, bytes):
        resp = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        resp = http.post(path, json=body)
    assert_error_body(resp, status, param)


def test_bad_auth_routes_and_methods(server):
    url = server.url
    err = assert_error_body(httpx.post(url + CHAT, json=chat()), 401)
    assert err["type"] == "authentication_error"
    assert_error_body(httpx.post(url + CHAT, json=chat(), headers={"Authorization": "Bearer wrong"}), 401)
    assert_error_body(httpx.get(url + "/metrics", headers={"Authorization": API_KEY}), 401)  # no Bearer scheme
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert_error_body(httpx.get(url + "/v1/nothing-here", headers=auth), 404)
    assert_error_body(httpx.get(url + CHAT, headers=auth), 405)
    assert_error_body(httpx.get(url + "/v1/models/gpt-7", headers=auth), 404)


def test_oversized_chunked_body(server):
    def chunks():
        for _ in range(BODY_LIMIT // 1024 + 8):
            yield b" " * 1024  # no Content-Length: the server must count

    resp = httpx.post(server.url + CMPL, content=chunks(), headers={"Authorization": f"Bearer {API_KEY}"})
    assert_error_body(resp, 413)


def test_sdk_maps_errors(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=2, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-7", messages=MSG, max_tokens=2)


def test_after_bad_inputs_server_is_healthy_and_nothing_leaked(client, engine, http):
    resp = client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=3, temperature=0)
    assert resp.choices[0].message.content == engine.chat(MSG, greedy(3)).text
    assert_no_leak(engine)
    assert http.post("/flush_cache").json() == {"flushed": True}
    stats = engine.stats()
    assert stats["kv_used_tokens"] == 0, stats
