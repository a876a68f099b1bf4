"""The router's parts without processes: policy, failover (replicas faked with httpx.MockTransport),
the poller's protocol, the native body and answers, configuration and CLI flags."""
from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from radixserve.cli import build_parser
from radixserve.engine_flags import engine_argv, engine_options
from radixserve.router.config import RouterConfig
from radixserve.router.answers import AnswerReader, event_data, sse_events
from radixserve.router.frontend import Frontend, load_router_tokenizer
from radixserve.router.policy import CacheAware, RoundRobin
from radixserve.router.replica import PROBE_MESSAGES, Replica
from radixserve.router.prompts import RouteKey, route_key
from radixserve.router.router import Answer, Passthrough, ResponseHomes, Router
from radixserve.router.token_tree import TokenTree
from radixserve.server.openai import params
from radixserve.server.errors import APIError

SYSTEM = list(range(100, 160))  # a 60-token cached prefix


def replica(index: int, load: int = 0, cached: list[list[int]] = (), namespace=None) -> Replica:
    r = Replica(index, f"http://r{index}", {})
    r.healthy, r.compatible, r.load = True, True, load
    r.info = {"model": "m", "max_model_len": 512, "vocab_size": 1000, "page_size": 1, "cache_enabled": True}
    if cached:
        tree = r.mirror.trees.setdefault(namespace, TokenTree())
        for c in cached:
            tree.insert(c)
    return r


# ---- policy ---------------------------------------------------------------------------------------
def test_longest_match_wins_until_the_load_gap_passes_both_thresholds():
    policy = CacheAware(abs_threshold=4, rel_threshold=2.0)
    prompt = SYSTEM + [1, 2, 3]
    hot, cold = replica(0, load=5, cached=[SYSTEM + [9]]), replica(1, load=1)
    d = policy.choose([hot, cold], None, [prompt])
    assert (d.replica, d.reason, d.predicted) == (hot, "cache", [60])
    hot.load = 6  # 6 - 1 > 4 and 6 > 2 * 1
    assert policy.choose([hot, cold], None, [prompt])[:2] == (cold, "balance")
    cold.load = 4  # gap 2: balanced enough again
    assert policy.choose([hot, cold], None, [prompt])[:2] == (hot, "cache")


def test_cold_prompts_spread_to_the_emptiest_replica_and_short_matches_count_as_none():
    policy = CacheAware(abs_threshold=16, rel_threshold=1.5, min_match_fraction=0.3)
    full = replica(0, cached=[SYSTEM])
    empty = replica(1)
    new = [1, 2, 3] + list(range(500, 540))  # shares 0 tokens
    assert policy.choose([full, empty], None, [new])[:2] == (empty, "cold")
    short = SYSTEM[:5] + list(range(600, 640))  # 5 of 45 tokens cached: under 30%
    assert policy.choose([full, empty], None, [short])[:2] == (empty, "cold")
    assert policy.choose([full, empty], None, [SYSTEM + [7]])[:2] == (full, "cache")


def test_ties_go_to_the_lighter_load_and_namespaces_never_match_each_other():
    policy = CacheAware(abs_threshold=16, rel_threshold=1.5)
    a, b = replica(0, load=3, cached=[SYSTEM]), replica(1, load=1, cached=[SYSTEM])
    assert policy.choose([a, b], None, [SYSTEM + [5]]).replica is b
    salted = replica(2, cached=[SYSTEM], namespace="tenant-x")
    assert salted.mirror.predicted_hit(None, SYSTEM + [5]) == 0
    assert salted.mirror.predicted_hit("tenant-x", SYSTEM + [5]) == 60


def test_prompts_in_flight_attract_their_followers():
    """A burst of one prefix lands on one replica before the first request finishes."""
    policy = CacheAware(abs_threshold=16, rel_threshold=1.5)
    a, b = replica(0), replica(1)
    first = policy.choose([a, b], None, [SYSTEM + [1]])
    first.replica.begin(None, [SYSTEM + [1]], 1, first.predicted, first.reason)
    follower = policy.choose([a, b], None, [SYSTEM + [2]])
    assert follower.replica is first.replica and follower.reason == "cache" and follower.predicted == [60]


