"""Engine: the public facade (an EngineHandle, radixserve/engine/interface.py). Tokenises,
prepares (the one validation, radixserve/engine/prepare.py), submits to the scheduler loop, and
collects results for synchronous, asynchronous and streaming callers."""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from typing import AsyncIterator, Callable, Sequence

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.cache_events import encode_events, read_events
from radixserve.cache.radix_tree import RadixTree
from radixserve.config import EngineConfig
from radixserve.engine import cache_snapshot
from radixserve.engine.chat_template import ChatTemplating
from radixserve.engine.errors import EngineDeadError, QueueFullError
from radixserve.engine.loop import EngineLoop
from radixserve.engine.prepare import (OverContext, PreparedRequest, RequestLimits, per_prompt, prepare,
                                       prompts_to_ids)
from radixserve.engine.stats import EngineStats
from radixserve.engine.text import text_factory
from radixserve.grammar.backend import GrammarBackend
from radixserve.grammar.matcher import RequestGrammar
from radixserve.outputs import RequestOutput, StreamDelta
from radixserve.sample_id import SampleId
from radixserve.runtime.model_runner import ModelRunner
from radixserve.runtime.rank_worker import serve_as_worker_if_launched
from radixserve.sampling_params import SamplingParams
from radixserve.scheduler.kv_manager import KVManager
from radixserve.scheduler.request import Request
from radixserve.scheduler.results import Event, ResultProcessor
from radixserve.scheduler.scheduler import Scheduler
from radixserve.scheduler.step_cost import step_cost_for

logger = logging.getLogger(__name__)


