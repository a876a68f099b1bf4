"""Multi-process modes started as a user starts them, from the repository's root and from another
folder: the split server behind a DP=2 router serves a request, and a TP=2 `generate` prints what
TP=1 prints. In the repository's root Python puts the current folder on sys.path, where our
top-level kernels/ folder would shadow the PyPI package `kernels` that transformers imports; every
process we start (engine processes, replicas, ranks) must import the real one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from model_fixtures import embedded_tokenizer, save_tiny_hf_model
from port_fixtures import free_port_block, wait_serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ["repository-root", "another-folder"]


def user_env() -> dict[str, str]:
    """A shell's environment: nothing of ours that would hide the failure (no safe-path mode)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}


def two_healthy_replicas(url: str) -> bool:
    return sum(r["healthy"] for r in httpx.get(url + "/router/replicas", timeout=5).json()["replicas"]) == 2


def folder(where: str, tmp_path) -> str:
    return REPO if where == "repository-root" else str(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_hf_model("llama", str(tmp_path_factory.mktemp("tiny")), embedded_tokenizer())


def generate(cwd: str, checkpoint: str, tp: int) -> str:
    out = subprocess.run([sys.executable, "-m", "radixserve", "generate", "--model", checkpoint, "--tp", str(tp),
                          "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "1024", "--max-tokens", "8",
                          "--temperature", "0", "--log-level", "warning", "The capital of France is"],
                         cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("where", FOLDERS)
def test_generate_tp2_prints_what_tp1_prints(where, tmp_path, checkpoint):
    cwd = folder(where, tmp_path)
    tp1 = generate(cwd, checkpoint, 1)
    assert tp1.strip()
    assert generate(cwd, checkpoint, 2) == tp1


@pytest.mark.slow
@pytest.mark.parametrize("where", FOLDERS)
def test_serve_dp2_split_replicas_answer(where, tmp_path, checkpoint):
    port = free_port_block(3)
    proc = subprocess.Popen([sys.executable, "-m", "radixserve", "serve", "--dp", "2", "--port", str(port),
                             "--model", checkpoint, "--device", "cpu", "--dtype", "float32",
                             "--max-total-tokens", "1024", "--max-context-len", "256", "--health-interval", "0.5",
                             "--log-level", "warning"],
                            cwd=folder(where, tmp_path), env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url, two_healthy_replicas)
        body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        answers = [httpx.post(f"{u}/v1/completions", json=body, timeout=120).json()
                   for u in (url, f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}")]
        texts = [a["choices"][0]["text"] for a in answers]
        assert texts[0] and texts[0] == texts[1] == texts[2]  # the router's answer is a replica's, both alike
        assert all(a["usage"]["completion_tokens"] == 8 for a in answers)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
