"""The router's parts without processes: policy, failover (replicas faked with httpx.MockTransport),
the poller's protocol, the native body and answers, configuration and CLI flags."""
from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from radixserve.cli import _engine_argv, _engine_options, build_parser
from radixserve.router.config import RouterConfig
from radixserve.router.forward import StreamDecoder, native_body, request_outputs
from radixserve.router.policy import CacheAware, RoundRobin
from radixserve.router.replica import PROBE_MESSAGES, Replica
from radixserve.router.router import Passthrough, Router
from radixserve.router.token_tree import TokenTree
from radixserve.sampling_params import SamplingParams
from radixserve.server import params
from radixserve.server.errors import APIError
from radixserve.server.protocol import GenerateRequest

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
    def apply_chat_template(self, messages):
        return [1, 2, 3]


def native_answer(prompt_len: int, text: str = "ok", ids=(5, 6)) -> dict:
    return {"text": text, "output_ids": list(ids), "index": 0,
            "meta_info": {"id": "gen-x", "prompt_tokens": prompt_len, "cached_tokens": 0,
                          "completion_tokens": len(ids), "finish_reason": "length", "matched_stop": None}}


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


def test_a_request_fails_over_and_the_failed_replica_is_marked_down():
    calls = []

    def ok(request):
        calls.append(request.url.host)
        return httpx.Response(200, json=native_answer(3))

    rt = make_router({"http://a": refuse, "http://b": ok}, policy="round-robin")
    outs = asyncio.run(rt.generate([[7, 8, 9]], None, 1, {"input_ids": [7, 8, 9]}))
    assert outs[0]["text"] == "ok" and calls == ["b"]
    a, b = rt.replicas
    assert not a.healthy and a.stats.failed == 1 and "refused" in a.last_error
    assert b.healthy and b.stats.requests == 1 and a.load == b.load == 0 and rt.failovers == 1
    assert not a.mirror.inflight and b.mirror.pending  # b's answer waits for b's next events


def test_a_kept_alive_connection_the_replica_closed_is_retried_on_the_same_replica():
    calls = []

    def flaky(request):
        calls.append(request.url.host)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json=native_answer(2))

    rt = make_router({"http://a": flaky, "http://b": refuse}, policy="round-robin")
    assert asyncio.run(rt.generate([[7, 8]], None, 1, {}))[0]["text"] == "ok"
    assert calls == ["a", "a"] and rt.replicas[0].healthy and rt.failovers == 0


def test_503_fails_over_4xx_passes_through_and_no_replica_left_is_a_503():
    body_400 = {"error": {"message": "bad", "type": "invalid_request_error", "param": "prompt", "code": None}}
    rt = make_router({"http://a": lambda r: httpx.Response(503, json={"error": {}}),
                      "http://b": lambda r: httpx.Response(400, json=body_400)}, policy="round-robin")
    with pytest.raises(Passthrough) as exc:
        asyncio.run(rt.generate([[7, 8]], None, 1, {}))
    assert exc.value.status == 400 and orjson.loads(exc.value.body) == body_400
    assert not rt.replicas[0].healthy and rt.replicas[1].healthy
    rt.replicas[1].healthy = False
    with pytest.raises(APIError) as err:
        asyncio.run(rt.generate([[7, 8]], None, 1, {}))
    assert err.value.status == 503 and "http://a" in err.value.message
    assert all(r.load == 0 for r in rt.replicas)


def test_a_stream_fails_over_before_its_first_event():
    sse = b'data: ' + orjson.dumps(native_answer(2)) + b'\n\ndata: [DONE]\n\n'
    rt = make_router({"http://a": refuse, "http://b": lambda r: httpx.Response(200, content=sse)},
                     policy="round-robin")

    async def go():
        chunks = await rt.stream([[7, 8]], None, 1, {})
        return [c async for c in chunks]

    assert [c["text"] for c in asyncio.run(go())] == ["ok"]
    assert rt.replicas[1].stats.requests == 1 and rt.replicas[1].load == 0