def test_round_robin_takes_turns_and_skips_replicas_that_are_down():
    rr = RoundRobin()
    reps = [replica(i) for i in range(3)]
    assert [rr.choose(reps, None, [[1, 2]]).replica.index for _ in range(4)] == [0, 1, 2, 0]
    up = [reps[0], reps[2]]
    assert [rr.choose(up, None, [[1, 2]]).replica.index for _ in range(3)] == [2, 0, 2]


# ---- failover ---------------------------------------------------------------------------------------
class FakeFrontend:
    tools_native = False

    def apply_chat_template(self, messages, tools=None):
        return [1, 2, 3]


def native_answer(prompt_len: int, text: str = "ok", ids=(5, 6), cached: int = 0, finish="length") -> dict:
    return {"text": text, "output_ids": list(ids), "index": 0,
            "meta_info": {"id": "gen-x", "prompt_tokens": prompt_len, "cached_tokens": cached,
                          "completion_tokens": len(ids), "finish_reason": finish, "matched_stop": None}}


def make_router(handlers: dict[str, callable], **config) -> Router:
    rt = Router(RouterConfig(replicas=tuple(handlers), **config), FakeFrontend())

    def route(request: httpx.Request) -> httpx.Response:
        return handlers[f"{request.url.scheme}://{request.url.host}"](request)

    rt.client = httpx.AsyncClient(transport=httpx.MockTransport(route))
    for r in rt.replicas:
        r.healthy, r.compatible = True, True
    return rt


def refuse(request):
    raise httpx.ConnectError("connection refused", request=request)


KEY = RouteKey([[7, 8, 9]], None, 1)


def test_a_request_fails_over_and_the_body_arrives_unchanged():
    seen = []

    def ok(request):
        seen.append((request.url.host, request.url.path, request.content))
        return httpx.Response(200, json=native_answer(3, cached=2))

    rt = make_router({"http://a": refuse, "http://b": ok}, policy="round-robin")
    body = b'{"input_ids": [7, 8, 9], "some_new_field": {"x": 1}}'
    answer = asyncio.run(rt.forward("/generate", body, KEY))
    assert isinstance(answer, Answer) and orjson.loads(answer.body)["text"] == "ok"
    assert seen == [("b", "/generate", body)]
    a, b = rt.replicas
    assert not a.healthy and a.stats.failed == 1 and "refused" in a.last_error
    assert b.healthy and b.stats.requests == 1 and a.load == b.load == 0 and rt.failovers == 1
    assert (b.stats.prompt_tokens, b.stats.cached_tokens, b.stats.reported) == (3, 2, 1)
    assert not a.mirror.inflight and b.mirror.pending  # b's answer waits for b's next events


def test_a_kept_alive_connection_the_replica_closed_is_retried_on_the_same_replica():
    calls = []

    def flaky(request):
        calls.append(request.url.host)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json=native_answer(2))

    rt = make_router({"http://a": flaky, "http://b": refuse}, policy="round-robin")
    assert orjson.loads(asyncio.run(rt.forward("/generate", b"{}", KEY)).body)["text"] == "ok"
    assert calls == ["a", "a"] and rt.replicas[0].healthy and rt.failovers == 0


def test_503_fails_over_4xx_passes_through_and_no_replica_left_is_a_503():
    body_400 = {"error": {"message": "bad", "type": "invalid_request_error", "param": "prompt", "code": None}}
    rt = make_router({"http://a": lambda r: httpx.Response(503, json={"error": {}}),
                      "http://b": lambda r: httpx.Response(400, json=body_400)}, policy="round-robin")
    with pytest.raises(Passthrough) as exc:
        asyncio.run(rt.forward("/v1/completions", b"{}", KEY))
    assert exc.value.status == 400 and orjson.loads(exc.value.body) == body_400
    assert not rt.replicas[0].healthy and rt.replicas[1].healthy
    rt.replicas[1].healthy = False
    with pytest.raises(APIError) as err:
        asyncio.run(rt.forward("/v1/completions", b"{}", KEY))
    assert err.value.status == 503 and "http://a" in err.value.message
    assert all(r.load == 0 for r in rt.replicas)


