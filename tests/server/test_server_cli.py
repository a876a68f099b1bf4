"""`python -m radixserve serve` as a user runs it: a subprocess. SIGTERM lets
the in-flight stream finish, refuses new work, shuts the engine down and exits 0; Ctrl-C (SIGINT)
ends the in-flight stream with a final event and exits 0 without a traceback; a front end killed
with SIGKILL, while the engine loads or while it serves, leaves no child process behind.

The process lifecycle is the subject, not the model: the servers run dummy:tiny-llama (a tiny random
Llama, a 400-token stream still takes seconds on CPU), except while loading, which must take time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import orjson
import psutil
import pytest

from port_fixtures import free_port_block, wait_serving

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--model", "dummy:tiny-llama")


@pytest.mark.slow
def test_serve_sigterm_finishes_in_flight_and_exits_0():
    port = free_port_block()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "radixserve", "serve", "--port", str(port), "--api-key", "k", *TINY,
                             "--max-total-tokens", "2048", "--max-context-len", "512", "--log-level", "warning"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url)
        first_event = threading.Event()
        events: list[bytes] = []

        def stream() -> None:
            body = {"prompt": "Count slowly:", "max_tokens": 24, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": "Bearer k"},
                              timeout=120) as s:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:].encode())
                        first_event.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_event.wait(60)
        proc.send_signal(signal.SIGTERM)
        reader.join(120)
        assert proc.wait(60) == 0, proc.stdout.read().decode()
        assert events[-1] == b"[DONE]"
        finals = [orjson.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finals[-1] == "length"  # the in-flight request ran to completion
        assert sum(len(orjson.loads(e)["choices"][0]["text"]) > 0 for e in events[:-1]) >= 20
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


@pytest.mark.slow
def test_killed_engine_process_fails_fast_and_exits_nonzero():
    """The engine process dies mid-stream: the stream ends with an error, new requests get 503 (or
    find the server gone), and the front end exits non-zero within seconds instead of hanging."""
    port = free_port_block()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "radixserve", "serve", "--port", str(port), *TINY,
                             "--max-total-tokens", "2048", "--max-context-len", "512", "--log-level", "warning"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url)
        (engine_pid,) = [c for c in _children(proc.pid) if "spawn_main" in open(f"/proc/{c}/cmdline").read()]
        first_event = threading.Event()
        lines: list[str] = []

        def stream() -> None:
            body = {"prompt": "Count slowly:", "max_tokens": 400, "ignore_eos": True, "stream": True}
            try:
                with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as s:
                    for line in s.iter_lines():
                        lines.append(line)
                        first_event.set()
            except httpx.TransportError:
                lines.append("<transport error>")

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_event.wait(60)
        killed = time.monotonic()
        os.kill(engine_pid, signal.SIGKILL)
        reader.join(30)
        assert not reader.is_alive(), "the stream hung after the engine died"
        finals = [ln for ln in lines if ln.startswith("data: ") and ln != "data: [DONE]"]
        assert any('"error"' in ln for ln in finals) or lines[-1] == "<transport error>", lines[-3:]
        assert not any('"finish_reason":"length"' in ln for ln in finals)
        try:
            r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass  # already gone: also failing fast
        code = proc.wait(60)
        assert code != 0
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_server(port: int, log, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "radixserve", "serve", "--port", str(port), "--max-total-tokens",
                             "2048", "--max-context-len", "512", *extra], env=env, cwd=REPO, stdout=log, stderr=log)


def stream_events(url: str, max_tokens: int, events: list[bytes], first: threading.Event) -> None:
    body = {"prompt": "Count slowly:", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as s:
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:].encode())
                    first.set()
    except httpx.TransportError:
        events.append(b"<cut>")  # the server went away mid-stream


@pytest.mark.slow
def test_ctrl_c_mid_stream_ends_it_with_a_final_event_and_exits_0(tmp_path):
    port, grace = free_port_block(), 30
    with open(tmp_path / "log", "w+") as log:
        proc = start_server(port, log, *TINY, "--graceful-shutdown-s", str(grace), "--log-level", "info")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_serving(proc, url)
            events: list[bytes] = []
            first = threading.Event()
            reader = threading.Thread(target=stream_events, args=(url, 400, events, first))
            reader.start()
            assert first.wait(60)
            proc.send_signal(signal.SIGINT)
            reader.join(grace)
            assert not reader.is_alive(), "the stream did not end"
            assert proc.wait(grace) == 0  # within the grace period, not after it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
    assert events[-1] == b"[DONE]", events[-3:]
    chunks = [orjson.loads(e)["choices"][0] for e in events[:-1]]
    assert chunks[-1]["finish_reason"] == "abort"  # aborted, not cut: 400 tokens take far longer than the test
    assert all(c["finish_reason"] is None for c in chunks[:-1])
    assert "Traceback" not in output and "CancelledError" not in output, output[-3000:]
    assert "shut down cleanly" in output


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # NOTE: is_running checks it is the same process
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def is_engine_process(p: psutil.Process) -> bool:
    try:
        return any("spawn_main" in part for part in p.cmdline())
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["loading", "serving"])
def test_no_child_outlives_a_front_end_killed_with_sigkill(phase, tmp_path):
    port = free_port_block()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "log", "w+") as log:
        proc = start_server(port, log, *(TINY if phase == "serving" else ()), "--log-level", "warning")
        try:
            if phase == "serving":
                wait_serving(proc, url)
            deadline = time.monotonic() + 120
            while not any(is_engine_process(p) for p in descendants(proc.pid)):
                assert proc.poll() is None and time.monotonic() < deadline, "no engine process started"
                time.sleep(0.05)
            children = descendants(proc.pid)
            if phase == "loading":
                with pytest.raises(httpx.TransportError):  # not serving yet: the engine is still loading
                    httpx.get(url + "/health", timeout=1)
            proc.kill()
            proc.wait(30)
            deadline = time.monotonic() + 60
            while still_running(children):
                assert time.monotonic() < deadline, f"children outlived their front end: {still_running(children)}"
                time.sleep(0.2)
        finally:
            for p in still_running(descendants(proc.pid) if proc.poll() is None else []):
                p.kill()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_a_second_signal_while_draining_exits_at_once_and_takes_the_children(tmp_path):
    """SIGTERM drains (here: a 300 s grace and a 400-token stream), a Ctrl-C meanwhile exits now
    (code 130), and the engine process, shutting down, goes with the front end."""
    port = free_port_block()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "log", "w+") as log:
        proc = start_server(port, log, *TINY, "--graceful-shutdown-s", "300", "--log-level", "info")
        try:
            wait_serving(proc, url)
            children = descendants(proc.pid)
            events: list[bytes] = []
            first = threading.Event()
            reader = threading.Thread(target=stream_events, args=(url, 400, events, first), daemon=True)
            reader.start()
            assert first.wait(60)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while True:  # draining: the listener is closed, the stream still runs
                try:
                    httpx.get(url + "/health", timeout=1)
                except httpx.TransportError:
                    break
                assert time.monotonic() < deadline, "SIGTERM did not stop the listener"
                time.sleep(0.1)
            assert reader.is_alive() and proc.poll() is None
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
            deadline = time.monotonic() + 60
            while still_running(children):
                assert time.monotonic() < deadline, f"children outlived their front end: {still_running(children)}"
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
    assert "exiting now" in output and "Traceback" not in output, output[-3000:]
