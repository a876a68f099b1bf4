"""Ranks started by a launcher (torchrun-style RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT): every process runs the same program; rank 0 serves and gets TP=1's tokens, rank 1
turns into a step worker inside Engine() and exits when rank 0 shuts down. And the TP benchmark
runs on CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from model_fixtures import embedded_tokenizer, save_tiny_hf_model
from radixserve import SamplingParams

PROGRAM = """
import json, sys
from radixserve import Engine, SamplingParams
engine = Engine(sys.argv[1], tp=2, device="cpu", dtype="float32", max_total_tokens=1024)
out = engine.generate(input_ids=json.loads(sys.argv[2]), sampling_params=SamplingParams(max_new_tokens=8, temperature=0))
print("TOKENS", json.dumps([o.token_ids for o in out]), flush=True)
engine.shutdown()
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_hf_model("qwen2", str(tmp_path_factory.mktemp("qwen2")), embedded_tokenizer())


def test_launcher_started_ranks_serve_tp1_tokens(checkpoint):
    from radixserve import Engine

    tok = embedded_tokenizer()
    prompts = [tok.encode("The capital of France is"), tok.encode("1, 2, 3, 4, 5,")]
    with Engine(checkpoint, device="cpu", dtype="float32", max_total_tokens=1024) as ref:
        expected = [o.token_ids for o in ref.generate(input_ids=prompts, sampling_params=SamplingParams(
            max_new_tokens=8, temperature=0))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", PROGRAM, checkpoint, json.dumps(prompts)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [ln for ln in outs[0][0].splitlines() if ln.startswith("TOKENS ")]
    assert json.loads(lines[0].removeprefix("TOKENS ")) == expected
    assert "TOKENS" not in outs[1][0]  # rank 1 served steps inside Engine() and exited there


def test_tp_benchmark_runs_on_cpu(tmp_path):
    from radixserve.bench import tp as tp_bench

    doc = tp_bench.run("dummy:tiny-llama", "cpu", [1, 2], str(tmp_path), "tp", prompt_len=16, output_len=8,
                       requests=1, probe_steps=3, engine_options={"max_total_tokens": 4096, "dtype": "float32"})
    rows = {r["tp"]: r for r in doc["tp_runs"]}
    assert rows[1]["collectives_ms_per_step"] is None and rows[2]["collectives_ms_per_step"] > 0
    assert all(r["decode_tok_per_s"] > 0 for r in rows.values())
    assert (tmp_path / "tp.json").exists() and "| 2 |" in (tmp_path / "tp.md").read_text()
