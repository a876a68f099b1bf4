"""Two replicas of the embedded model behind the router, against one engine with their memory.

The fleet is `radixserve serve --dp 2` as a user starts it (two replica processes and a router).
Workload: 8 tenants (system prompts of ~190 tokens) x 8 questions, chat, greedy, 2 tokens out,
4 clients; each replica's KV holds about 4 tenants' prompts, the single engine's (twice as large)
all 8. Requests come in rounds, each round one question per tenant in a shuffled order (steady
multi-tenant traffic). The single engine gets the whole workload at once (its scheduler then
orders it for the best hit rate: a baseline at least as hard as the same clients would give).
Asserted: the fleet's cached-token rate is >= 95% of the single engine's and >= 2.5x
round-robin's over the same replicas, every answer is the single engine's, each mirror ends
equal to its replica's tree, token for token, and a replica killed mid-run costs at most the
streams it was serving, after which it is restarted and taken back.
(With a uniformly shuffled order no routing can reach 2x round-robin with 2 replicas: a replica
holding k of the N prompts hits k/N of uniformly random requests, one serving N/2 tenants at most
2k/N. `radixserve bench dp` reports both orders.)
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import jsonschema
import orjson
import pytest

from port_fixtures import free_port_block, wait_serving
from radixserve import Engine, SamplingParams
from radixserve.router.config import RouterConfig
from radixserve.router.launch import RouterThread
from radixserve.router.mirror import dump_paths
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KV_PER_REPLICA = 900
CONTEXT = 512
TENANTS, QUESTIONS, MAX_TOKENS, CLIENTS = 8, 8, 2, 4
WORDS = ("alpine bakery canal delta ember fjord garnet harbor island juniper kettle lantern meadow nectar orchard "
         "pepper quarry river saffron timber umber valley willow yarrow zephyr amber basil cedar dune ferry").split()


def system_prompt(k: int) -> str:
    rng = random.Random(1000 + k)
    return f"You are the assistant of tenant {k}. " + " ".join(rng.choice(WORDS) for _ in range(130)) + "."


def workload(seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    qs = {k: [f"Question {i}: what about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"
              for i in range(QUESTIONS)] for k in range(TENANTS)}
    out = []
    for i in range(QUESTIONS):
        order = list(range(TENANTS))
        rng.shuffle(order)
        out += [[{"role": "system", "content": system_prompt(k)}, {"role": "user", "content": qs[k][i]}] for k in order]
    return out


async def _drive(url: str, requests: list[list[dict]], clients: int) -> list[dict]:
    sem, out = asyncio.Semaphore(clients), [None] * len(requests)
    async with httpx.AsyncClient(timeout=300) as c:
        async def one(i: int, messages: list[dict]) -> None:
            async with sem:
                r = await c.post(url + "/v1/chat/completions",
                                 json={"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0})
                assert r.status_code == 200, r.text
                out[i] = r.json()
        await asyncio.gather(*(one(i, m) for i, m in enumerate(requests)))
    return out


def run(url: str, requests: list[list[dict]]) -> list[dict]:
    return asyncio.run(_drive(url, requests, CLIENTS))


def cached_rate(answers: list[dict]) -> float:
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    return sum(a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers) / prompt


def same_answers(answers: list[dict], reference: list) -> bool:
    """Chat answers against the single engine's RequestOutputs: text, finish reason, token counts."""
    return [(a["choices"][0]["message"]["content"], a["choices"][0]["finish_reason"], a["usage"]["prompt_tokens"],
             a["usage"]["completion_tokens"]) for a in answers] == \
        [(o.text, o.finish_reason, o.prompt_tokens, o.completion_tokens) for o in reference]


