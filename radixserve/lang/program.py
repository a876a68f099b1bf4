"""`@function` programs and how they run: run, run(stream=True), run_batch, arun."""
from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from tqdm import tqdm

from radixserve.lang.backend.base import Backend
from radixserve.lang.executor import Executor
from radixserve.lang.ir import DEFAULTABLE, check_sampling
from radixserve.lang.run import Cancelled, ProgramRun
from radixserve.lang.state import ProgramState


class _DefaultBackend:
    """NOTE: the one process-wide setting of the language (SGLang's `set_default_backend`): a
    program run without `backend=` uses it. Guarded by a lock; set it once at start-up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backend: Backend | None = None

    def set(self, backend: Backend | None) -> None:
        if backend is not None and not isinstance(backend, Backend):
            raise ValueError(f"the default backend must be a LocalBackend or a RuntimeEndpoint, got {backend!r}")
        with self._lock:
            self._backend = backend

    def get(self) -> Backend | None:
        with self._lock:
            return self._backend


_DEFAULT = _DefaultBackend()


def set_default_backend(backend: Backend | None) -> None:
    _DEFAULT.set(backend)


def get_default_backend() -> Backend | None:
    return _DEFAULT.get()


def function(func: Callable | None = None):
    """`@function def prog(s, ...)`: makes `prog.run(...)`, `prog.run_batch(...)`, `prog.arun(...)`."""
    if func is None:
        return Function
    return Function(func)


class Function:
    def __init__(self, func: Callable, bound: dict[str, Any] | None = None) -> None:
        if not callable(func):
            raise ValueError(f"@function decorates a function, got {func!r}")
        self.func = func
        self.bound = dict(bound or {})
        self.name = getattr(func, "__name__", "program")
        self._signature = inspect.signature(func)
        self._own_params = set(list(self._signature.parameters)[1:])
        functools.update_wrapper(self, func)

    def bind(self, **kwargs: Any) -> "Function":
        """A copy with some of the program's arguments fixed."""
        return Function(self.func, {**self.bound, **kwargs})

    def __call__(self, *args: Any, **kwargs: Any):
        """Inside another program, `prog(s, ...)` runs this one on that state; else `run(...)`."""
        if args and isinstance(args[0], ProgramState):
            return self.func(*args, **{**self.bound, **kwargs})
        return self.run(*args, **kwargs)

    # ---- running --------------------------------------------------------------------------------
    def run(self, *args: Any, backend: Backend | None = None, stream: bool = False, **kwargs: Any) -> ProgramState:
        """Run the program and return its state once every call has finished (stream=False), or
        at once (stream=True: read it with `state.text_iter(...)`). Keyword arguments named like
        SamplingParams fields (temperature, max_new_tokens, stop, ...) that the program does not
        take itself become defaults for its calls. A failed call raises ProgramError naming it."""
        run, state, a, kw = self._prepare(args, kwargs, backend, stream)
        if not stream:
            return self._execute(run, state, a, kw)
        threading.Thread(target=self._execute_quietly, args=(run, state, a, kw), daemon=True,
                         name=f"radixserve-lang-{self.name}").start()
        return state

    def run_batch(self, batch_kwargs: Iterable[dict[str, Any]], *, backend: Backend | None = None,
                  num_threads: int | str = "auto", progress_bar: bool = False, return_exceptions: bool = False,
                  **defaults: Any) -> list[ProgramState | BaseException]:
        """Run the program once per kwargs dict, concurrently (their calls batch in the engine).
        Returns the states in order; with return_exceptions=True a failed program's entry is its
        exception, else the first failure is raised once every program has ended."""
        items = list(batch_kwargs)
        if not all(isinstance(kw, dict) for kw in items):
            raise ValueError("run_batch takes a list of keyword-argument dicts, one per program")
        if num_threads != "auto" and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be 'auto' or an integer >= 1, got {num_threads!r}")
        if not items:
            return []
        backend = self._backend(backend)
        prepared = [self._prepare((), {**defaults, **kw}, backend, False) for kw in items]
        workers = min(len(items), 512) if num_threads == "auto" else num_threads
        results: list[ProgramState | BaseException] = []
        with ThreadPoolExecutor(workers, thread_name_prefix=f"radixserve-lang-{self.name}") as pool, \
                tqdm(total=len(items), desc=self.name, unit="program", disable=not progress_bar) as bar:
            futures = [pool.submit(self._execute, *p) for p in prepared]
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as exc:  # noqa: BLE001 - returned or raised below
                    results.append(exc)
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results

    async def arun(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """`await prog.arun(...)`: run without blocking the event loop (the program's body runs on
        its own thread; its calls batch in the engine with everything else). Cancelling the
        awaiting task aborts the program's requests."""
        run, state, a, kw = self._prepare(args, kwargs, backend, False)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(value: Any, exc: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(value)

        def target() -> None:
            try:
                value, exc = self._execute(run, state, a, kw), None
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
                value, exc = None, e
            try:
                loop.call_soon_threadsafe(settle, value, exc)
            except RuntimeError:  # the event loop is gone: nobody is waiting any more
                pass

        threading.Thread(target=target, daemon=True, name=f"radixserve-lang-{self.name}").start()
        try:
            return await fut
        except asyncio.CancelledError:
            run.fail(asyncio.CancelledError(f"{self.name}.arun was cancelled"))
            raise

    # ---- internals ------------------------------------------------------------------------------
    def _backend(self, backend: Backend | None) -> Backend:
        backend = backend if backend is not None else get_default_backend()
        if backend is None:
            raise ValueError("no backend: pass backend=LocalBackend() (or RuntimeEndpoint(url)), "
                             "or call set_default_backend(...) first")
        if not isinstance(backend, Backend):
            raise ValueError(f"backend must be a LocalBackend or a RuntimeEndpoint, got {backend!r}")
        return backend

    def _prepare(self, args: tuple, kwargs: dict, backend: Backend | None, stream: bool):
        backend = self._backend(backend)
        kwargs = {**self.bound, **kwargs}
        defaults = {k: kwargs.pop(k) for k in list(kwargs) if k in DEFAULTABLE and k not in self._own_params}
        check_sampling(defaults)
        self._signature.bind(None, *args, **kwargs)  # TypeError now, not in a worker thread
        run = ProgramRun(backend, defaults, stream, self.name)
        ex = Executor(run, list(backend.initial_ids), [], {}, {}, [], None, 0, 0, False)
        return run, ProgramState(ex), args, kwargs

    def _execute(self, run: ProgramRun, state: ProgramState, args: tuple, kwargs: dict) -> ProgramState:
        try:
            state.ret_value = self.func(state, *args, **kwargs)
            run.sync_all()
        except BaseException as exc:
            run.fail(exc)
            _drain(run)  # NOTE: the aborted calls have returned: their requests are gone from the engine
            if isinstance(exc, Cancelled) and run.error is not None:
                raise run.error from None  # the program was waiting on a call the run's failure cancelled
            raise
        finally:
            run.end()
        return state

    def _execute_quietly(self, run: ProgramRun, state: ProgramState, args: tuple, kwargs: dict) -> None:
        try:
            self._execute(run, state, args, kwargs)
        except BaseException:  # noqa: BLE001 - kept in run.error; text_iter / sync raise it
            pass


def _drain(run: ProgramRun) -> None:
    try:
        run.sync_all()
    except BaseException:  # noqa: BLE001 - the run's error is already being raised
        pass
