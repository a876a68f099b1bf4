"""One run of a program: its backend, its default sampling fields, every state (executor) it has
forked, the request ids in flight, and its first error.

NOTE: the first failure anywhere in a run (a call that fails, or an exception in the program's
body) fails the whole run: the requests in flight are aborted (their KV slots are freed by the
engine), queued calls are skipped, and every wait in the run wakes and raises that error.
"""
from __future__ import annotations

import itertools
import threading
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from radixserve.lang.ir import CallSite

if TYPE_CHECKING:
    from radixserve.lang.backend.base import Backend


class ProgramError(RuntimeError):
    """A gen / select / fork of a program failed; the message names the call and where it was written."""

    def __init__(self, call: str, site: CallSite | None, program: str, cause: BaseException | str) -> None:
        where = str(site) if site is not None else program
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{call} in {where} failed: {reason}")
        self.call, self.site, self.program = call, site, program


class Cancelled(Exception):
    """Raised inside a run's executors once the run has failed elsewhere."""


class Member(Protocol):
    """What a run asks of each state it has forked (an Executor): the run holds its states, not
    their code, so executor.py imports this module and never the other way round."""

    def wake_all(self) -> None: ...

    def wait_idle(self) -> None: ...

    def end(self) -> None: ...


class ProgramRun:
    def __init__(self, backend: "Backend", defaults: dict[str, Any], stream: bool, program: str) -> None:
        self.backend = backend
        self.defaults = defaults
        self.stream = stream
        self.program = program
        self._lock = threading.Lock()
        self._executors: list[Member] = []
        self._inflight: set[str] = set()
        self._ids = itertools.count()
        self._prefix = f"lang-{uuid.uuid4().hex[:16]}"
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def register(self, executor: Member) -> None:
        with self._lock:
            self._executors.append(executor)

    def next_rid(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    @contextmanager
    def tracking(self, rid: str) -> Iterator[None]:
        """Mark `rid` in flight while a backend call runs; refuse to start once the run failed."""
        with self._lock:
            if self.error is not None:
                raise Cancelled()
            self._inflight.add(rid)
        try:
            yield
        finally:
            with self._lock:
                self._inflight.discard(rid)

    def fail(self, exc: BaseException) -> None:
        """Record the run's first error, abort its requests in flight, wake every waiter."""
        with self._lock:
            if self.error is not None:
                return
            self.error = exc
            rids = list(self._inflight)
            executors = list(self._executors)
        for rid in rids:
            self.backend.abort(rid)
        for ex in executors:
            ex.wake_all()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def sync_all(self) -> None:
        """Wait until every state of the run (forks included) has executed what it was given."""
        done: set[int] = set()
        while True:
            with self._lock:
                todo = [ex for ex in self._executors if id(ex) not in done]
            if not todo:
                break
            for ex in todo:
                ex.wait_idle()
                done.add(id(ex))
        self.raise_if_failed()

    def end(self) -> None:
        """Stop every state's worker (the program is over)."""
        with self._lock:
            executors = list(self._executors)
        for ex in executors:
            ex.end()
