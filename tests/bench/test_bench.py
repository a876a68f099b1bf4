"""Smoke tests of the benchmark package: workload generators against brute-force oracles, and a tiny
offline / online / report run on dummy:tiny-llama so a broken benchmark fails CI."""
from __future__ import annotations

import json
import math

import pytest

from radixserve.bench import metrics, workloads
from radixserve.bench.workloads import optimal_hit_rate, trie_size

VOCAB = 49152


def _brute_trie(seqs):
    return len({tuple(s[:i]) for s in seqs for i in range(1, len(s) + 1)})


def test_shared_prefix_shape_and_optimal_hit_rate():
    w = workloads.shared_prefix(3, 4, 20, 5, 7, VOCAB, seed=1)
    assert len(w.requests) == 12 and all(len(r.prompt_ids) == 25 and r.max_new_tokens == 7 for r in w.requests)
    by_group = {}
    for r in w.requests:
        by_group.setdefault(r.group, set()).add(tuple(r.prompt_ids[:20]))
    assert all(len(s) == 1 for s in by_group.values()) and len(by_group) == 3
    assert [r.group for r in w.requests] != sorted(r.group for r in w.requests)  # shuffled
    prompts = [r.prompt_ids for r in w.requests]
    assert trie_size(prompts) == _brute_trie(prompts)
    assert optimal_hit_rate(prompts) == pytest.approx(1 - (3 * 20 + 12 * 5) / (12 * 25))
    assert workloads.shared_prefix(3, 4, 20, 5, 7, VOCAB, seed=1) == w  # seeded
    sub = workloads.subset_groups(w, 2)
    assert {r.group for r in sub.requests} == {0, 1} and len(sub.requests) == 8


def test_optimal_hit_rate_counts_earlier_outputs_as_known():
    # turn 2 re-sends turn 1's prompt and answer: only the new user message is unseen
    p1, o1 = [1, 2, 3, 4], [5, 6]
    p2 = p1 + o1 + [7, 8]
    assert optimal_hit_rate([p1, p2], [(p1, o1), (p2, [9])]) == pytest.approx(1 - (4 + 2) / 12)
    assert optimal_hit_rate([p1, p2]) == pytest.approx(1 - 8 / 12)


def test_sharegpt_lengths_long_tailed_with_sharegpt_means():
    w = workloads.sharegpt(4000, VOCAB, seed=0)
    ins = [len(r.prompt_ids) for r in w.requests]
    outs = [r.max_new_tokens for r in w.requests]
    assert 170 < sum(ins) / len(ins) < 230 and 150 < sum(outs) / len(outs) < 205
    assert max(ins) > 5 * 202 and min(ins) < 50  # long tail both ways
    assert all(4 <= o <= 1024 for o in outs)


def test_multi_turn_and_batch1_shapes():
    w = workloads.multi_turn(3, 4, 64, 64, 16, VOCAB, seed=0)
    assert w.is_multi_turn and w.num_requests == 12
    assert all(48 <= len(u) <= 80 for c in w.conversations for u in c.user_turns)
    b = workloads.batch1(2, 10, 3, VOCAB)
    assert [len(r.prompt_ids) for r in b.requests] == [10, 10]
    with pytest.raises(ValueError, match="groups"):
        workloads.shared_prefix(0, 1, 1, 1, 1, VOCAB)


def test_percentiles_match_numpy_linear():
    np = pytest.importorskip("numpy")
    vals = [0.3, 0.1, 5.0, 2.2, 0.7, 1.1, 9.0]
    got = metrics.percentiles(vals)
    for q in (50, 90, 99):
        assert math.isclose(got[f"p{q}"], float(np.percentile(vals, q)))
    assert metrics.percentiles([])["p50"] is None


@pytest.fixture(scope="module")
def engine():
    from radixserve import Engine

    e = Engine("dummy:tiny-llama", max_total_tokens=8192)
    yield e
    e.shutdown()


