"""RadixRequestRouter's choices without a cluster: fake Ray replicas whose routing stats are a real
Engine's cache dump (what EngineReplica.record_routing_stats reports), requests as the ingress sends
them (a PreparedRequest first). The oracle for "which replica holds the prefix" is the engine itself."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from engine_fixtures import SYSTEM, make_engine  # noqa: E402
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata  # noqa: E402
from ray.serve.request_router import PendingRequest  # noqa: E402

from radixserve import SamplingParams  # noqa: E402
from radixserve.deploy.ray_router import RadixRequestRouter  # noqa: E402

DEPLOYMENT = DeploymentID(name="RadixEngine", app_name="test")


@pytest.fixture(scope="module")
def dumps():
    """(an engine, the routing stats of its empty cache, the stats once it has served `prompt`, prompt)."""
    engine = make_engine(model="dummy:tiny-llama", max_total_tokens=4096)  # the tree is the subject, not the model
    try:
        prompt = engine.apply_chat_template([{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": "Why is the sky blue?"}])
        empty = asyncio.run(engine.cache_events(-1, None, 1))
        engine.generate(input_ids=[prompt], sampling_params=SamplingParams(max_new_tokens=4, temperature=0.0))
        warm = asyncio.run(engine.cache_events(-1, None, 1))
        yield engine, empty, warm, prompt
    finally:
        engine.shutdown()


def _replica(name: str, stats: dict) -> SimpleNamespace:
    return SimpleNamespace(replica_id=ReplicaID(unique_id=name, deployment_id=DEPLOYMENT), routing_stats=stats)


def _pending(engine, ids: list[int], rid: str, salt: str | None = None) -> PendingRequest:
    prepared = engine.prepare(ids, SamplingParams(max_new_tokens=4))
    meta = RequestMetadata(request_id=rid, internal_request_id=rid, call_method="agenerate")
    return PendingRequest(args=[prepared], kwargs={"request_id": rid, "cache_salt": salt}, metadata=meta)


def _router(**kwargs) -> RadixRequestRouter:
    router = RadixRequestRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN)
    router.initialize_state(**kwargs)
    return router


def test_a_prompt_goes_to_the_replica_whose_tree_holds_its_prefix(dumps):
    engine, empty, warm, prompt = dumps

    async def run():
        router = _router()
        cold, hot = _replica("cold", empty), _replica("hot", warm)
        follow_up = prompt[:-6] + engine.tokenizer.encode(" And why is grass green?")
        for order in ([cold, hot], [hot, cold]):
            ranks = await router.choose_replicas(order, _pending(engine, follow_up, "r1"))
            assert ranks[0] == [hot] and ranks[1] == [cold]
        # another namespace shares nothing: a cold prompt goes to the replica holding fewer tokens
        ranks = await router.choose_replicas([hot, cold], _pending(engine, follow_up, "r2", salt="tenant-b"))
        assert ranks[0] == [cold]
        assert router.decisions == {"cache": 2, "cold": 1}
    asyncio.run(run())


def test_what_was_routed_attracts_its_followers_until_the_dump_covers_it(dumps):
    engine, empty, _, _ = dumps

    async def run():
        router = _router()
        a, b = _replica("a", empty), _replica("b", empty)
        first = engine.tokenizer.encode("Tenant 9 writes a long shared preamble about trains and ferries. " * 4)
        p1 = _pending(engine, first + [42], "r1")
        pick = (await router.choose_replicas([a, b], p1))[0][0]
        router.on_request_routed(p1, pick.replica_id, None)
        assert router.views[pick.replica_id].load == 1
        # in flight: a request sharing the preamble follows it, whatever the order of candidates
        for order in ([a, b], [b, a]):
            assert (await router.choose_replicas(order, _pending(engine, first + [7], "r2")))[0] == [pick]
        router.on_request_completed(pick.replica_id, "r1")
        assert router.views[pick.replica_id].load == 0
        # finished, not yet in a dump: still known
        assert (await router.choose_replicas([b, a], _pending(engine, first + [8], "r3")))[0] == [pick]
    asyncio.run(run())


def test_round_robin_alternates_and_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="balance_rel_threshold"):
        _router(balance_rel_threshold=0.5)
    router = _router(policy="round-robin")
    assert router.policy.__class__.__name__ == "RoundRobin"
