"""ProgramState (the `s` of `def prog(s, ...)`) and ForkGroup (what `s.fork(n)` returns)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from radixserve.lang.executor import Executor, done_event
from radixserve.lang.ir import Expr, RoleBegin, RoleEnd, as_expr
from radixserve.lang.ir import assistant as _assistant
from radixserve.lang.ir import system as _system
from radixserve.lang.ir import user as _user


class ProgramState:
    """The state of one program: token ids (exact), their text, named values, chat messages.

    `s += "text"`, `s += gen("x")`, `s += select(...)` append; `s["x"]` waits for and returns a
    value; `s.meta("x")` its metadata (prompt_tokens, cached_tokens, completion_tokens,
    finish_reason, latency_s). The program's return value is `ret_value`."""

    def __init__(self, executor: Executor) -> None:
        self._ex = executor
        self.ret_value: Any = None

    # ---- appending --------------------------------------------------------------------------------
    def __iadd__(self, other: Any) -> "ProgramState":
        if other is None:
            raise ValueError("cannot append None to a program state")
        self._ex.submit(other)
        return self

    def _role(self, role: str, build: Callable[[Any], Expr], expr: Any):
        if expr is not None:
            self._ex.submit(build(expr))
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator["ProgramState"]:
        self._ex.submit(RoleBegin(role))
        yield self
        self._ex.submit(RoleEnd(role))

    def system(self, expr: Any = None):
        """`s.system("text")` appends a system message; `with s.system(): ...` wraps what follows."""
        return self._role("system", _system, expr)

    def user(self, expr: Any = None):
        return self._role("user", _user, expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", _assistant, expr)

    # ---- reading ----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self._ex.get(name)

    def get_var(self, name: str) -> Any:
        return self._ex.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._ex.names

    def meta(self, name: str) -> dict | list:
        """Metadata of the call that set `name` (a list, one per branch, for a joined fork)."""
        return self._ex.get_meta(name)

    get_meta_info = meta

    def text(self) -> str:
        """The state's text: every append's text, in order (waits for queued calls)."""
        self._ex.wait_idle()
        return self._ex.text()

    def token_ids(self) -> list[int]:
        """The exact token ids the next call would continue from (waits for queued calls)."""
        self._ex.wait_idle()
        with self._ex.cv:
            return list(self._ex.tokens)

    def messages(self) -> list[dict]:
        """The chat messages closed so far, as {"role", "content"} dicts."""
        self._ex.wait_idle()
        with self._ex.cv:
            return [dict(m) for m in self._ex.messages]

    def sync(self) -> None:
        """Wait for queued calls; raise the program's error if it failed."""
        self._ex.sync()

    def error(self) -> BaseException | None:
        self._ex.wait_idle()
        return self._ex.run.error

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Pieces of the state's text (or of one variable) as they are generated, when the
        program was run with stream=True; otherwise the whole text (or value) once finished."""
        ex = self._ex
        if not ex.run.stream:
            yield self.text() if var_name is None else str(self[var_name])
            return
        sent = 0
        while True:
            with ex.cv:
                while True:
                    current, final = ex.stream_view(var_name)
                    if len(current) > sent or final:
                        break
                    ex.wait_change(0.5)
            if len(current) > sent:
                yield current[sent:]
                sent = len(current)
            if final:
                break
        if ex.run.error is not None and (var_name is None or var_name not in ex.variables):
            raise ex.run.error

    # ---- forks ------------------------------------------------------------------------------------
    def fork(self, n: int = 1) -> "ForkGroup":
        """n states continuing from this one's exact tokens. The shared tokens are computed once
        (one prefill request) before the branches start, so every branch finds them cached."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"fork(n) needs an integer n >= 1, got {n!r}")
        self._ex.sync()
        meta = self._ex.prefill() if n > 1 else None
        names = set(self._ex.names)
        return ForkGroup([ProgramState(self._ex.child()) for _ in range(n)], self, names, meta)

    @contextmanager
    def copy(self) -> Iterator["ProgramState"]:
        """`with s.copy() as c:` a one-branch fork, joined back at the end of the block."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ForkGroup:
    """The branches of a fork. `forks += expr` appends to every branch (a list: one item per
    branch; a callable: called with the branch index); `join()` gathers the variables the branches
    created into the parent, one list per name, and ends the branches."""

    def __init__(self, states: list[ProgramState], parent: ProgramState, parent_names: set[str],
                 prefill_meta: dict | None) -> None:
        self.states = states
        self.parent = parent
        self._parent_names = parent_names
        self.prefill_meta = prefill_meta  # the shared prefix's prefill request (None when not needed)
        self._joined = False

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        # NOTE: `forks[i] += expr` appends in place and assigns the same state back
        if value is not self.states[i]:
            raise ValueError("a fork's branches cannot be replaced; append to them with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ForkGroup":
        if callable(other) and not isinstance(other, Expr):
            for i, s in enumerate(self.states):
                s += other(i)
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} items for {len(self.states)} branches")
            for s, item in zip(self.states, other):
                s += item
        else:
            expr = as_expr(other)
            for s in self.states:
                s += expr
        return self

    def join(self) -> None:
        if self._joined:
            return
        parent = self.parent._ex
        for s in self.states:
            s._ex.sync()
        parent.sync()
        new: list[str] = []
        for s in self.states:
            new += [n for n in s._ex.variables if n not in self._parent_names and n not in new]
        clash = [n for n in new if n in parent.names]
        if clash:
            raise ValueError(f"join: the parent already has variables {clash}; names are unique per state")
        with parent.cv:
            for n in new:
                parent.variables[n] = [s._ex.variables.get(n) for s in self.states]
                parent.meta[n] = [s._ex.meta.get(n) for s in self.states]
        for n in new:
            parent.names.add(n)
            parent.events[n] = done_event()
        for s in self.states:
            s._ex.end()
        self._joined = True