def replica_pid(port: int) -> int:
    """The pid of the replica process this test's fleet started on `port`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"radixserve" in argv and b"serve" in argv and b"--port" in argv and \
                argv[argv.index(b"--port") + 1] == str(port).encode() and b"--dp" not in argv:
            return int(pid)
    raise LookupError(f"no replica process on port {port}")


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def replicas_state(url: str) -> list[dict]:
    return httpx.get(url + "/router/replicas", timeout=10).json()["replicas"]


@pytest.fixture(scope="module")
def fleet():
    port = free_port_block(3)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "radixserve", "serve", "--dp", "2", "--port", str(port),
                             "--max-total-tokens", str(KV_PER_REPLICA), "--max-context-len", str(CONTEXT),
                             "--poll-interval", "0.05", "--health-interval", "0.5", "--log-level", "warning"],
                            env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url, lambda u: sum(r["healthy"] for r in replicas_state(u)) == 2)
        yield url, [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"], port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(90) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            for p in (port + 1, port + 2):  # the replicas went with it
                with pytest.raises(LookupError):
                    replica_pid(p)


@pytest.fixture(scope="module")
def single_engine():
    engine = Engine(max_total_tokens=2 * KV_PER_REPLICA, max_context_len=CONTEXT)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def single(single_engine):
    with ServerThread(build_app(single_engine, ServerConfig())) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def reference(single_engine):
    """The workload, and the single engine's outputs for it (all requests at once, greedy)."""
    requests = workload()
    ids = [single_engine.apply_chat_template(m) for m in requests]
    outs = single_engine.generate(input_ids=ids, sampling_params=SamplingParams(max_new_tokens=MAX_TOKENS,
                                                                                temperature=0))
    single_engine.flush_cache()
    return requests, outs


def flush(replica_urls: list[str]) -> None:
    for u in replica_urls:
        assert httpx.post(u + "/flush_cache", timeout=30).status_code == 200


def tree_paths(replica_url: str) -> set[tuple[int, ...]]:
    body = httpx.get(replica_url + "/cache/events", params={"after": -1}, timeout=30).json()
    paths = set()
    for ns in body["resync"]["namespaces"]:
        assert ns["namespace"] is None
        paths |= {tuple(p) for p in dump_paths(ns["nodes"])}
    return paths


def test_fleet_caches_like_one_engine_and_three_times_round_robin(fleet, reference):
    _, replica_urls, _ = fleet
    requests, single_answers = reference
    rates = {}
    for policy in ("cache-aware", "round-robin"):
        flush(replica_urls)
        config = RouterConfig(replicas=tuple(replica_urls), policy=policy, poll_interval_s=0.05)
        with RouterThread(config) as rt:
            answers = run(rt.url, requests)
            assert same_answers(answers, single_answers), f"{policy}: answers differ from the single engine's"
            rates[policy] = cached_rate(answers)
            if policy == "cache-aware":
                for rep, url in zip(rt.router.replicas, replica_urls):
                    # token-exact: once the last events are in, the mirror is the replica's tree
                    wait_for(lambda: rep.mirror.paths(None) == tree_paths(url), 10, f"the mirror of {url}")
                    assert rep.stats.events > 0, "the replicas evicted (the memory is tight), and the mirror heard it"
                    assert rep.stats.requests > 0
                decisions = [r.stats.decisions for r in rt.router.replicas]
                assert sum(d.get("cold", 0) for d in decisions) <= TENANTS + 2, decisions
    single_rate = sum(o.cached_tokens for o in single_answers) / sum(o.prompt_tokens for o in single_answers)
    print(f"cached-token rate: single {single_rate:.3f}, cache-aware {rates['cache-aware']:.3f}, "
          f"round-robin {rates['round-robin']:.3f}")
    assert rates["cache-aware"] >= 0.95 * single_rate
    assert rates["cache-aware"] >= 2.5 * rates["round-robin"]


def _compare(router_url: str, single_url: str, path: str, body: dict) -> tuple[httpx.Response, httpx.Response]:
    a = httpx.post(router_url + path, json=body, timeout=120)
    b = httpx.post(single_url + path, json=body, timeout=120)
    return a, b