def sse_of(*objs) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_a_stream_fails_over_before_its_first_event_and_is_relayed_byte_for_byte():
    sse = sse_of(native_answer(2, "o", (5,), finish=None), native_answer(2, "ok", (5, 6), cached=1))
    rt = make_router({"http://a": refuse,
                      "http://b": lambda r: httpx.Response(200, content=sse,
                                                           headers={"content-type": "text/event-stream"})},
                     policy="round-robin")

    async def go():
        upstream = await rt.forward("/generate", b"{}", RouteKey([[7, 8]], None, 1))
        return b"".join([e async for e in upstream])

    assert asyncio.run(go()) == sse
    b = rt.replicas[1]
    assert b.stats.requests == 1 and b.load == 0 and (b.stats.prompt_tokens, b.stats.cached_tokens) == (2, 1)


def test_a_stream_closed_before_it_was_read_gives_its_slot_back():
    sse = b'data: ' + orjson.dumps(native_answer(2, finish=None)) + b'\n\n'
    rt = make_router({"http://a": lambda r: httpx.Response(200, content=sse,
                                                           headers={"content-type": "text/event-stream"})})

    async def go():
        upstream = await rt.forward("/generate", b"{}", RouteKey([[7, 8]], None, 1))
        assert rt.replicas[0].load == 1 and rt.replicas[0].mirror.inflight
        await upstream.aclose()
        await upstream.aclose()  # idempotent
        return [c async for c in upstream]

    assert asyncio.run(go()) == []
    r = rt.replicas[0]
    assert r.load == 0 and not r.mirror.inflight and r.stats.failed == 1 and r.stats.requests == 0


def test_a_responses_follow_up_goes_only_to_the_replica_that_stored_its_response():
    seen = []

    def replica(name):
        def handle(request):
            seen.append((name, request.method, request.url.path))
            if request.method == "GET":  # the router asks who stored an id it does not know
                return httpx.Response(200 if name == "b" else 404, json={"id": "resp_1"})
            return httpx.Response(200, json={"id": f"resp_{name}2", "object": "response", "usage": {
                "input_tokens": 9, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 8}}})
        return handle

    rt = make_router({"http://a": replica("a"), "http://b": replica("b")}, policy="round-robin")
    follow = RouteKey([], None, 1, "resp_1")
    for _ in range(2):
        asyncio.run(rt.forward("/v1/responses", b"{}", follow))
    posts = [x for x in seen if x[1] == "POST"]
    assert posts == [("b", "POST", "/v1/responses")] * 2
    assert [x for x in seen if x[1] == "GET"] == [("a", "GET", "/v1/responses/resp_1"),
                                                  ("b", "GET", "/v1/responses/resp_1")]  # asked once, remembered
    assert rt.homes.get("resp_b2") == 1 and rt.replicas[1].stats.decisions == {"pinned": 2}
    rt.replicas[1].healthy = False
    with pytest.raises(APIError) as err:  # never moved to a replica without the stored turn
        asyncio.run(rt.forward("/v1/responses", b"{}", follow))
    assert err.value.status == 503 and err.value.param == "previous_response_id"


def test_response_homes_are_bounded():
    homes = ResponseHomes(2)
    for i in range(3):
        homes.put(f"r{i}", i)
    assert len(homes) == 2 and homes.get("r0") is None and homes.get("r2") == 2


# ---- the poller -------------------------------------------------------------------------------------
def poll_replica(answers: list, probe=(1, 2, 3)) -> tuple[Replica, list[httpx.Request]]:
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/tokenize":
            assert orjson.loads(request.content) == {"messages": PROBE_MESSAGES}
            return httpx.Response(200, json={"tokens": list(probe), "count": 3, "max_model_len": 512})
        return answers.pop(0)

    r = Replica(0, "http://a", {})
    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))

    async def go():
        while answers:
            await r.poll_once(client, [1, 2, 3])
    asyncio.run(go())
    return r, seen


