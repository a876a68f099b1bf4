"""Executor: one program state's token ids, text, variables and messages, and the worker thread
that executes what the program appends to it, in order.

`s += expr` checks the expression on the program's thread (names unique per state, roles
balanced: ValueError at the call) and queues it; the worker runs it. So the program's thread
moves on while a gen runs, which is how forked branches and the programs of a run_batch reach
the engine together and batch there.

NOTE (token-exact state): `tokens` are the exact ids every later call is given. Constant text is
tokenised once, on its own (Backend.encode); a gen appends the ids the model produced (its stop
token dropped, see tokens.gen_tokens); a select appends the ids it scored. So every call continues
from tokens the engine has already computed, and is a radix-tree hit up to them. `pieces` hold
the text of each append, so text() == "".join(pieces) == the user's view of the tokens.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Sequence

from radixserve.lang.backend.base import Aborted, GenOutput, ScoreRequest
from radixserve.lang.ir import (Expr, Gen, RoleBegin, RoleEnd, Select, Text, as_expr, check_sampling, walk)
from radixserve.lang.run import Cancelled, ProgramError, ProgramRun
from radixserve.lang.tokens import gen_tokens, share_equal_prefixes
from radixserve.sampling_params import SamplingParams


class Executor:
    def __init__(self, run: ProgramRun, tokens: list[int], pieces: list[str], variables: dict[str, Any],
                 meta: dict[str, Any], messages: list[dict], role: str | None, role_start: int, computed: int,
                 conversation_started: bool) -> None:
        self.run = run
        self.backend = run.backend
        self._cv = threading.Condition()
        # ---- worker side (read by others under _cv, or after wait_idle) ----
        self.tokens = tokens
        self.pieces = pieces
        self.text_len = sum(len(p) for p in pieces)
        self.variables = variables
        self.meta = meta
        self.messages = messages
        self.role = role
        self.role_start = role_start
        self.computed = computed  # leading tokens known to be computed (in the tree, unless evicted)
        self.conversation_started = conversation_started
        self.partial_text = ""  # streamed text of the gen in flight
        self.partial: dict[str, str] = {}  # streamed value of the gen in flight, by name
        self.finished = False  # the worker has stopped
        # ---- program-thread side: what has been queued ----
        self.names = set(variables)
        self.events: dict[str, threading.Event] = {name: done_event() for name in variables}
        self.planned_role = role
        self.planned_content = bool(tokens) or bool(pieces)
        self.closed = False
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        run.register(self)

    # ---- program thread -----------------------------------------------------------------------
    def submit(self, value: Any) -> None:
        if self.closed:
            raise RuntimeError("this program has finished; append to a state only inside the program")
        expr = as_expr(value)
        self._plan(expr)
        self._queue.put(expr)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="radixserve-lang-state", daemon=True)
            self._worker.start()

    def _plan(self, expr: Expr) -> None:
        """Check `expr` against what is queued before it; commit the new names and role only if
        all of it is valid (ValueError at the program's line otherwise)."""
        names, role, content = set(), self.planned_role, self.planned_content
        for leaf in walk(expr):
            if isinstance(leaf, (Gen, Select)):
                if leaf.name is not None and (leaf.name in self.names or leaf.name in names):
                    raise ValueError(f"{leaf.describe()}: the name {leaf.name!r} is already used in this state; "
                                     "names are unique per state (fork branches and their parent included)")
                if not content:
                    raise ValueError(f"{leaf.describe()} needs text before it: the state is empty")
                if leaf.name is not None:
                    names.add(leaf.name)
                content = True
            elif isinstance(leaf, RoleBegin):
                markers = self.backend.role_markers()
                if leaf.role not in markers.begin:
                    raise ValueError(f"this model's chat template has no {leaf.role} role")
                if role is not None:
                    raise ValueError(f"{leaf.role}_begin() inside an open {role} role; end it with {role}_end() first")
                role, content = leaf.role, True
            elif isinstance(leaf, RoleEnd):
                if role != leaf.role:
                    raise ValueError(f"{leaf.role}_end() without a matching {leaf.role}_begin()"
                                     + (f" (the open role is {role})" if role else ""))
                role = None
            elif isinstance(leaf, Text) and leaf.value:
                content = True
        for name in names:
            self.events[name] = threading.Event()
        self.names |= names
        self.planned_role, self.planned_content = role, content

    def wait_idle(self) -> None:
        """Wait until everything queued so far has been executed (or skipped after a failure)."""
        self._queue.join()

    def sync(self) -> None:
        self.wait_idle()
        self.run.raise_if_failed()

    def get(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(f"no variable {name!r} in this state (variables: {sorted(self.names)})")
        self.events[name].wait()
        with self._cv:
            if name in self.variables:
                return self.variables[name]
        self.run.raise_if_failed()
        raise KeyError(name)  # not reached: a missing value means the run failed

    def get_meta(self, name: str) -> Any:
        self.get(name)
        with self._cv:
            return self.meta.get(name)

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(None)
            if self._worker is None:
                with self._cv:
                    self.finished = True
                    self._cv.notify_all()

    def wake_all(self) -> None:
        for ev in list(self.events.values()):
            ev.set()
        with self._cv:
            self._cv.notify_all()

    # ---- views ----------------------------------------------------------------------------------
    def text(self) -> str:
        with self._cv:
            return "".join(self.pieces)

    def stream_view(self, var: str | None) -> tuple[str, bool]:
        """(text so far, whether it is final) of the whole state or of one variable; under _cv."""
        if var is None:
            return "".join(self.pieces) + self.partial_text, self.finished
        if var in self.variables:
            return self.variables[var], True
        return self.partial.get(var, ""), self.finished or (self.run.failed and var not in self.partial)

    def wait_change(self, timeout: float) -> None:
        self._cv.wait(timeout)

    @property
    def cv(self) -> threading.Condition:
        return self._cv

    # ---- worker thread --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            expr = self._queue.get()
            try:
                if expr is None:
                    break
                if not self.run.failed:
                    for leaf in walk(expr):
                        self._execute(leaf)
            except Cancelled:
                pass
            except ProgramError as exc:
                self.run.fail(exc)
            except Exception as exc:  # noqa: BLE001 - a bug or a backend failure outside a call: fail the run
                self.run.fail(ProgramError("appending to the state", None, self.run.program, exc))
            finally:
                self._queue.task_done()
        with self._cv:
            self.finished = True
            self._cv.notify_all()

    def _execute(self, leaf: Expr) -> None:
        if self.run.failed:
            raise Cancelled()
        if isinstance(leaf, Text):
            if leaf.value:
                self._append(self.backend.encode(leaf.value), leaf.value)
        elif isinstance(leaf, RoleBegin):
            markers = self.backend.role_markers()
            if not self.conversation_started and leaf.role != "system" and markers.conversation_start:
                self._append(self.backend.encode(markers.conversation_start), markers.conversation_start)
            self.conversation_started = True
            self._append(self.backend.encode(markers.begin[leaf.role]), markers.begin[leaf.role])
            self.role, self.role_start = leaf.role, self.text_len
        elif isinstance(leaf, RoleEnd):
            with self._cv:
                content = "".join(self.pieces)[self.role_start:]
            end = self.backend.role_markers().end[leaf.role]
            self._append(self.backend.encode(end), end)
            with self._cv:
                self.messages.append({"role": leaf.role, "content": content})
            self.role = None
        elif isinstance(leaf, Gen):
            self._gen(leaf)
        elif isinstance(leaf, Select):
            self._select(leaf)
        else:
            raise TypeError(f"cannot execute {leaf!r}")

    def _append(self, ids: Sequence[int], text: str, computed_to: int | None = None) -> None:
        with self._cv:
            self.partial_text = ""  # NOTE: a streamed gen's text moves into pieces in one step
            self.tokens.extend(ids)
            self.pieces.append(text)
            self.text_len += len(text)
            if computed_to is not None:
                self.computed = computed_to
            self._cv.notify_all()

    def _finish_var(self, name: str | None, value: Any, meta: dict) -> None:
        with self._cv:
            if name is not None:
                self.variables[name] = value
                self.meta[name] = meta
                self.partial.pop(name, None)
            self._cv.notify_all()
        if name is not None:
            self.events[name].set()

    def _call(self, describe: str, site, fn, *args, **kwargs):
        """Run a backend call under a tracked request id; map its failures to ProgramError."""
        rid = self.run.next_rid()
        try:
            with self.run.tracking(rid):
                return fn(*args, rid=rid, **kwargs)
        except (Cancelled, ProgramError):
            raise
        except Aborted:
            if self.run.failed:
                raise Cancelled() from None
            raise ProgramError(describe, site, self.run.program, "the request was aborted") from None
        except Exception as exc:  # noqa: BLE001 - named and re-raised for the program's caller
            raise ProgramError(describe, site, self.run.program, exc) from exc

    def _params(self, g: Gen) -> SamplingParams:
        fields = {**self.run.defaults, **g.overrides}
        if g.return_logprob:
            fields["logprobs"] = g.top_logprobs_num
        if self.role is not None:  # NOTE: a gen inside a role also stops at the role's end marker token
            end = self.backend.encode(self.backend.role_markers().end[self.role])
            if end and end[0] in self.backend.special_ids:
                fields["stop_token_ids"] = sorted({*(fields.get("stop_token_ids") or ()), end[0]})
        try:
            check_sampling(fields)
            return SamplingParams(**fields)
        except (TypeError, ValueError) as exc:
            raise ProgramError(g.describe(), g.site, self.run.program, exc) from exc

    def _gen(self, g: Gen) -> None:
        params = self._params(g)
        prompt = list(self.tokens)
        on_chunk = None
        if self.run.stream:
            with self._cv:
                self.partial_text = ""
                if g.name is not None:
                    self.partial[g.name] = ""

            def on_chunk(text: str, ids: list[int]) -> None:
                with self._cv:
                    self.partial_text += text
                    if g.name is not None:
                        self.partial[g.name] = self.partial.get(g.name, "") + text
                    self._cv.notify_all()
        t0 = time.perf_counter()
        out: GenOutput = self._call(g.describe(), g.site, self.backend.generate, prompt, params, on_chunk=on_chunk)
        latency = time.perf_counter() - t0
        if out.finish_reason == "abort":
            if self.run.failed:
                raise Cancelled()
            raise ProgramError(g.describe(), g.site, self.run.program, "the engine aborted the request")
        ids, kept = gen_tokens(self.backend, prompt, out, params)
        meta = {"prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens,
                "completion_tokens": len(out.token_ids), "finish_reason": out.finish_reason, "latency_s": latency}
        if out.logprobs is not None:
            meta["output_token_logprobs"] = out.logprobs
        # NOTE: the engine computed the prompt and every output token but the last sampled one.
        self._append(ids, out.text, len(prompt) + min(kept, max(len(out.token_ids) - 1, 0)))
        self._finish_var(g.name, out.text, meta)

    def _select(self, s: Select) -> None:
        prefix = list(self.tokens)
        choice_ids = [self.backend.encode(c) for c in s.choices]
        requests = [ScoreRequest(prefix + c, len(prefix)) for c in choice_ids]
        if s.method.needs_unconditional:
            requests += [ScoreRequest(list(c), 1) for c in choice_ids]
        t0 = time.perf_counter()
        outs = self._call(s.describe(), s.site, self.backend.score, requests)
        latency = time.perf_counter() - t0
        k = len(choice_ids)
        cond = [list(o.logprobs) for o in outs[:k]]
        uncond = [[0.0] + list(o.logprobs) for o in outs[k:]] if s.method.needs_unconditional else None
        for i, c in enumerate(choice_ids):
            if len(cond[i]) != len(c) or (uncond is not None and len(uncond[i]) != len(c)):
                raise ProgramError(s.describe(), s.site, self.run.program,
                                   f"the backend returned log-probs for the wrong number of tokens of {s.choices[i]!r}")
        share_equal_prefixes(choice_ids, cond)
        if uncond is not None:
            share_equal_prefixes(choice_ids, uncond)
        decision = s.method.decide(cond, uncond)
        chosen = decision.index
        meta = {"prompt_tokens": sum(o.prompt_tokens for o in outs[:k]),
                "cached_tokens": sum(o.cached_tokens for o in outs[:k]), "completion_tokens": 0,
                "finish_reason": None, "latency_s": latency, "prefix_tokens": len(prefix),
                "choices": list(s.choices), "method": s.method.name, "scores": decision.scores,
                "choice_logprobs": cond, "unconditional_logprobs": uncond}
        # NOTE: a scoring request computes its whole prompt, the chosen choice included.
        self._append(choice_ids[chosen], s.choices[chosen], len(prefix) + len(choice_ids[chosen]))
        self._finish_var(s.name, s.choices[chosen], meta)

    # ---- fork -----------------------------------------------------------------------------------
    def prefill(self) -> dict | None:
        """Compute the state's tokens once (so n branches share them from the tree); program thread."""
        with self._cv:
            tokens, computed = list(self.tokens), self.computed
        if not self.backend.caches_prefixes or len(tokens) - computed <= 1:
            return None
        t0 = time.perf_counter()
        out = self._call("fork()", None, self.backend.generate, tokens, SamplingParams(max_new_tokens=0))
        if out.finish_reason == "abort":
            raise Cancelled() if self.run.failed else ProgramError("fork()", None, self.run.program,
                                                                  "the prefill request was aborted")
        with self._cv:
            self.computed = len(tokens)
        return {"prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens,
                "latency_s": time.perf_counter() - t0}

    def child(self) -> "Executor":
        with self._cv:
            ex = Executor(self.run, list(self.tokens), list(self.pieces), dict(self.variables), dict(self.meta),
                          [dict(m) for m in self.messages], self.role, self.role_start, self.computed,
                          self.conversation_started)
        ex.planned_role = self.planned_role
        return ex


def done_event() -> threading.Event:
    ev = threading.Event()
    ev.set()
    return ev