def _strip(obj):
    """Drop what differs between two servers answering the same request: ids, times, cache hits."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("id", "created", "cached_tokens")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def assert_same(a, b, where: str = "") -> None:
    """Equal, except log-probabilities within 1e-4 (a replica runs on fewer threads than the
    single engine: the same float sums in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-4, f"{where}: {a} != {b}"
        return
    assert type(a) is type(b), f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _events(resp: httpx.Response) -> list:
    """The stream's events, each choice's in order (how two prompts' chunks interleave is timing)."""
    events = [orjson.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")
              and line != "data: [DONE]"]
    key = {"choices": lambda e: e["choices"][0]["index"] if e.get("choices") else 1 << 30,
           "meta_info": lambda e: e["index"]}
    return sorted(events, key=key["meta_info" if events and "meta_info" in events[0] else "choices"])


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
                              "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 4,
                              "temperature": 0.9, "seed": 7, "n": 2, "logprobs": True, "top_logprobs": 2}),
    ("/v1/completions", {"prompt": ["The sky is", "Water is"], "max_tokens": 5, "temperature": 0, "stream": True}),
    ("/v1/completions", {"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 4, "temperature": 0.7, "seed": 3,
                         "logprobs": 1, "stop": ["\n"]}),
    ("/generate", {"text": "One, two,", "sampling_params": {"max_new_tokens": 5, "temperature": 0}, "stream": True}),
    ("/generate", {"input_ids": [[504, 3575], [6403, 1980]], "return_logprob": True, "top_logprobs_num": 1,
                   "sampling_params": {"max_new_tokens": 3, "temperature": 0, "n": 2}}),
])
def test_routes_answer_like_a_single_server(fleet, single, path, body):
    router_url = fleet[0]
    a, b = _compare(router_url, single, path, body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    if body.get("stream"):
        assert a.text.endswith("data: [DONE]\n\n")
        assert_same(_strip(_events(a)), _strip(_events(b)))
    else:
        assert_same(_strip(a.json()), _strip(b.json()))


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [], "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "4"}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "temperature": -1}),
    ("/v1/completions", {"prompt": [1, 2, 99999999], "max_tokens": 4}),
    ("/v1/completions", {"prompt": "hi " * 600, "max_tokens": 4}),
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}),
    ("/generate", {"text": "hi", "input_ids": [1, 2]}),
    ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 4, "n": 1000}}),
])
def test_bad_input_gets_the_single_servers_error(fleet, single, path, body):
    a, b = _compare(fleet[0], single, path, body)
    assert 400 <= a.status_code < 500 and a.status_code == b.status_code, (a.text, b.text)
    assert a.json() == b.json()
    assert httpx.get(fleet[0] + "/health").status_code == 200