META = {"epoch": "e1", "page_size": 1, "cache_enabled": True, "model": "m", "max_model_len": 512,
        "vocab_size": 1000}


def test_poller_resyncs_then_follows_events_and_resyncs_after_a_restart():
    answers = [
        httpx.Response(200, json={**META, "head": 4, "resync": {"head": 4, "namespaces": [
            {"namespace": None, "nodes": [[-1, [1, 2, 3]], [0, [4, 5]], [0, [6]]]}]}}),
        httpx.Response(200, json={**META, "head": 6, "more": False, "events": [
            {"seq": 5, "op": "insert", "namespace": "t", "shared": 0, "tail": [9, 9, 9], "tokens": 3},
            {"seq": 6, "op": "evict", "namespace": None, "shared": 0, "tail": [1, 2, 3, 4], "tokens": 2}]}),
        httpx.Response(200, json={**META, "epoch": "e2", "head": 0, "resync": {"head": 0, "namespaces": []}}),
    ]
    r, seen = poll_replica(answers[:2])
    assert r.mirror.paths(None) == {(1, 2, 3, 6)} and r.mirror.paths("t") == {(9, 9, 9)}
    assert r.mirror.cursor == 6 and r.usable and r.stats.events == 2 and r.stats.resyncs == 1
    polls = [q for q in seen if q.url.path == "/cache/events"]
    assert polls[0].url.params["after"] == "-1"
    assert (polls[1].url.params["after"], polls[1].url.params["epoch"]) == ("4", "e1")
    r2, _ = poll_replica(answers)
    assert r2.mirror.epoch == "e2" and not r2.mirror.trees and r2.stats.resyncs == 2


def test_a_replica_that_tokenises_differently_gets_no_requests():
    r, _ = poll_replica([httpx.Response(200, json={**META, "head": 0, "resync": {"head": 0, "namespaces": []}})],
                        probe=(1, 2, 4))
    assert r.healthy and r.compatible is False and not r.usable


def test_a_replica_without_the_events_route_is_down_with_the_reason():
    r, _ = poll_replica([httpx.Response(404, json={"error": {"message": "Route GET /cache/events not found."}})])
    assert not r.healthy and "404" in r.last_error


# ---- what the router reads of requests and answers ------------------------------------------------
def test_route_keys_are_the_servers_prompts_and_unreadable_bodies_route_by_load():
    fe = Frontend(load_router_tokenizer(None))
    engine_prompt = params.chat_prompt(fe, [{"role": "user", "content": "hi"}])
    assert route_key(fe, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2,
                                                  "cache_salt": "t"}) == RouteKey([engine_prompt], "t", 2)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with_tools = route_key(fe, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                        "tools": [tool], "tool_choice": "required"})
    assert len(with_tools.prompts[0]) > len(engine_prompt)  # the tools are in the prompt, as the server puts them
    assert route_key(fe, "/v1/completions", {"prompt": [[1, 2], [3]], "n": 2, "best_of": 3}) == \
        RouteKey([[1, 2], [3]], None, 6)
    assert route_key(fe, "/generate", {"input_ids": [5, 6], "sampling_params": {"n": 3}}) == RouteKey([[5, 6]], None, 3)
    turn = route_key(fe, "/v1/responses", {"input": "hi", "instructions": "Be brief."})
    assert turn.prompts == [fe.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "hi"}])]
    assert route_key(fe, "/v1/responses", {"input": "more", "previous_response_id": "resp_1"}) == \
        RouteKey([], None, 1, "resp_1")
    for path, body in (("/v1/chat/completions", {"messages": "not a list"}), ("/generate", {"text": 5}),
                       ("/v1/completions", [1, 2]), ("/v1/completions", None)):
        assert route_key(fe, path, body).prompts == []


