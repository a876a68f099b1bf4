"""Smoke test of `radixserve bench cpu` on dummy:tiny-llama: every variant runs, the decode steps
of the full batch are timed, the report holds ratios and spreads."""
from __future__ import annotations

import json

from radixserve.bench import cpu_suite
from radixserve.bench.suites import EngineSpec


def test_cpu_suite_small(tmp_path):
    spec = EngineSpec("dummy:tiny-llama", "cpu", (("max_total_tokens", 4096),))
    doc = cpu_suite.run(spec, str(tmp_path), "cpu_smoke", prompts=3, system_len=40, question_len=4, output_len=5,
                        repeats=2)
    names = [r["name"] for r in doc["runs"]]
    assert len(names) == 2 * (1 + len(cpu_suite.VARIANTS))
    for key in cpu_suite.VARIANTS:
        s = doc["summary"][key]
        assert len(s["ratio_vs_transformers"]["all"]) == 2
        assert s["decode_step_ms"]["min"] > 0  # full-batch decode steps were timed
    ours = [r for r in doc["runs"] if not r["name"].startswith("transformers")]
    assert all(r["completed"] == 3 and r["output_tokens"] == 15 for r in ours)
    assert {r["config"]["kv_mirror"] for r in ours} == {True, False}
    saved = json.loads((tmp_path / "cpu_smoke.json").read_text())
    assert saved["per_repeat"][0]["all"]["ratio_vs_transformers"] > 0
    assert "decode step at batch 3" in (tmp_path / "cpu_smoke.md").read_text()


def test_cli_parses_bench_cpu():
    from radixserve.cli import build_parser

    a = build_parser().parse_args(["bench", "cpu", "--repeats", "2", "--variants", "all,gather"])
    assert (a.workload, a.repeats, a.variants, a.prompts) == ("cpu", 2, "all,gather", 16)
