"""Running the router: in the foreground (`radixserve route`), in a background thread (tests,
benchmarks), or in front of N replica processes it starts itself (`radixserve serve --dp N`)."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from radixserve.parent_watch import child_env_with_parent
from radixserve.router.config import RouterConfig
from radixserve.syspath import child_env

logger = logging.getLogger(__name__)


def make_router_app(config: RouterConfig):
    from radixserve.router.app import build_router_app
    from radixserve.router.frontend import Frontend, load_router_tokenizer
    from radixserve.router.router import Router

    return build_router_app(Router(config, Frontend(load_router_tokenizer(config.model, config.tokenizer))))


def route(config: RouterConfig, sock: socket.socket | None = None) -> int:
    """Serve the router in the foreground until SIGINT/SIGTERM; returns the exit code. Until a
    replica answers, requests get 503 and /health says so. `sock`: the port, already bound
    (bound here, before the tokenizer loads, otherwise)."""
    import uvicorn

    from radixserve.server.shutdown import DrainingServer, bind_socket, exit_on_next_signal

    sock = sock or bind_socket(config.host, config.port)
    try:
        app = make_router_app(config)
    except BaseException:
        sock.close()
        raise
    router = app.state.router
    uv = DrainingServer(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                       lifespan="on", access_log=config.log_level == "debug"), None, 0.0)
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        logger.warning("routing on %s without an API key: anyone who can reach this address can use it", config.host)
    logger.info("routing on http://%s:%d over %d replica(s), policy %s", config.host, config.port,
                len(router.replicas), config.policy)
    try:
        uv.run(sockets=[sock])
    finally:
        exit_on_next_signal()  # NOTE: a caller's cleanup (serve --dp stopping replicas) still runs; again: now
        sock.close()
    return 0


class RouterThread:
    """`with RouterThread(config) as rt: rt.url` — a router on a free loopback port, in a thread."""

    def __init__(self, config: RouterConfig, ready_timeout_s: float = 120.0) -> None:
        import uvicorn

        self.app = make_router_app(config)
        self.router = self.app.state.router
        self.ready_timeout_s = ready_timeout_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="radixserve-router", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RouterThread:
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not (self.server.started and any(r.usable for r in self.router.replicas)):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                errors = [r.last_error for r in self.router.replicas]
                self.stop()
                raise RuntimeError(f"the router did not become ready: {errors}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> RouterThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---- radixserve serve --dp N ---------------------------------------------------------------------
def replica_devices(n: int, device: str) -> list[dict[str, str]]:
    """Environment per replica: one GPU each (CUDA_VISIBLE_DEVICES), or a share of the CPU cores."""
    use_cuda = device.startswith("cuda")
    if device == "auto":
        import torch

        use_cuda = torch.cuda.is_available()
    if use_cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = [d for d in visible.split(",") if d.strip()]
        else:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        if len(ids) < n:
            raise ValueError(f"--dp {n} needs {n} GPUs but {len(ids)} are visible; lower --dp")
        return [{"CUDA_VISIBLE_DEVICES": ids[i]} for i in range(n)]
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [{"OMP_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""} for _ in range(n)]


class ReplicaProcesses:
    """N `radixserve serve` processes on loopback ports; one that exits unexpectedly is started
    again (after 1 s, doubling up to 60 s while it keeps failing)."""

    def __init__(self, argv: list[str], ports: list[int], envs: list[dict[str, str]]) -> None:
        self.argv, self.ports, self.envs = argv, ports, envs
        self.procs: list[subprocess.Popen | None] = [None] * len(ports)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="radixserve-replicas", daemon=True)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def _spawn(self, i: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "radixserve", "serve", *self.argv, "--host", "127.0.0.1",
               "--port", str(self.ports[i])]
        logger.info("starting replica %d on port %d (%s)", i, self.ports[i],
                    " ".join(f"{k}={v}" for k, v in self.envs[i].items()))
        # NOTE: a session of its own: a terminal's Ctrl-C reaches the parent only, which stops the
        # replicas itself (and does not mistake their exit for a crash)
        # NOTE: and it dies with this process, whatever kills it (parent_watch, from the environment)
        env = child_env_with_parent(child_env({**os.environ, **self.envs[i]}))
        return subprocess.Popen(cmd, env=env, start_new_session=True)

    def start(self) -> ReplicaProcesses:
        for i in range(len(self.ports)):
            self.procs[i] = self._spawn(i)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        backoff = [1.0] * len(self.ports)
        while not self._stopping.wait(0.5):
            for i, p in enumerate(self.procs):
                if p is None or p.poll() is None:
                    continue
                logger.error("replica %d exited with code %s; restarting it in %.0f s", i, p.returncode, backoff[i])
                if self._stopping.wait(backoff[i]):
                    return
                with self._lock:
                    if not self._stopping.is_set():
                        self.procs[i] = self._spawn(i)
                backoff[i] = min(60.0, backoff[i] * 2)

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stopping.set()
        with self._lock:
            procs = [p for p in self.procs if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("replica pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.wait()


def serve_dp(n: int, replica_argv: list[str], device: str, router_options: dict[str, Any]) -> int:
    """Start n replicas (each `radixserve serve <replica_argv>` on loopback port router port + 1 + i)
    and the router in front of them; stop them all when the router stops (SIGINT/SIGTERM)."""
    if n < 1:
        raise ValueError(f"--dp must be >= 1, got {n}")
    port = router_options.get("port", 8000)
    urls = tuple(f"http://127.0.0.1:{port + 1 + i}" for i in range(n))
    config = RouterConfig(replicas=urls, **router_options)  # validated before anything starts
    from radixserve.server.shutdown import bind_socket

    sock = bind_socket(config.host, config.port)
    try:
        for p in range(port + 1, port + 1 + n):  # the replicas' ports: free now, or say so before starting any
            bind_socket("127.0.0.1", p).close()
        fleet = ReplicaProcesses(replica_argv, [port + 1 + i for i in range(n)], replica_devices(n, device)).start()
    except BaseException:
        sock.close()
        raise
    try:
        return route(config, sock)
    finally:
        fleet.stop()