def test_offline_runs_report_tokens_hits_and_policies(engine, tmp_path):
    from radixserve.bench import offline, report

    w = workloads.shared_prefix(2, 3, 48, 8, 5, VOCAB, seed=0)
    runs = []
    for pol, off in (("lpm", False), ("fcfs", False), ("lpm", True)):
        offline.reconfigure(engine, schedule_policy=pol, disable_radix_cache=off)
        r = offline.run_offline(engine, w, f"{pol} off={off}")
        assert r.completed == 6 and r.errors == 0 and r.output_tokens == 6 * 5
        assert r.prompt_tokens == 6 * 56 and r.config["schedule_policy"] == pol
        assert r.optimal_hit_rate == pytest.approx(1 - (2 * 48 + 6 * 8) / (6 * 56))
        assert 0 <= r.cache_hit_rate <= r.optimal_hit_rate + 1e-9
        assert r.kv_usage_peak is not None and 0 <= r.kv_usage_peak <= 1
        runs.append(r.to_dict())
    assert runs[-1]["cache_hit_rate"] == 0.0  # radix cache off
    offline.reconfigure(engine, schedule_policy="lpm", disable_radix_cache=False)
    mt = offline.run_offline(engine, workloads.multi_turn(2, 3, 12, 4, 8, VOCAB), "mt")
    assert mt.completed == 6 and mt.cache_hit_rate > 0.3  # later turns hit earlier turns' prompt + answer
    b1 = offline.run_offline(engine, workloads.batch1(2, 16, 4, VOCAB), "b1", sequential=True)
    assert b1.mode == "batch1" and b1.completed == 2 and b1.itl_s["p50"] is not None
    doc = report.write(str(tmp_path), "smoke", "smoke", runs, summary_lines=["- x"], latency_plot=True)
    assert json.loads((tmp_path / "smoke.json").read_text())["runs"][0]["name"] == runs[0]["name"]
    assert "| lpm off=False |" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke.png").stat().st_size > 1000 and (tmp_path / "smoke_latency.png").exists()
    assert doc["machine"]["cpu_cores"] >= 1 and doc["command"]


def test_offline_time_limit_aborts_and_engine_keeps_serving(engine):
    from radixserve.bench import offline

    w = workloads.shared_prefix(1, 8, 16, 4, 4000, VOCAB)
    r = offline.run_offline(engine, w, "cut", deadline_s=0.5)
    assert r.truncated and r.completed == 0 and r.errors == 8
    s = engine.stats()
    assert s["running"] == 0 and s["waiting"] == 0
    ok = offline.run_offline(engine, workloads.batch1(1, 8, 2, VOCAB), "after")
    assert ok.completed == 1


def test_online_streaming_clients(engine):
    from radixserve.bench.online import run_online
    from radixserve.server.app import build_app
    from radixserve.server.testing import ServerThread

    w = workloads.shared_prefix(2, 3, 32, 8, 4, VOCAB)
    with ServerThread(build_app(engine)) as srv:
        r = run_online(srv.url, engine.model_name, w, rate=100.0, max_concurrency=4, engine=engine)
    assert r.errors == 0 and r.completed == 6 and r.output_tokens == 24
    assert r.ttft_s["p50"] > 0 and r.e2e_s["p99"] >= r.ttft_s["p99"]


def test_match_prefix_bench_small():
    from radixserve.bench.tree_micro import match_prefix_bench

    m = match_prefix_bench(prompt_len=1024, num_nodes=8, page_size=4, repeat=5)
    assert m["match_prefix_ms_median"] > 0 and m["num_nodes_on_path"] == 8


def test_cli_bench_parser():
    from radixserve.cli import build_parser

    a = build_parser().parse_args(["bench", "shared-prefix", "--scale", "gpu", "--model", "dummy:llama-3.1-8b",
                                   "--device", "cuda", "--hf-subset-groups", "4"])
    assert (a.workload, a.scale, a.hf_subset_groups, a.model) == ("shared-prefix", "gpu", 4, "dummy:llama-3.1-8b")