def test_a_stream_closed_before_it_was_read_gives_its_slot_back():
    sse = b'data: ' + orjson.dumps({**native_answer(2), "meta_info": {**native_answer(2)["meta_info"],
                                                                      "finish_reason": None}}) + b'\n\n'
    rt = make_router({"http://a": lambda r: httpx.Response(200, content=sse)})

    async def go():
        upstream = await rt.stream([[7, 8]], None, 1, {})
        assert rt.replicas[0].load == 1 and rt.replicas[0].mirror.inflight
        await upstream.aclose()
        await upstream.aclose()  # idempotent
        return [c async for c in upstream]

    assert asyncio.run(go()) == []
    r = rt.replicas[0]
    assert r.load == 0 and not r.mirror.inflight and r.stats.failed == 1 and r.stats.requests == 0


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


# ---- what goes to a replica and what comes back ----------------------------------------------------
@pytest.mark.parametrize("sp", [
    SamplingParams(max_new_tokens=7, temperature=0),
    SamplingParams(max_new_tokens=9, min_new_tokens=2, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05,
                   repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5, seed=11,
                   stop=["\n", "END"], stop_token_ids=[7], ignore_eos=True, skip_special_tokens=False, n=3,
                   logprobs=4),
])
def test_the_native_body_rebuilds_the_same_sampling_params(sp):
    body = native_body([[1, 2], [3]], True, sp, False, "salt")
    req = GenerateRequest.model_validate_json(orjson.dumps(body))
    assert params.native_sampling(req) == sp
    assert req.input_ids == [[1, 2], [3]] and req.cache_salt == "salt" and req.stream is False


def test_native_answers_become_request_outputs_and_stream_deltas():
    outs = [{"text": "b", "output_ids": [2], "index": 1, "meta_info": {
                "id": "g", "prompt_tokens": 4, "cached_tokens": 1, "completion_tokens": 1, "finish_reason": "stop",
                "matched_stop": 2, "output_token_logprobs": [[-0.5, 2, "b"]],
                "output_top_logprobs": [[[-0.5, 2, "b"], [-1.5, 3, "c"]]]}},
            {"text": "a", "output_ids": [1], "index": 0, "meta_info": {
                "id": "g", "prompt_tokens": 4, "cached_tokens": 1, "completion_tokens": 1, "finish_reason": "length",
                "matched_stop": None, "output_token_logprobs": [[-0.1, 1, "a"]], "output_top_logprobs": [[]]}}]
    (group,) = request_outputs(outs, 2, with_logprobs=True)
    assert [(o.index, o.text, o.finish_reason) for o in group] == [(0, "a", "length"), (1, "b", "stop")]
    assert group[1].logprobs[0].token_id == 2 and group[1].logprobs[0].top == [(2, -0.5), (3, -1.5)]
    dec = StreamDecoder(n=1)
    chunks = [{"text": t, "output_ids": ids, "index": 0, "meta_info": {
        "id": "g", "prompt_tokens": 3, "cached_tokens": 0, "completion_tokens": len(ids), "finish_reason": f}}
        for t, ids, f in (("He", [5], None), ("Hello", [5, 6], None), ("Hello!", [5, 6, 7], "stop"))]
    deltas = [dec(c)[1] for c in chunks]
    assert [(d.text, d.token_ids) for d in deltas] == [("He", [5]), ("llo", [6]), ("!", [7])]
    assert dec.finished(1) == [chunks[-1]] and StreamDecoder(1).finished(1) is None


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
    options = _engine_options(args)
    assert options == {"max_total_tokens": 900, "cuda_graph": False, "schedule_policy": "fcfs",
                       "kv_memory_fraction": 0.5}
    again = _engine_options(build_parser().parse_args(["serve", *_engine_argv(options)]))
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