COLOUR = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
          "required": ["colour"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _tool_calls(message: dict) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in message["tool_calls"]]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Pick a colour."}], "max_tokens": 20,
                              "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "colour", "schema": COLOUR, "strict": True}}}),
    ("/v1/chat/completions", {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required",
                              "max_tokens": 40, "temperature": 0}),
    ("/v1/chat/completions", {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required",
                              "max_tokens": 40, "temperature": 0, "stream": True}),
    ("/v1/completions", {"prompt": "The sky is", "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 1}),
])
def test_structured_output_tools_and_echo_go_through_the_router(fleet, single, path, body):
    """Features the router has no code for (it forwards bodies as they are) answer as one server does,
    and the answers are what was asked for: JSON valid against the schema, a call of the tool."""
    a, b = _compare(fleet[0], single, path, body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    if body.get("stream"):
        assert a.text.endswith("data: [DONE]\n\n")
        events = _events(a)
        assert_same(_strip(events), _strip(_events(b)))
        args = "".join(tc["function"].get("arguments") or "" for e in events if e["choices"]
                       for tc in e["choices"][0]["delta"].get("tool_calls") or [])
        names = [tc["function"]["name"] for e in events if e["choices"]
                 for tc in e["choices"][0]["delta"].get("tool_calls") or [] if tc["function"].get("name")]
        assert names == ["get_weather"]
        jsonschema.validate(orjson.loads(args), WEATHER["function"]["parameters"])
        return
    assert_same(_strip(a.json()), _strip(b.json()))
    choice = a.json()["choices"][0]
    if "response_format" in body:
        jsonschema.validate(orjson.loads(choice["message"]["content"]), COLOUR)
    elif "tools" in body:
        assert choice["finish_reason"] == "tool_calls"
        (name, args), = _tool_calls(choice["message"])
        assert name == "get_weather"
        jsonschema.validate(args, WEATHER["function"]["parameters"])
    else:
        assert choice["text"].startswith("The sky is") and choice["logprobs"]["tokens"][0] != ""


def test_a_responses_follow_up_goes_to_the_replica_that_stored_the_first_turn(fleet, single):
    """Turn two continues turn one's tokens on the replica that stored them (a cache hit for all of
    them), answers as one server does, and a router started later finds that replica by asking."""
    router_url, replica_urls, _ = fleet
    first = {"input": "Name a planet.", "instructions": "Answer in one word.", "max_output_tokens": 4,
             "temperature": 0}
    answers = {}
    for name, url in (("router", router_url), ("single", single)):
        one = httpx.post(url + "/v1/responses", json=first, timeout=120)
        assert one.status_code == 200, one.text
        follow = {"input": "Another one?", "previous_response_id": one.json()["id"], "max_output_tokens": 4,
                  "instructions": first["instructions"],  # NOTE: not carried over; the same keeps the prefix
                  "temperature": 0}
        two = httpx.post(url + "/v1/responses", json=follow, timeout=120)
        assert two.status_code == 200, two.text
        answers[name] = (one.json(), two.json(), follow)
    (r1, r2, follow), (s1, s2, _) = answers["router"], answers["single"]
    assert_same(_strip(r1["output"]), _strip(s1["output"]))
    assert_same(_strip(r2["output"]), _strip(s2["output"]))
    first_total = r1["usage"]["input_tokens"] + r1["usage"]["output_tokens"]
    assert r2["usage"]["input_tokens_details"]["cached_tokens"] >= first_total - 1
    got = httpx.get(f"{router_url}/v1/responses/{r2['id']}", timeout=30)
    assert got.status_code == 200 and got.json()["id"] == r2["id"]
    with RouterThread(RouterConfig(replicas=tuple(replica_urls), poll_interval_s=0.05)) as rt:
        again = httpx.post(rt.url + "/v1/responses", json=follow, timeout=120)
        assert again.status_code == 200, again.text
        assert again.json()["output"][0]["content"][0]["text"] == r2["output"][0]["content"][0]["text"]
        assert sum(r.stats.decisions.get("pinned", 0) for r in rt.router.replicas) == 1
    gone = httpx.get(router_url + "/v1/responses/resp_never_stored", timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "response_id"


def test_router_metrics(fleet):
    text = httpx.get(fleet[0] + "/metrics").text
    for name in ("radixserve_router_decisions_total", "radixserve_router_replica_hit_rate",
                 "radixserve_router_replica_mirror_tokens", "radixserve_router_replica_healthy"):
        assert name in text
    assert 'radixserve_router_replica_healthy{replica="1"} 1.0' in text


def test_a_client_leaving_a_stream_aborts_it_on_the_replica(fleet):
    router_url, replica_urls, _ = fleet

    def aborted() -> float:
        return sum(metric(httpx.get(u + "/metrics").text, "radixserve_requests_finished_total",
                          '{finish_reason="abort"}') for u in replica_urls)

    before = aborted()
    body = {"prompt": "Count to a thousand:", "max_tokens": 400, "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.stream("POST", router_url + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    wait_for(lambda: aborted() == before + 1, 60, "the replica to abort the request")
    wait_for(lambda: all(x["load"] == 0 for x in replicas_state(router_url)), 10, "the router to release it")
    for u in replica_urls:
        assert metric(httpx.get(u + "/metrics").text, "radixserve_running") == 0


def test_replica_killed_mid_run_is_survived(fleet, single, reference):
    """Kill replica 0 while 16 requests (half streamed) are in flight through the CLI router:
    every request still gets its single-engine answer, except streams that replica was serving,
    which end with an in-band 503; the router serves on; the restarted replica is taken back."""
    router_url, replica_urls, port = fleet
    requests, single_answers = reference
    picks = list(range(0, 64, 4))  # 16 requests, every tenant twice
    results: dict[int, object] = {}

    def one(i: int) -> None:
        body = {"messages": requests[i], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        if i % 8 < 4:
            with httpx.stream("POST", router_url + "/v1/chat/completions", json={**body, "stream": True},
                              timeout=300) as r:
                results[i] = (r.status_code, [line for line in r.iter_lines() if line.startswith("data: ")])
        else:
            r = httpx.post(router_url + "/v1/chat/completions", json=body, timeout=300)
            results[i] = (r.status_code, r.json())

    before = {r["index"]: r["epoch"] for r in replicas_state(router_url)}
    threads = [threading.Thread(target=one, args=(i,)) for i in picks]
    for t in threads:
        t.start()
    wait_for(lambda: replicas_state(router_url)[0]["load"] > 0, 60, "requests on replica 0")
    os.kill(replica_pid(port + 1), signal.SIGKILL)
    wait_for(lambda: not replicas_state(router_url)[0]["healthy"], 30, "the router to notice")
    # while it is down the router serves on the other replica
    r = httpx.post(router_url + "/v1/chat/completions", json={"messages": requests[1], "max_tokens": MAX_TOKENS,
                                                              "temperature": 0}, timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == single_answers[1].text
    for t in threads:
        t.join(300)
    assert len(results) == len(picks)

    # the same 8 greedy tokens the single engine gives, or (streams only) an in-band 503
    with httpx.Client(timeout=120) as c:
        ok = 0
        for i in picks:
            status, got = results[i]
            assert status == 200
            want = c.post(single + "/v1/chat/completions", json={"messages": requests[i], "max_tokens": 8,
                                                                 "temperature": 0, "ignore_eos": True}).json()
            if isinstance(got, dict):
                assert got["choices"][0]["message"] == want["choices"][0]["message"]
                ok += 1
                continue
            assert got[-1] == "data: [DONE]"
            chunks = [orjson.loads(x[6:]) for x in got[:-1]]
            if "error" in chunks[-1]:
                assert chunks[-1]["error"]["type"] == "service_unavailable_error"
                continue
            text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
            assert text == want["choices"][0]["message"]["content"]
            ok += 1
    assert ok >= len(picks) // 2  # all non-streamed requests at least (they fail over)
    assert replicas_state(router_url)[0]["failed"] >= 1  # what was in flight there failed there, and moved or ended

    # the supervisor restarts replica 0; the router's health checks take it back with a fresh mirror
    wait_for(lambda: replicas_state(router_url)[0]["healthy"], 240, "replica 0 back")
    assert replicas_state(router_url)[0]["epoch"] != before[0]
    colds = replicas_state(router_url)[0]["decisions"].get("cold", 0)
    cold = [{"role": "system", "content": "A brand new tenant. " * 20}, {"role": "user", "content": "Hello?"}]
    r = httpx.post(router_url + "/v1/chat/completions", json={"messages": cold, "max_tokens": 2, "temperature": 0},
                   timeout=120)
    assert r.status_code == 200
    # a new prefix goes to the replica holding the fewest tokens: the fresh one
    assert replicas_state(router_url)[0]["decisions"].get("cold", 0) == colds + 1
