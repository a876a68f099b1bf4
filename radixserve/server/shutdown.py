"""The listening socket, bound before anything slow starts, and how a foreground server stops.

Signals (a foreground `radixserve serve` / `route`):
- the first SIGINT (Ctrl-C) or SIGTERM: stop accepting connections and admitting requests. SIGTERM
  (an orchestrator) lets in-flight requests run until shortly before the grace period ends; SIGINT
  (a person at a terminal) aborts them at once. Either way an aborted request ends as a request
  does: its stream gets a final event (finish_reason "abort") and `[DONE]`; nothing is cancelled
  mid-write, so no traceback. Then the process exits 0.
- a second SIGINT or SIGTERM, at any time after the first (the engine still shutting down
  included): exit at once (code 130). Children die with us (radixserve/parent_watch.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any, Callable

import uvicorn

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORT_MARGIN_S = 2.0  # under SIGTERM, in-flight requests are aborted this long before the grace period ends


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it later); a ValueError naming the port
    when it is taken or the address is not ours, so the user learns it before the model loads."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # NOTE: a listening socket still blocks the bind
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, or stop what "
                         "is listening there") from None
    sock.set_inheritable(False)
    return sock


def exit_now(signum: int, frame: Any) -> None:
    """A second signal: leave at once, without cleanup."""
    logger.warning("received %s again: exiting now", signal.Signals(signum).name)
    logging.shutdown()
    os._exit(130)


def exit_on_next_signal() -> None:
    for sig in SIGNALS:
        signal.signal(sig, exit_now)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the shutdown described above. `abort_in_flight` is called on the
    event loop (never from the signal handler itself: it takes locks)."""

    def __init__(self, config: uvicorn.Config, abort_in_flight: Callable[[], None] | None,
                 grace_s: float) -> None:
        super().__init__(config)
        self._abort_in_flight = abort_in_flight
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # NOTE: not uvicorn's: it re-raises the signal after shutting down, which would kill us
        # before the engine is shut down; and a second signal here means "now".
        if self.should_exit:
            exit_now(sig, frame)
        self.should_exit = True
        name = signal.Signals(sig).name
        if self._abort_in_flight is None or self._loop is None:
            return
        if sig == signal.SIGINT:
            logger.info("%s: stopping; requests in flight are aborted (again to exit now)", name)
            delay = 0.0
        else:
            delay = max(0.0, self._grace_s - min(ABORT_MARGIN_S, self._grace_s / 2))
            logger.info("%s: stopping; requests in flight get %.0f s to finish (again to exit now)", name, delay)
        self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._abort)

    def _abort(self) -> None:
        if self._abort_in_flight is not None:
            self._abort_in_flight()