def test_answers_are_split_into_whole_events_and_their_usage_read():
    async def split(chunks):
        async def gen():
            for c in chunks:
                yield c
        return [e async for e in sse_events(gen())]

    stream = b'event: a\ndata: {"x": 1}\n\ndata: {"y": 2}\n\ndata: [DONE]\n\n'
    events = asyncio.run(split([stream[i:i + 5] for i in range(0, len(stream), 5)]))
    assert b"".join(events) == stream and len(events) == 3
    assert [event_data(e) for e in events] == [{"x": 1}, {"y": 2}, None]

    chat = AnswerReader(1)
    chat.feed({"choices": [], "usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}})
    assert chat.usage == (10, 4)
    native = AnswerReader(2)  # two prompts, two samples each: each prompt counts once
    native.feed([{**native_answer(5, cached=3), "index": i} for i in range(4)])
    assert native.usage == (10, 6)
    resp = AnswerReader(1)
    resp.feed({"type": "response.completed", "response": {"id": "resp_9", "usage": {
        "input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}}}})
    assert resp.usage == (7, 0) and resp.response_id == "resp_9"
    assert AnswerReader(1).usage is None


# ---- configuration and the command line -------------------------------------------------------------
@pytest.mark.parametrize("kwargs, word", [
    ({"replicas": ()}, "at least one replica"),
    ({"replicas": ("localhost:8000",)}, "http://"),
    ({"replicas": ("http://a", "http://a")}, "distinct"),
    ({"replicas": ("http://a",), "policy": "random"}, "policy"),
    ({"replicas": ("http://a",), "balance_rel_threshold": 0.5}, "balance_rel_threshold"),
    ({"replicas": ("http://a",), "min_match_fraction": 2.0}, "min_match_fraction"),
    ({"replicas": ("http://a",), "replica_api_key": " "}, "replica_api_key"),
])
def test_config_says_what_is_wrong(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RouterConfig(**kwargs)


def test_serve_dp_passes_the_engine_flags_to_its_replicas():
    argv = ["serve", "--dp", "2", "--max-total-tokens", "900", "--no-cuda-graph", "--schedule-policy", "fcfs",
            "--kv-memory-fraction", "0.5", "--policy", "round-robin"]
    args = build_parser().parse_args(argv)
    options = engine_options(args)
    assert options == {"max_total_tokens": 900, "cuda_graph": False, "schedule_policy": "fcfs",
                       "kv_memory_fraction": 0.5}
    again = engine_options(build_parser().parse_args(["serve", *engine_argv(options)]))
    assert again == options and args.policy == "round-robin" and args.dp == 2


def test_route_needs_replicas():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["route"])
    args = build_parser().parse_args(["route", "--replica", "http://a:1", "--replica", "http://b:2"])
    assert args.replicas == ["http://a:1", "http://b:2"] and args.policy == "cache-aware"


def test_a_malformed_answer_costs_a_resync_and_loses_no_routed_request():
    answers = [httpx.Response(200, json={**META, "head": 0, "resync": {"head": 0, "namespaces": []}}),
               httpx.Response(200, json={**META, "head": 1, "events": [{"seq": 1, "op": "insert"}]}),  # no path
               httpx.Response(200, json={**META, "head": 1, "resync": {"head": 1, "namespaces": [
                   {"namespace": None, "nodes": [[-1, [4, 5, 6, 7]]]}]}})]
    r = Replica(0, "http://a", {})

    def handle(request):
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": [1, 2, 3], "count": 3, "max_model_len": 512})
        return answers.pop(0) if answers else httpx.Response(200, json={**META, "head": 1, "events": []})

    async def go():
        client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        await r.poll_once(client, [1, 2, 3])
        r.mirror.end(r.mirror.begin(None, [[4, 5]]), [[4, 5, 6, 7]])  # a finished request awaiting its events
        task = asyncio.create_task(r.run(client, 0.01, 0.01, [1, 2, 3]))
        while answers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert r.stats.resyncs == 2 and r.usable and r.mirror.paths(None) == {(4, 5, 6, 7)}
    assert not r.mirror.inflight and not r.mirror.pending
