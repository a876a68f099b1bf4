"""`pip install .` into a fresh virtualenv, then `radixserve serve` answers a chat request: the server
stack is a dependency of the package, not an extra a new user has to know about."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from radixserve.models.loader import embedded_model_path

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TORCH = "torch==2.13.0"  # the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_python() -> str:
    """The interpreter the test venv was made from, so the fresh venv sees none of its packages."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


@pytest.mark.slow
def test_fresh_venv_pip_install_serves_chat(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    out = subprocess.run(pip + [TORCH], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    # NOTE: a copy of the source tree, so the build leaves nothing (build/, *.egg-info) in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis", "results"))
    out = subprocess.run(pip + [str(src)], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    # The package alone, no test extras: the server stack must have come with it.
    check = subprocess.run([py, "-c", "import fastapi, uvicorn, orjson, zmq, xgrammar, prometheus_client, "
                            "radixserve.server.app; print('ok')"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert check.stdout.strip() == "ok", check.stderr[-3000:]
    (exe,) = glob.glob(str(venv / "bin" / "radixserve"))
    port = _free_port()
    # NOTE: the embedded model's GGUF file from this environment (its package pulls llama.cpp as a dependency).
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--model", embedded_model_path(),
                             "--max-total-tokens", "2048", "--max-context-len", "1024", "--log-level", "warning"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == 8 or body["choices"][0]["finish_reason"] == "stop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
