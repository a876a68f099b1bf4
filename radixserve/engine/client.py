"""EngineClient: the HTTP front end's handle on an engine process (radixserve/engine/process.py).
An EngineHandle (radixserve/engine/interface.py), like the in-process Engine. Requests are prepared
(the one validation, radixserve/engine/prepare.py) here, in the front end: the engine process
receives PreparedRequests and checks nothing again.

Text is made here, off the scheduler's process: each sample's tokens go through a RequestText
(detokenizer + stop strings) token by token, in the order the engine produced them. When a stop
string matches, the sample finishes for its caller at once (its text cut before the stop, its
tokens up to the one that completed the stop) and an abort with reason "stop" goes to the engine,
which frees the request's slots at its next step. Tokens the engine computed between the stop
and that abort are dropped and counted in the stats as `tokens_after_stop` (the engine's
`generated_tokens` includes them; the usage a client sees does not).

Threads: a receiver thread reads the engine's per-step batches and hands each batch to the asyncio
loop of the request it concerns with one call; sends are serialised by a lock. If the engine
process dies, every waiting caller gets EngineDeadError and `on_death` is called.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from radixserve.engine import wire
from radixserve.engine.chat_template import ChatTemplating
from radixserve.engine.client_group import ClientGroup, GroupMessage, deliver
from radixserve.engine.errors import EngineDeadError, QueueFullError
from radixserve.engine.prepare import (OverContext, PreparedRequest, RequestLimits, per_prompt, prepare,
                                       prompts_to_ids)
from radixserve.grammar.backend import GrammarBackend
from radixserve.grammar.errors import GrammarError
from radixserve.outputs import RequestOutput, StreamDelta
from radixserve.parent_watch import from_main_thread
from radixserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 1800.0  # loading a large model from disk can take minutes
CALL_TIMEOUT_S = 60.0


class EngineClient(ChatTemplating):
    """Starts an engine process with `options` (EngineConfig fields) and talks to it."""

    def __init__(self, on_death: Callable[[], None] | None = None, log_level: str = "info", **options) -> None:
        import zmq

        self.on_death = on_death
        self._dir = tempfile.mkdtemp(prefix="radixserve-")  # NOTE: mode 0700: only this user reaches the sockets
        self._ctx = zmq.Context(1)
        to_engine, from_engine = f"ipc://{self._dir}/in", f"ipc://{self._dir}/out"
        self._send = self._ctx.socket(zmq.PUSH)
        self._send.setsockopt(zmq.LINGER, 0)
        self._send.bind(to_engine)
        self._recv = self._ctx.socket(zmq.PULL)
        self._recv.bind(from_engine)
        self._send_lock = threading.Lock()
        self._groups: dict[str, ClientGroup] = {}  # by request id
        self._calls: dict[int, list] = {}  # call id -> [threading.Event, ok, value]
        self._call_ids = itertools.count()
        self._lock = threading.Lock()
        self._dead = False
        self._closing = False
        self.tokens_after_stop = 0
        self.stop_aborts = 0
        mp = multiprocessing.get_context("spawn")
        from radixserve.engine.process import engine_main

        self.process = mp.Process(target=engine_main, args=(options, to_engine, from_engine, log_level, os.getpid(), from_main_thread()),
                                  name="radixserve-engine", daemon=False)
        self.process.start()
        try:
            self._await_ready()
        except BaseException:
            self._kill()
            raise
        info = self.info
        self.tokenizer = info.tokenizer
        self.config = info.config
        self.model_name = info.model_name
        self.max_context_len = info.max_context_len
        self.vocab_size = info.vocab_size
        self.eos_ids = set(info.eos_ids)
        self.limits = RequestLimits(self.vocab_size, self.max_context_len, info.kv_capacity, self.config.page_size)
        self.grammar = GrammarBackend(self.tokenizer, self.vocab_size, self.eos_ids, 1,
                                      self.config.grammar_compile_timeout_s)  # validation only: compiles run in the engine
        self._receiver = threading.Thread(target=self._receive, name="radixserve-engine-recv", daemon=True)
        self._receiver.start()

    # ---- startup / liveness ----------------------------------------------------------------------
    def _await_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._recv.poll(200):
                msg = wire.decode_from_engine(self._recv.recv())[0]
                if isinstance(msg, wire.Ready):
                    self.info: wire.EngineInfo = msg.info
                    return
                if isinstance(msg, wire.StartupFailed):
                    if msg.user_error:
                        raise ValueError(msg.message)
                    raise RuntimeError(f"the engine process failed to start: {msg.message}")
                raise RuntimeError(f"the engine process sent {type(msg).__name__} before Ready")
            if not self.process.is_alive():
                raise RuntimeError(f"the engine process exited with code {self.process.exitcode} while starting; "
                                   "see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine process did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def is_alive(self) -> bool:
        return not self._dead and self.process.is_alive()

    def _receive(self) -> None:
        while True:
            if self._recv.poll(250):
                try:
                    batch = wire.decode_from_engine(self._recv.recv(copy=False).buffer)
                except Exception:  # noqa: BLE001 - the context closed at shutdown
                    if self._closing:
                        return
                    raise
                self._dispatch(batch)
                continue
            if self._closing:
                return
            if not self.process.is_alive():
                self._died()
                return

    def _died(self) -> None:
        self._dead = True
        logger.error("the engine process exited (code %s); failing every request in flight", self.process.exitcode)
        # NOTE: on_death first: a caller that got EngineDeadError can count on it having run.
        if self.on_death is not None and not self._closing:
            try:
                self.on_death()
            except Exception:  # noqa: BLE001 - the callers must still be failed
                logger.exception("on_death failed")
        with self._lock:
            groups = list(self._groups.values())
            calls = list(self._calls.values())
        for g in groups:
            deliver(g, [wire.EngineDead()])
        for c in calls:
            c[2] = "the engine process is gone"
            c[0].set()

    def _dispatch(self, batch: list[wire.FromEngine]) -> None:
        """On the receiver thread: route one batch; one hand-over per request concerned."""
        per_group: dict[str, tuple[ClientGroup, list[GroupMessage]]] = {}
        for msg in batch:
            if isinstance(msg, wire.Reply):
                with self._lock:
                    call = self._calls.pop(msg.call_id, None)
                if call is not None:
                    call[1], call[2] = msg.ok, msg.value
                    call[0].set()
                continue
            if not isinstance(msg, (wire.Tokens, wire.Finished, wire.Failed)):
                logger.error("unexpected %s from the engine process", type(msg).__name__)
                continue
            entry = per_group.get(msg.rid)
            if entry is None:
                with self._lock:
                    g = self._groups.get(msg.rid)
                if g is None:  # the caller has gone and the group was forgotten
                    continue
                entry = per_group[msg.rid] = (g, [])
            entry[1].append(msg)
        for g, msgs in per_group.values():
            deliver(g, msgs)

    # ---- requests --------------------------------------------------------------------------------
    def _post(self, items: list[wire.ToEngine]) -> None:
        if self._dead:
            raise EngineDeadError("the engine process is gone; the server is shutting down")
        with self._send_lock:
            self._send.send(wire.encode(items))

    def prepare(self, input_ids: Sequence[int], params: SamplingParams,
                over_context: OverContext = "clamp") -> PreparedRequest:
        """Engine.prepare, here, so bad input never reaches the engine process."""
        return prepare(input_ids, params, self.limits, self.grammar, over_context)

    def check_request(self, input_ids: Sequence[int], params: SamplingParams) -> None:
        self.prepare(input_ids, params)

    def _open(self, input_ids: Sequence[int] | PreparedRequest | None, params: SamplingParams | None,
              request_id: str | None, cache_salt: str | None, prompt: str | None) -> ClientGroup:
        if isinstance(input_ids, PreparedRequest):
            if params is not None or prompt is not None:
                raise ValueError("a PreparedRequest carries its own prompt and sampling_params; give nothing else")
            prepared = input_ids
        else:
            ids = prompts_to_ids(self.tokenizer, prompt, [input_ids] if input_ids is not None else None)[0]
            prepared = self.prepare(ids, params or SamplingParams())
        params = prepared.params
        rid = request_id or uuid.uuid4().hex
        g = ClientGroup(rid, params.n, params, list(prepared.input_ids), self.tokenizer, asyncio.get_running_loop())
        g.orphan = self._orphan
        with self._lock:
            if rid in self._groups:
                raise ValueError(f"request id {rid!r} is already in use")
            self._groups[rid] = g
        try:
            self._post([wire.Add.of(rid, prepared, cache_salt)])
        except BaseException:
            self._close(g)
            raise
        return g

    def _close(self, g: ClientGroup) -> None:
        with self._lock:
            if self._groups.get(g.rid) is g:
                del self._groups[g.rid]

    async def _deltas(self, g: ClientGroup) -> AsyncIterator[StreamDelta]:
        """The group's deltas until every sample finished for the caller; leaving early aborts."""
        try:
            while g.caller_open:
                for msg in await g.queue.get():
                    for delta in self._apply(g, msg):
                        yield delta
        finally:
            if g.caller_open and not self._dead:
                self.abort(g.rid)
            # NOTE: on the caller's loop, like `receive`: nothing arrives between the drain and detaching.
            g.detached = True
            while not g.queue.empty():
                self._orphan(g, g.queue.get_nowait())
            if not g.engine_open or self._dead:
                self._close(g)

    def _orphan(self, g: ClientGroup, msgs: list[GroupMessage]) -> None:
        """Messages for a group whose caller has left: count tokens computed after a stop string,
        forget the group once the engine has finished all its samples."""
        for msg in msgs:
            if isinstance(msg, wire.Tokens):
                s = g.samples[msg.index]
                if s.done and s.finish_reason == "stop":
                    with self._lock:
                        self.tokens_after_stop += len(msg.token_ids)
            elif isinstance(msg, wire.Finished):
                g.engine_open -= 1
            else:  # Failed, EngineDead
                g.engine_open = 0
        if g.engine_open <= 0:
            self._close(g)

    def _apply(self, g: ClientGroup, msg: GroupMessage) -> list[StreamDelta]:
        """One engine message for this group -> the deltas its caller sees (on the caller's loop)."""
        if isinstance(msg, wire.Tokens):
            return self._apply_tokens(g, msg)
        if isinstance(msg, wire.Finished):
            return self._apply_finished(g, msg)
        if isinstance(msg, wire.EngineDead):
            raise EngineDeadError("the engine process exited; see the server log")
        g.engine_open = 0  # Failed
        self._close(g)
        if msg.kind == "grammar":
            raise GrammarError(msg.field, msg.message)
        if msg.kind == "queue_full":
            raise QueueFullError(msg.message)
        raise ValueError(msg.message)

    def _apply_finished(self, g: ClientGroup, msg: wire.Finished) -> list[StreamDelta]:
        s = g.samples[msg.index]
        g.engine_open -= 1
        if s.done:  # already finished for the caller (a stop string matched here)
            return []
        s.done = True
        g.caller_open -= 1
        s.finish_reason, s.prompt_len, s.cached = msg.reason, msg.prompt_len, msg.cached
        if s.matched_stop is None:
            s.matched_stop = msg.matched_stop
        plp_out = None
        if msg.prompt_logprobs is not None:
            s.prompt_logprobs = plp_out = wire.logprobs_from_wire(msg.prompt_logprobs)
        return [StreamDelta(s.name, s.index, "", [], None, s.finish_reason, s.prompt_len, s.cached,
                            len(s.token_ids), plp_out, s.matched_stop)]

    def _apply_tokens(self, g: ClientGroup, msg: wire.Tokens) -> list[StreamDelta]:
        s = g.samples[msg.index]
        tokens = msg.token_ids
        if s.done:  # computed after a stop string matched, before the engine saw the abort
            with self._lock:
                self.tokens_after_stop += len(tokens)
            return []
        s.prompt_len, s.cached = msg.prompt_len, msg.cached
        lps = wire.logprobs_from_wire(msg.logprobs)
        plp_out = wire.logprobs_from_wire(msg.prompt_logprobs) if msg.prompt_logprobs is not None else None
        if plp_out is not None:
            s.prompt_logprobs = plp_out
        # NOTE: stop strings are decided by the text side (RequestText.feed), as in process.
        text, kept, matched = s.text_state.feed(tokens, msg.reason)
        stopped = matched is not None
        if stopped:
            s.matched_stop = matched
        s.text += text
        s.token_ids += tokens[:kept]
        s.logprobs += lps[:kept]
        deltas = [StreamDelta(s.name, s.index, text, list(tokens[:kept]),
                              lps[:kept] or None, None, msg.prompt_len, msg.cached, len(s.token_ids), plp_out)]
        if stopped:
            with self._lock:
                self.tokens_after_stop += len(tokens) - kept
                self.stop_aborts += 1
            s.done, s.finish_reason = True, "stop"
            g.caller_open -= 1
            deltas[0].finish_reason, deltas[0].matched_stop = "stop", matched
            try:
                self._post([wire.Abort(g.rid, s.index, "stop")])
            except EngineDeadError:
                pass
        return deltas

    async def generate_stream(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                              sampling_params: SamplingParams | None = None, request_id: str | None = None,
                              cache_salt: str | None = None, prompt: str | None = None
                              ) -> AsyncIterator[StreamDelta]:
        """Engine.generate_stream through the engine process; closing the generator aborts."""
        g = self._open(input_ids, sampling_params, request_id, cache_salt, prompt)
        async for d in self._deltas(g):
            yield d

    async def agenerate(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                        sampling_params: SamplingParams | None = None, request_id: str | None = None, cache_salt: str | None = None,
                        prompt: str | None = None) -> list[RequestOutput]:
        g = self._open(input_ids, sampling_params, request_id, cache_salt, prompt)
        async for _ in self._deltas(g):
            pass
        want_lp = g.params.logprobs is not None
        want_plp = g.params.prompt_logprobs_start is not None
        return [RequestOutput(request_id=s.name, text=s.text,
                              token_ids=list(s.token_ids), finish_reason=s.finish_reason, prompt_tokens=s.prompt_len,
                              cached_tokens=s.cached, logprobs=list(s.logprobs) if want_lp else None,
                              prompt_logprobs=list(s.prompt_logprobs or []) if want_plp else None, index=s.index,
                              matched_stop=s.matched_stop) for s in g.samples]

    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 cache_salt: str | None = None) -> list[RequestOutput]:
        """Engine.generate, from a thread with no running event loop."""
        batch = prompts_to_ids(self.tokenizer, prompts, input_ids)
        prepared = [self.prepare(ids, p) for ids, p in zip(batch, per_prompt(sampling_params, len(batch)))]

        async def run() -> list[list[RequestOutput]]:
            return await asyncio.gather(*(self.agenerate(req, cache_salt=cache_salt) for req in prepared))
        return [o for outs in asyncio.run(run()) for o in outs]

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None):
        out = self.generate(input_ids=[self.apply_chat_template(messages)], sampling_params=sampling_params)
        return out if len(out) > 1 else out[0]

    def abort(self, request_id: str, reason: str = "abort", index: int | None = None) -> None:
        """Finish the request at the engine's next step: every sample, or only sample `index`."""
        try:
            self._post([wire.Abort(request_id, index, reason)])
        except EngineDeadError:
            pass

    def abort_all(self) -> None:
        """Abort every request in flight: each sample finishes with reason "abort"."""
        with self._lock:
            rids = list(self._groups)
        for rid in rids:
            self.abort(rid)

    # ---- calls -----------------------------------------------------------------------------------
    def _call(self, name: wire.CallName, *args, timeout: float = CALL_TIMEOUT_S):
        call = [threading.Event(), False, None]
        call_id = next(self._call_ids)
        with self._lock:
            self._calls[call_id] = call
        try:
            self._post([wire.Call(call_id, name, args)])
            if not call[0].wait(timeout):
                raise TimeoutError(f"the engine did not answer {name} within {timeout:.0f} s")
        finally:
            with self._lock:
                self._calls.pop(call_id, None)
        if self._dead and not call[1]:
            raise EngineDeadError("the engine process is gone")
        if not call[1]:
            raise RuntimeError(f"the engine's {name} failed: {call[2]}")
        return call[2]

    async def _acall(self, name: wire.CallName, *args, timeout: float = CALL_TIMEOUT_S):
        return await asyncio.to_thread(self._call, name, *args, timeout=timeout)

    def stats(self) -> dict:
        return self._call("stats") | {"tokens_after_stop": self.tokens_after_stop, "stop_aborts": self.stop_aborts}

    def flush_cache(self) -> bool:
        return self._call("flush_cache")

    def check_integrity(self) -> None:
        self._call("check_integrity")

    async def save_cache(self) -> dict:
        return await self._acall("save_cache", timeout=600.0)

    async def cache_events(self, after: int, epoch: str | None, limit: int) -> dict:
        from radixserve.cache.cache_events import encode_events

        return encode_events(*await self._acall("cache_events", after, epoch, limit))

    def shutdown(self, timeout: float = 60.0) -> int | None:
        """Abort what is left, stop the engine process, return its exit code (None: had to be killed)."""
        if self.process.is_alive() and not self._dead:
            try:
                self._call("shutdown", timeout=timeout)
            except Exception:  # noqa: BLE001 - stopping anyway
                logger.exception("the engine did not shut down cleanly")
        self._closing = True
        self.process.join(timeout)
        code = self.process.exitcode
        self._kill()
        return code

    def _kill(self) -> None:
        self._closing = True
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        if getattr(self, "_receiver", None) is not None and self._receiver is not threading.current_thread():
            self._receiver.join(5)
        self._send.close(linger=0)
        self._recv.close(linger=0)
        self._ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
