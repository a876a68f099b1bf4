"""Smoke test of `radixserve bench long-short` on dummy:tiny-llama: the three runs complete, every
short request gets all its tokens, and the report names the machine, the date and the command."""
from __future__ import annotations

import json

from radixserve.cli import main


def test_long_short_bench_writes_its_report(tmp_path):
    argv = ["bench", "long-short", "--model", "dummy:tiny-llama", "--device", "cpu", "--out-dir", str(tmp_path),
            "--stem", "ls", "--long-len", "300", "--shorts", "3", "--short-len", "12", "--short-out", "5",
            "--chunked-prefill-size", "64", "--max-step-ms", "80", "--max-total-tokens", "4096"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "ls.json").read_text())
    names = [r["name"] for r in doc["runs"]]
    assert names == ["long alone", "together, no budget", "together, max_step_ms=80"]
    alone, off, on = doc["runs"]
    assert alone["short_ttft_s"] is None and alone["long_ttft_vs_alone"] == 1.0
    for r in (off, on):
        assert r["short_output_tokens"] == 3 * 5
        assert r["short_itl_s"]["p99"] >= r["short_itl_s"]["p50"] > 0
        assert len(r["long_ttft_s"]) == 2 and r["long_ttft_vs_alone"] > 0
    assert doc["engine_options"]["chunked_prefill_size"] == 64 and doc["scale"]["max_step_ms"] == 80
    assert doc["machine"]["cpu_cores"] and doc["date"] and doc["command"]
    md = (tmp_path / "ls.md").read_text()
    assert "| together, max_step_ms=80 |" in md and "short ITL p99 ms" in md
