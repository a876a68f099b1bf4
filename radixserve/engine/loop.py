"""The background thread that runs scheduler steps and takes commands from other threads."""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable

from radixserve.scheduler.scheduler import Scheduler

logger = logging.getLogger(__name__)


class EngineLoop:
    """Owns the scheduler: every mutation of it happens on this thread, through `call`."""

    def __init__(self, scheduler: Scheduler, check_integrity: bool, on_error: Callable[[BaseException], None]):
        self.scheduler = scheduler
        self.check_integrity = check_integrity
        self.on_error = on_error
        # NOTE: called on this thread after every round (commands drained, one step): whoever
        # batches the step's events (the engine process) sends them from here, once per step.
        self.after_step: Callable[[], None] | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="radixserve-scheduler", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """The loop thread has exited: nothing touches the scheduler any more."""
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def submit(self, fn: Callable[[Scheduler], object]) -> Future:
        """Run fn(scheduler) on the loop thread before its next step."""
        fut: Future = Future()
        self._inbox.put((fn, fut))
        return fut

    def call(self, fn: Callable[[Scheduler], object], timeout: float | None = 60.0):
        return self.submit(fn).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _drain(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if item is None:
                continue
            fn, fut = item
            try:
                fut.set_result(fn(self.scheduler))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _run(self) -> None:
        sched = self.scheduler
        worked = False
        while not self._stop.is_set():
            self._drain(block=not worked)
            if self._stop.is_set():
                break
            self._after_step()  # commands may have produced events (e.g. replies)
            try:
                worked = sched.step()
                if not worked and self.check_integrity and not sched.running:
                    sched.check_integrity()
            except Exception as exc:  # noqa: BLE001 - a failed step must not kill the server
                logger.exception("scheduler step failed; aborting the requests in flight")
                self.on_error(exc)
            self._after_step()
        self._drain(block=False)
        self._after_step()

    def _after_step(self) -> None:
        if self.after_step is not None:
            try:
                self.after_step()
            except Exception:  # noqa: BLE001
                logger.exception("the after-step hook failed")
