"""Free loopback ports for tests that start servers as subprocesses, and the wait until one serves."""
from __future__ import annotations

import socket
import time
from typing import Callable


def free_port_block(n: int = 1) -> int:
    """A port p such that p .. p+n-1 were free just now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def _answers_health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_serving(proc, url: str, ready: Callable[[str], bool] | None = None, timeout: float = 300.0) -> None:
    """Poll until the server subprocess `proc` at `url` is ready: `ready(url)` true (default: GET
    /health answers 200). Fails with the process's output if it exits first or the time runs out.
    `ready` may raise httpx.TransportError (not up yet)."""
    import httpx

    ready = ready or _answers_health
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout is not None else ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise AssertionError(f"the server exited with code {proc.returncode} before it was ready:\n{out[-3000:]}")
        try:
            if ready(url):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server at {url} was not ready within {timeout:.0f} s"
        time.sleep(0.25)