class Engine(ChatTemplating):
    """`Engine(model=None, **options)`: model None = the embedded SmolLM2-135M-Instruct; options
    are EngineConfig fields. Requests from all threads are batched by one background loop."""

    def __init__(self, model: str | None = None, *, detokenize: bool = True, **options) -> None:
        """detokenize=False: events and outputs carry token ids only, no text and no stop strings
        (the split server's engine process; its front end makes the text)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(EngineConfig)}
        if unknown:
            raise ValueError(f"unknown Engine options {sorted(unknown)}; see radixserve.EngineConfig")
        self.config = EngineConfig(model=model, **options)
        # NOTE: under a launcher (torchrun-style variables), ranks > 0 serve steps here and exit.
        serve_as_worker_if_launched(self.config)
        self._fatal: BaseException | None = None
        self.runner = ModelRunner(self.config)
        self.tokenizer = self.runner.tokenizer
        self.max_context_len = self.runner.max_context_len
        self.model_name = self.runner.name
        self.vocab_size = self.runner.vocab_size
        self.eos_ids = _eos_ids(self.runner.hf_config, self.tokenizer)
        allocator = PageAllocator(self.runner.num_pages, self.config.page_size)
        tree = RadixTree(allocator, disable=self.config.disable_radix_cache)
        self.kv = KVManager(allocator, tree, self.runner.req_table)
        self.limits = RequestLimits(self.vocab_size, self.max_context_len, allocator.capacity,
                                    self.config.page_size)
        self.stats_ = EngineStats()
        # NOTE: builds nothing heavy until the first structured-output request (xgrammar reads the
        # whole vocabulary then, in a compile thread).
        self.grammar = GrammarBackend(self.tokenizer, self.vocab_size, self.eos_ids,
                                      self.config.grammar_compile_threads, self.config.grammar_compile_timeout_s)
        self.results = ResultProcessor(self.vocab_size, self.eos_ids, self._dispatch, self.grammar,
                                       self.config.jump_forward,
                                       make_text=text_factory(self.tokenizer) if detokenize else None)
        self.scheduler = Scheduler(self.config, self.kv, self.runner.forward, self.results, self.runner.device,
                                   step_cost_for(self.config, self.runner))
        self._sinks: dict[int, Callable[[Event], None]] = {}
        self._arrival = itertools.count()
        self._lock = threading.Lock()
        self._released = False
        self.cache_restored = cache_snapshot.restore_at_start(self) if self.config.cache_dir else None
        self.loop = EngineLoop(self.scheduler, self.config.check_integrity, self._on_loop_error)

    # ---- synchronous API ----------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 cache_salt: str | None = None) -> list[RequestOutput]:
        """Generate for one or many prompts (text or token ids). n > 1 yields n consecutive outputs."""
        batch = prompts_to_ids(self.tokenizer, prompts, input_ids)
        params = per_prompt(sampling_params, len(batch))
        done = threading.Event()
        groups: list[list[Request]] = []
        pending = [sum(p.n for p in params)]

        def sink(ev: Event) -> None:
            if ev.finished:
                with self._lock:
                    pending[0] -= 1
                    if pending[0] == 0:
                        done.set()

        prepared = [self.prepare(ids, p) for ids, p in zip(batch, params)]
        for req in prepared:
            groups.append(self.submit(req, None, cache_salt, sink, text_when_done=True))
        try:
            for g in groups:
                self.wait_grammar(g)
        except ValueError:
            for g in groups:
                self.abort(g[0].rid)
            raise
        while not done.wait(0.5):
            if not self.loop.is_alive():
                self._raise_if_fatal()
                raise EngineDeadError("the engine loop stopped; create a new Engine")
        self._raise_if_fatal()
        return [self._output(r) for g in groups for r in g]

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None):
        """Apply the model's chat template and generate; a list of outputs when n > 1."""
        out = self.generate(input_ids=[self.apply_chat_template(messages)], sampling_params=sampling_params)
        return out if len(out) > 1 else out[0]

    # ---- asynchronous API (the server) --------------------------------------------------------
    async def generate_stream(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                              sampling_params: SamplingParams | None = None, request_id: str | None = None,
                              cache_salt: str | None = None, prompt: str | None = None
                              ) -> AsyncIterator[StreamDelta]:
        """Yield StreamDeltas as tokens arrive; closing the generator aborts the request. A
        PreparedRequest in place of `input_ids` is trusted (not checked again)."""
        started: set[int] = set()
        async for ev in self._events(input_ids, sampling_params, request_id, cache_salt, prompt, []):
            r = ev.req
            first = r.index not in started
            started.add(r.index)
            plp = list(r.prompt_logprobs) if first and r.params.prompt_logprobs_start is not None else None
            yield StreamDelta(SampleId(r.rid, r.index).name(r.params.n), r.index, ev.text, ev.token_ids, ev.logprobs or None,
                              r.finish_reason if ev.finished else None, len(r.prompt_ids),
                              r.cached_tokens or 0, len(r.output_ids), plp, r.matched_stop if ev.finished else None)

    async def agenerate(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                        sampling_params: SamplingParams | None = None,
                        request_id: str | None = None, cache_salt: str | None = None,
                        prompt: str | None = None) -> list[RequestOutput]:
        """All n outputs of one prompt, once finished."""
        reqs: list[Request] = []
        async for _ in self._events(input_ids, sampling_params, request_id, cache_salt, prompt, reqs,
                                    finished_only=True):
            pass
        return [self._output(r) for r in reqs]

    async def _events(self, input_ids, sampling_params, request_id, cache_salt, prompt,
                      reqs_out: list[Request], finished_only: bool = False) -> AsyncIterator[Event]:
        """The requests' events on this event loop; `finished_only`: their last events only.

        NOTE: every event handed over costs a cross-thread wake-up of the event loop, paid on the
        scheduler thread; a caller that needs only the outputs skips the per-token ones."""
        prepared = self._prepared(input_ids, sampling_params, prompt)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        rid = request_id or uuid.uuid4().hex

        def sink(ev: Event) -> None:
            if ev.finished or not finished_only:
                loop.call_soon_threadsafe(q.put_nowait, ev)
        reqs_out += self.submit(prepared, rid, cache_salt, sink, text_when_done=finished_only)
        remaining = len(reqs_out)
        try:
            await self._await_grammar(reqs_out)
            while remaining:
                ev = await q.get()
                if ev.finished:
                    remaining -= 1
                    self._raise_if_fatal()
                yield ev
        finally:
            if remaining:
                self.abort(rid)

    def abort(self, request_id: str, reason: str = "abort", index: int | None = None) -> None:
        """Finish the request at its next step: every sample, or only sample `index`."""
        self.loop.submit(lambda s: s.abort(request_id, reason, index))

    def abort_all(self) -> None:
        """Abort every waiting and running request (each finishes with reason "abort")."""
        self.loop.submit(lambda s: s.abort_all())

    # ---- state ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        # NOTE: read from the caller's thread without waiting for the loop (a scrape must not wait
        # for a step): plain counters, each consistent on its own.
        return self.grammar.stats.snapshot() | self.stats_.snapshot(**self.scheduler.stats())

    def check_integrity(self) -> None:
        """Raise if the KV accounting or the tree is broken (runs on the loop thread)."""
        self.loop.call(lambda s: s.check_integrity())

    def flush_cache(self) -> bool:
        return self.loop.call(lambda s: s.flush_cache())

    def save_cache_to(self, path: str | None = None) -> dict:
        """Write the radix cache (tree and K/V) to `path` (default: cache_dir's snapshot), atomically,
        between two steps. Returns what was written (nodes, tokens, bytes, seconds)."""
        return self.loop.call(lambda s: cache_snapshot.save(self, path), timeout=600)

    async def save_cache(self) -> dict:
        """save_cache_to(None) without blocking the event loop (the HTTP route's call)."""
        return await asyncio.wrap_future(self.loop.submit(lambda s: cache_snapshot.save(self)))

    def read_cache_events(self, after: int, epoch: str | None, limit: int) -> Future:
        """The tree's events since `after` (or a resync), read between two steps; see cache_events.read_events."""
        return self.loop.submit(lambda s: read_events(s.kv.tree, after, epoch, limit))

    async def cache_events(self, after: int, epoch: str | None, limit: int) -> dict:
        """The tree's part of a /cache/events answer, JSON-ready (encoded off the loop thread)."""
        return encode_events(*await asyncio.wrap_future(self.read_cache_events(after, epoch, limit)))

    def is_alive(self) -> bool:
        return self.loop.is_alive()

    def shutdown(self) -> None:
        if self.loop.is_alive():
            try:
                self.loop.call(lambda s: s.abort_all(), timeout=30)
            except Exception:  # noqa: BLE001 - shutting down anyway
                logger.exception("aborting requests at shutdown failed")
        self.loop.stop()
        self.grammar.shutdown()
        if self.loop.stopped and not self._released and self.config.cache_dir:
            try:
                cache_snapshot.save(self)  # NOTE: the loop has stopped: the tree holds still
            except Exception:  # noqa: BLE001 - shutting down anyway; the previous snapshot is intact
                logger.exception("saving the radix cache at shutdown failed")
        if self.loop.stopped and not self._released:
            self._released = True
            self.runner.release()  # another engine in this process may want the device memory

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- validation ----------------------------------------------------------------------------
    def prepare(self, input_ids: Sequence[int], params: SamplingParams,
                over_context: OverContext = "clamp") -> PreparedRequest:
        """The one validation (radixserve/engine/prepare.py): FieldError, naming its field, for a
        request the engine cannot serve."""
        return prepare(input_ids, params, self.limits, self.grammar, over_context)

    def check_request(self, input_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise ValueError (a FieldError), saying what is wrong, for a request the engine cannot serve."""
        self.prepare(input_ids, params)

    # ---- submission (the engine process of the split server calls these) ------------------------
    def submit(self, prepared: PreparedRequest, rid: str | None, namespace: str | None,
               sink: Callable[[Event], None], text_when_done: bool = False) -> list[Request]:
        """Queue the n samples of a prepared request (trusted: checked by `prepare`, not here);
        `sink` gets every event of theirs, on the loop thread. QueueFullError when the queue is full.
        `text_when_done`: the caller reads the text only from the finished requests, so without stop
        strings it is made once at the end (events before then carry no text)."""
        if len(self.scheduler.waiting) >= self.config.max_queued_requests:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are queued; retry later")
        ids, params, spec = prepared.input_ids, prepared.params, prepared.grammar
        rid = rid or uuid.uuid4().hex
        base_seed = params.seed if params.seed is not None else secrets.randbits(62)
        compiled, deadline = None, 0.0
        if spec is not None:
            compiled = self.grammar.compile(spec)
            deadline = time.monotonic() + self.config.grammar_compile_timeout_s
            # NOTE: an idle loop sleeps on its inbox; wake it so the request is admitted at once.
            compiled.add_done_callback(lambda _: self.loop.submit(_noop))
        group: list[Request] = []
        for i in range(params.n):
            req = Request(rid=rid, prompt_ids=list(ids), params=params,
                          seed=(base_seed + 1_000_003 * i) % (1 << 62), namespace=namespace, index=i,
                          arrival=next(self._arrival), text_when_done=text_when_done,
                          grammar=None if spec is None else RequestGrammar(spec, compiled, deadline))
            group.append(req)
        with self._lock:
            for r in group:
                self._sinks[id(r)] = sink

        def add_all(s: Scheduler) -> None:
            for r in group:
                s.add(r)
        self.loop.submit(add_all)
        return group

    def wait_grammar(self, group: list[Request]) -> None:
        """Block until the group's grammar compiled; GrammarError otherwise (the engine process
        of the split server watches grammars with it)."""
        g = group[0].grammar
        if g is not None:
            self.grammar.wait(g.future, g.spec, max(0.0, g.deadline - time.monotonic()))

    # ---- internals -----------------------------------------------------------------------------
    def _prepared(self, input_ids, sampling_params: SamplingParams | None, prompt: str | None) -> PreparedRequest:
        if isinstance(input_ids, PreparedRequest):
            if sampling_params is not None or prompt is not None:
                raise ValueError("a PreparedRequest carries its own prompt and sampling_params; give nothing else")
            return input_ids
        ids = prompts_to_ids(self.tokenizer, prompt, [input_ids] if input_ids is not None else None)[0]
        return self.prepare(ids, sampling_params or SamplingParams())

    async def _await_grammar(self, group: list[Request]) -> None:
        """wait_grammar without blocking the event loop."""
        g = group[0].grammar
        if g is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(g.future)),
                                   max(0.0, g.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise self.grammar.timeout_error(g.spec) from None
        except Exception as exc:  # noqa: BLE001 - the compiler's error, said as bad input
            raise self.grammar.failure_error(g.spec, exc) from None

    def _dispatch(self, ev: Event) -> None:
        """Called on the loop thread for every event."""
        with self._lock:
            sink = self._sinks.get(id(ev.req))
            if ev.finished:
                self._sinks.pop(id(ev.req), None)
                self.stats_.on_finish(ev.req)
        if sink is not None:
            try:
                sink(ev)
            except RuntimeError:  # e.g. the caller's event loop closed: nobody is listening any more
                logger.debug("dropping an event of %s: its receiver is gone", ev.req.rid)

    @staticmethod
    def _output(r: Request) -> RequestOutput:
        return RequestOutput(request_id=SampleId(r.rid, r.index).name(r.params.n), text=r.text, token_ids=list(r.output_ids),
                             finish_reason=r.finish_reason, prompt_tokens=len(r.prompt_ids),
                             cached_tokens=r.cached_tokens or 0,
                             logprobs=list(r.logprobs) if r.params.logprobs is not None else None,
                             prompt_logprobs=list(r.prompt_logprobs) if r.params.prompt_logprobs_start is not None
                             else None, index=r.index, matched_stop=r.matched_stop)

    def _raise_if_fatal(self) -> None:
        """EngineDeadError when a step failed for good (the requests it ended were aborted by it)."""
        if self._fatal is not None:
            raise EngineDeadError(f"the engine stopped: {self._fatal}")

    def _on_loop_error(self, exc: BaseException) -> None:
        if getattr(exc, "fatal", False):  # e.g. a tensor-parallel rank died: no step can run again
            self._fatal = exc
            self.loop.stop()
        try:
            self.scheduler.recover_from_failed_step()
        except Exception:  # noqa: BLE001
            logger.exception("could not clean up after a failed step")


def _noop(_scheduler: Scheduler) -> None:
    return None




def _eos_ids(hf_config, tokenizer) -> set[int]:
    ids: set[int] = set()
    eos = getattr(hf_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
