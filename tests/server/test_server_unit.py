"""Server pieces that need no model: error mapping for engine states (429, 503, 500), the stream
merger, the CLI's engine flags. A stub engine stands in; everything else is the real app over a
real uvicorn server."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from radixserve.config import EngineConfig
from radixserve.engine.errors import QueueFullError
from radixserve.engine.prepare import PreparedRequest
from radixserve.errors import FieldError
from radixserve.server import ServerConfig, build_app
from radixserve.server.streaming import merge
from radixserve.server.testing import ServerThread


class StubTokenizer:
    def encode(self, text, add_special_tokens=True):
        return [ord(c) % 100 for c in text]

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)

    def __len__(self):
        return 100


class StubEngine:
    """Just enough Engine for routes that fail before or at submission."""

    model_name = "stub"
    config = EngineConfig()  # the embedded model's settings (build_app reads config.model)
    max_context_len = 64
    tokenizer = StubTokenizer()

    def __init__(self):
        self.alive = True
        self.fail_with: BaseException | None = None

    def is_alive(self):
        return self.alive

    def prepare(self, ids, sp, over_context="clamp"):
        if not ids:
            raise FieldError("input_ids", "the prompt is empty; give at least one token")
        return PreparedRequest(tuple(ids), sp, None)

    async def agenerate(self, ids, sp=None, request_id=None, cache_salt=None):
        raise self.fail_with

    async def generate_stream(self, ids, sp=None, request_id=None, cache_salt=None):
        raise self.fail_with
        yield  # an async generator

    def abort(self, rid):
        pass

    def flush_cache(self):
        return False

    def stats(self):
        return {"prompt_tokens": 3, "requests_finished": {"stop": 2}}


@pytest.fixture(scope="module")
def stub():
    return StubEngine()


@pytest.fixture(scope="module")
def url(stub):
    with ServerThread(build_app(stub, ServerConfig())) as srv:
        yield srv.url


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert "Traceback" not in resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("stream", [False, True])
def test_queue_full_is_429(stub, url, stream):
    stub.fail_with = QueueFullError("4096 requests are queued")
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": stream})
    assert error_of(resp, 429)["type"] == "rate_limit_error"


@pytest.mark.parametrize("stream", [False, True])
def test_engine_value_error_at_submission_is_400(stub, url, stream):
    stub.fail_with = ValueError("token id 5 is outside the vocabulary")
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": stream})
    assert "outside the vocabulary" in error_of(resp, 400)["message"]


def test_internal_error_is_500_without_traceback(stub, url):
    stub.fail_with = RuntimeError("boom in the model")
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    err = error_of(resp, 500)
    assert "boom" not in err["message"]  # internals stay in the log


def test_health_follows_the_engine_loop(stub, url):
    assert httpx.get(url + "/health").status_code == 200
    stub.alive = False
    try:
        assert error_of(httpx.get(url + "/health"), 503)["type"] == "service_unavailable_error"
    finally:
        stub.alive = True


def test_flush_while_busy_is_409(url):
    error_of(httpx.post(url + "/flush_cache"), 409)


def test_metrics_read_engine_stats(url):
    text = httpx.get(url + "/metrics").text
    assert "radixserve_prompt_tokens_total 3.0" in text
    assert 'radixserve_requests_finished_total{finish_reason="stop"} 2.0' in text


def test_no_api_key_configured_means_open(url):
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "stub"


def test_merge_interleaves_and_propagates_errors():
    async def gen(items, delay, fail=False):
        for x in items:
            await asyncio.sleep(delay)
            yield x
        if fail:
            raise ValueError("stream broke")

    async def collect(streams):
        return [item async for item in merge(streams)]

    got = asyncio.run(collect([gen("abc", 0.001), gen("xy", 0.0015)]))
    assert sorted(got) == [(0, "a"), (0, "b"), (0, "c"), (1, "x"), (1, "y")]
    assert [x for i, x in got if i == 0] == ["a", "b", "c"]  # order kept within a stream
    with pytest.raises(ValueError, match="stream broke"):
        asyncio.run(collect([gen("ab", 0.001, fail=True), gen("xyz", 0.01)]))


def test_merge_close_cancels_streams():
    closed = []

    async def endless(tag):
        try:
            while True:
                await asyncio.sleep(0.001)
                yield tag
        finally:
            closed.append(tag)

    async def run():
        m = merge([endless(0), endless(1)])
        await m.__anext__()
        await m.aclose()

    asyncio.run(run())
    assert sorted(closed) == [0, 1]


def test_cli_engine_flags_map_to_engine_config():
    from radixserve.cli import build_parser
    from radixserve.engine_flags import engine_options

    args = build_parser().parse_args(["serve", "--port", "9000", "--max-total-tokens", "2048", "--page-size", "4",
                                      "--schedule-policy", "fcfs", "--disable-radix-cache", "--no-cuda-graph"])
    opts = engine_options(args)
    assert opts == {"max_total_tokens": 2048, "page_size": 4, "schedule_policy": "fcfs",
                    "disable_radix_cache": True, "cuda_graph": False}
    EngineConfig(**opts)  # every produced option is a real, valid field
    assert args.host == "127.0.0.1" and args.port == 9000 and args.api_key is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--schedule-policy", "random"])


def test_cli_cors_and_default_max_tokens_flags():
    from radixserve.cli import build_parser, server_config

    args = build_parser().parse_args(["serve", "--allowed-origins", "http://a.example, http://b.example,",
                                      "--default-max-tokens", "64"])
    config = server_config(args)
    assert config.allowed_origins == ("http://a.example", "http://b.example")
    assert config.default_max_tokens == 64
    plain = server_config(build_parser().parse_args(["serve"]))
    assert plain.allowed_origins == () and plain.default_max_tokens is None
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServerConfig(default_max_tokens=0)


def test_server_config_validates():
    with pytest.raises(ValueError, match="api_key"):
        ServerConfig(api_key="  ")
    with pytest.raises(ValueError, match="port"):
        ServerConfig(port=70000)


class AbortLog:
    def __init__(self):
        self.aborted: list[str] = []

    def abort(self, rid):
        self.aborted.append(rid)


async def _failing_after(chunks: list[bytes], exc: Exception):
    for c in chunks:
        yield c
    raise exc


async def _read(response) -> bytes:
    return b"".join([chunk async for chunk in response.body_iterator])


@pytest.mark.parametrize("api_error", [False, True])
def test_stream_failure_is_told_in_band_and_aborts(api_error):
    """A failure after the status line went out: SSE streams end with an OpenAI error event and
    [DONE], NDJSON streams with an {"error"} line; both abort every request id of the stream."""
    import orjson

    from radixserve.server.engine_io import _sse_failure, guarded_stream
    from radixserve.server.errors import APIError
    from radixserve.server.ollama import ndjson

    exc = APIError(503, "replica 1 is gone") if api_error else RuntimeError("boom")
    engine = AbortLog()
    sse_body = asyncio.run(_read(guarded_stream(engine, _failing_after([b"data: 1\n\n"], exc), ["a-0", "a-1"],
                                                "text/event-stream", _sse_failure)))
    assert engine.aborted == ["a-0", "a-1"]
    events = [e for e in sse_body.split(b"\n\n") if e]
    assert events[0] == b"data: 1" and events[-1] == b"data: [DONE]"
    err = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert err["message"] == ("replica 1 is gone" if api_error else "Internal error while streaming; see the server log.")
    assert err["type"] == ("service_unavailable_error" if api_error else "internal_error")
    engine = AbortLog()
    nd_body = asyncio.run(_read(ndjson.ndjson_response(engine, _failing_after([b'{"a":1}\n'], exc), ["b"])))
    assert engine.aborted == ["b"]
    lines = nd_body.splitlines()
    assert lines[0] == b'{"a":1}'
    assert orjson.loads(lines[-1]) == {"error": "replica 1 is gone" if api_error else
                                       "internal error while streaming; see the server log"}


def test_finished_stream_aborts_nothing():
    from radixserve.server.engine_io import _sse_failure, guarded_stream

    async def ok():
        yield b"x"

    engine = AbortLog()
    assert asyncio.run(_read(guarded_stream(engine, ok(), ["c"], "text/event-stream", _sse_failure))) == b"x"
    assert engine.aborted == []
