"""The `radixserve bench lang` workload at a tiny scale on random weights (as on a GPU with
dummy weights): both modes run the same calls, the hit-rate bookkeeping is right (checked
against a brute-force replay), and the report is written."""
from __future__ import annotations

import json

import pytest

from radixserve.bench import lang_branching as lb
from radixserve.bench.suites import EngineSpec


def _brute_reachable(calls) -> float:
    """The same rules as reachable_hit_rate, with plain lists instead of hashes."""
    seen: list[list[int]] = []
    hit = total = 0
    for c in calls:
        best = 0
        for s in seen:
            n = 0
            for a, b in zip(s, c.prompt[:c.limit]):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        hit, total = hit + best, total + len(c.prompt)
        seen.append(c.prompt + c.output[:-1])
    return hit / total


def test_reachable_hit_rate_matches_a_brute_force_replay():
    calls = [lb.Call("prefill", [1, 2, 3, 4], [], 0, 3),
             lb.Call("gen", [1, 2, 3, 4, 5], [6, 7], 4, 4),
             lb.Call("score", [1, 2, 3, 4, 5, 6, 9], [], 5, 5),  # scored from position 6: limit 5
             lb.Call("gen", [1, 2, 3, 4, 5, 6, 7, 8], [9], 6, 7),
             lb.Call("gen", [2, 2], [1], 0, 1)]
    assert lb.reachable_hit_rate(calls) == pytest.approx(_brute_reachable(calls))
    assert lb.reachable_hit_rate(calls) == pytest.approx((0 + 4 + 5 + 6 + 0) / (4 + 5 + 7 + 8 + 2))


def test_config_is_validated():
    with pytest.raises(ValueError, match="programs"):
        lb.BranchingConfig(programs=0)
    with pytest.raises(ValueError, match="warmup_programs"):
        lb.BranchingConfig(warmup_programs=-1)
    with pytest.raises(ValueError, match="two choices"):
        lb.BranchingConfig(choices=(" yes",))


def test_branching_benchmark_on_random_weights(tmp_path):
    cfg = lb.BranchingConfig(programs=3, few_shot_tokens=48, branches=2, thought_tokens=3, answer_tokens=2)
    doc = lb.run(EngineSpec("dummy:tiny-llama", "cpu", (("max_total_tokens", 8192),)), cfg, str(tmp_path),
                 "lang_smoke", "smoke")
    on, off = doc["modes"]
    # per program: fork prefill (radix on only), 2 thoughts, 2 selects x 2 choices, 1 answer
    assert on["requests_by_kind"] == {"prefill": 3, "gen": 9, "score": 12}
    assert off["requests_by_kind"] == {"prefill": 0, "gen": 9, "score": 12}
    assert off["cached_tokens"] == 0 and off["hit_rate"] == 0.0
    assert on["generated_tokens"] == off["generated_tokens"] == 3 * (2 * 3 + 2)
    assert 0.5 < on["hit_rate"] <= on["optimal_hit_rate"] and on["reachable_hit_rate"] <= on["optimal_hit_rate"]
    assert on["hit_rate"] >= 0.95 * on["reachable_hit_rate"]
    saved = json.loads((tmp_path / "lang_smoke.json").read_text())
    assert saved["speedup"] == pytest.approx(off["wall_s"] / on["wall_s"]) and saved["machine"]["cpu_cores"] >= 1
    assert "achieved/optimal" in (tmp_path / "lang_smoke.md").read_text()
    # both modes were warmed up (untimed) first, and each run says where its time went
    assert set(saved["warmup_wall_s"]) == {"radix on", "radix off"}
    for mode, calls in ((on, 24), (off, 21)):
        e = mode["engine"]
        # every generation decodes at least thought_tokens - 1 (answer_tokens - 1) steps after its prefill
        assert e["model_steps"] >= e["decode_steps"] >= 2 + 1 and e["mean_decode_batch"] >= 1
        assert sum(p["calls"] for p in mode["phases"].values()) == calls
        assert mode["phases"]["gen 3 tokens"]["calls"] == 6 and mode["phases"]["gen 2 tokens"]["calls"] == 3
        assert 0 <= mode["phases"]["score"]["first_made_s"] <= mode["phases"]["score"]["last_returned_s"] <= mode["wall_s"]
