"""Cache-aware ordering: lpm and dfs-weight hit the cache more than fcfs on a shuffled
shared-prefix workload; aging bounds how long a request that shares nothing waits."""
from __future__ import annotations

import random

import pytest

from radixserve import Engine, SamplingParams
from radixserve.scheduler.policy import order_waiting
from radixserve.scheduler.request import Request

GROUPS, PER_GROUP, SYSTEM_LEN, QUESTION_LEN = 8, 8, 192, 12


def _workload(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    systems = [[rng.randrange(100, 40000) for _ in range(SYSTEM_LEN)] for _ in range(GROUPS)]
    prompts = [s + [rng.randrange(100, 40000) for _ in range(QUESTION_LEN)] for s in systems for _ in range(PER_GROUP)]
    rng.shuffle(prompts)
    return prompts


def _hit_rate(policy: str) -> float:
    e = Engine("dummy:tiny-llama", schedule_policy=policy, max_total_tokens=3 * (SYSTEM_LEN + 64),
               max_prefill_tokens=2 * (SYSTEM_LEN + QUESTION_LEN), max_running_requests=4, check_integrity=True)
    try:
        prompts = _workload()
        e.generate(input_ids=prompts, sampling_params=SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
        e.check_integrity()
        s = e.stats()
        assert s["prompt_tokens"] == sum(map(len, prompts))
        return s["cached_tokens"] / s["prompt_tokens"]
    finally:
        e.shutdown()


def test_cache_aware_policies_beat_fcfs():
    optimal = 1 - (GROUPS * SYSTEM_LEN + GROUPS * PER_GROUP * QUESTION_LEN) / (GROUPS * PER_GROUP * (SYSTEM_LEN + QUESTION_LEN))
    rates = {p: _hit_rate(p) for p in ("fcfs", "lpm", "dfs-weight")}
    assert rates["lpm"] > rates["fcfs"] + 0.15, rates
    assert rates["dfs-weight"] > rates["fcfs"] + 0.15, rates
    assert max(rates.values()) <= optimal + 1e-9, (rates, optimal)


class _Node:
    def __init__(self, parent=None):
        self.parent = parent


def _req(i: int, step: int) -> Request:
    return Request(rid=str(i), prompt_ids=[1, 2, 3], params=SamplingParams(), seed=0, arrival=i, enqueue_step=step)


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_aging_bounds_the_wait_of_a_cold_request(policy):
    root = _Node()
    hot_node = _Node(_Node(root))
    cold = _req(0, step=0)
    hot = [_req(i, step=0) for i in range(1, 6)]
    matches = {id(cold): (0, root), **{id(h): (100, hot_node) for h in hot}}

    def match(r):
        return matches[id(r)]

    aging = 10.0
    first_at = None
    for step in range(0, 50):
        for h in hot:  # a steady stream of fresh requests that hit the cache
            h.enqueue_step = step
        order = order_waiting([cold] + hot, policy, step, aging, match)
        if order[0] is cold:
            first_at = step
            break
        # without aging the hot requests always win
        assert order_waiting([cold] + hot, policy, step, 0.0, match)[0] is not cold
    assert first_at is not None and first_at <= 100 / aging + 1


def test_dfs_weight_groups_requests_by_subtree():
    root = _Node()
    a, b = _Node(root), _Node(root)
    a1 = _Node(a)
    reqs = [_req(i, 0) for i in range(6)]
    where = {0: (5, b), 1: (10, a1), 2: (5, b), 3: (8, a), 4: (10, a1), 5: (5, b)}
    # b holds 3 waiting requests, a's subtree 3 too (a: 1, a1: 2); ties broken by weight order then arrival
    order = order_waiting(reqs, "dfs-weight", 0, 0.0, lambda r: where[int(r.rid)])
    rids = [int(r.rid) for r in order]
    # requests of one subtree are contiguous
    pos = {r: i for i, r in enumerate(rids)}
    assert sorted(pos[r] for r in (0, 2, 5)) in ([0, 1, 2], [3, 4, 5])
    assert sorted(pos[r] for r in (1, 3, 4)) in ([0, 1, 2], [3, 4, 5])
    assert pos[3] > pos[1] and pos[3] > pos[4]  # deeper matches first: they hit more of the cache


def test_full_running_set_does_not_order_the_queue():
    """With max_running_requests running, a step admits nobody, so it must not order (match in the
    tree) the waiting queue: that cost grows with the queue and bought nothing."""
    e = Engine("dummy:tiny-llama", max_total_tokens=4096, max_running_requests=4, check_integrity=True)
    try:
        seen: list[int] = []
        match = e.kv.match_len

        def counting(req):
            seen.append(len(e.scheduler.running))
            return match(req)
        e.kv.match_len = counting
        prompts = [[7, 8, 9, 10 + i, 20 + i] for i in range(24)]
        outs = e.generate(input_ids=prompts, sampling_params=SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True))
        assert all(len(o.token_ids) == 6 for o in outs)
        assert seen and max(seen) < 4, "the queue was ordered while no request could be admitted"
    finally:
        e.shutdown()
