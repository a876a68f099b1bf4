"""A real uvicorn server over an embedded-model engine, for the server test modules.

The server is tested the way `radixserve serve` runs it: the scheduler and model in an engine
process (EngineClient), the HTTP front end here. RADIXSERVE_TEST_LAYOUT=inprocess runs the same
tests over an in-process Engine instead (tests/server/test_server_layouts.py covers that layout in CI).
"""
from __future__ import annotations

import os
import re
import time

import httpx
import openai
import pytest

from radixserve import Engine, SamplingParams
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread

API_KEY = "sk-test-radixserve"
CONTEXT = 1024
BODY_LIMIT = 64 * 1024
MAX_N = 8
LONG_SYSTEM = ("You are a meticulous assistant for a small bakery. " * 3 +
               "Always answer politely, mention the opening hours (8am to 6pm), and never invent prices. " * 4)


# NOTE: jump-forward on (it is off by default): with it the embedded 135M model ends a required,
# parallel tool call after the calls asked for; without it, it keeps appending calls the grammar
# allows until max_tokens. The tests keep the outputs they were written against.
ENGINE_OPTIONS = dict(max_total_tokens=4096, max_context_len=CONTEXT, max_queued_requests=256, jump_forward=True)
SPLIT = os.environ.get("RADIXSERVE_TEST_LAYOUT", "split") == "split"


@pytest.fixture(scope="module")
def engine(shared_engine):
    """The engine the server serves: an EngineClient over an engine process (or an in-process Engine),
    one for all of tests/server/ (shared_engine, in tests/server/conftest.py)."""
    return shared_engine


@pytest.fixture(scope="module")
def local_engine():
    """An in-process Engine, for tests that reach into the engine's internals."""
    eng = Engine(**ENGINE_OPTIONS)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    app = build_app(engine, ServerConfig(api_key=API_KEY, max_body_bytes=BODY_LIMIT, max_n=MAX_N,
                                         served_model_name="smollm2"))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def greedy(n_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n_tokens, temperature=0.0, **kw)


def wait_idle(engine, timeout: float = 20.0) -> dict:
    """Poll until no request is running or waiting; return the stats then."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        assert time.monotonic() < deadline, f"engine still busy: {stats}"
        time.sleep(0.05)


def assert_no_leak(engine) -> None:
    stats = wait_idle(engine)
    assert stats["kv_private_tokens"] == 0, repr(stats)
    assert stats["kv_used_tokens"] == stats["kv_tree_tokens"], repr(stats)
    engine.check_integrity()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
