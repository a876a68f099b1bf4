"""Continuous-batching scheduler: each step picks decode rows, continues chunked prefills,
admits waiting requests in cache-aware order, runs the model, and hands results on."""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from radixserve.config import EngineConfig
from radixserve.core.transfer import tensor_on
from radixserve.scheduler import batch_builder
from radixserve.scheduler.batch_builder import Row
from radixserve.scheduler.kv_manager import KVManager
from radixserve.scheduler.policy import order_waiting
from radixserve.scheduler.prefix_grouping import options_from
from radixserve.scheduler.request import Request, State
from radixserve.scheduler.results import Sampled
from radixserve.scheduler.speculation import Speculator
from radixserve.scheduler.step_budget import SHORT_FIRST_SHARE, StepBudget, StepTimer, step_budget
from radixserve.scheduler.step_cost import StepCostModel, batch_work

logger = logging.getLogger(__name__)

# NOTE: requests admitted together that share tokens beyond their cached prefix would each compute
# them. A request whose next IN_BATCH_KEY tokens after its cached prefix equal those of a request
# being prefilled waits; the other caches them as its chunks finish, and this one then hits the
# tree. (n > 1 samples of one prompt are the extreme case: one prefill serves them all.)
IN_BATCH_KEY = 32
# NOTE: admission keeps this fraction of each running request's remaining new tokens free, so
# decode rarely has to retract; retraction stays correct when the estimate is wrong.
DECODE_RESERVE_RATIO = 0.3


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVManager,
                 forward: Callable[[object], torch.Tensor], results, device: torch.device,
                 step_cost: StepCostModel | None = None) -> None:
        self.config = config
        self.kv = kv
        self.forward = forward  # ForwardBatch -> logits [L, V]
        self.results = results  # ResultProcessor
        self.device = device
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.step_count = 0
        self.retractions = 0
        self.inflight: Sampled | None = None  # the launched step whose samples the host has not seen
        if config.max_step_ms is not None and step_cost is None:
            raise ValueError("max_step_ms needs a step cost model (the engine builds one from the model's shape)")
        self.step_cost = step_cost
        self.timer = StepTimer(step_cost, time.perf_counter) if step_cost is not None else None
        spec = config.speculative_config
        self.speculator = Speculator(spec, kv) if spec is not None else None

    # ---- queue -------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        req.enqueue_step = self.step_count
        self.waiting.append(req)

    def abort(self, rid: str, reason: str = "abort", index: int | None = None) -> None:
        """Finish every sample of request `rid` (or only sample `index`) at the next step with `reason`
        ("stop" when a stop string matched where the text is made, outside the scheduler)."""
        for req in self.waiting + self.running:
            if req.rid == rid and (index is None or req.index == index):
                req.abort_reason = reason

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> bool:
        """Launch one model step, then bring the previous step's samples to the host while the
        device works (overlap); False when there was nothing to do.

        NOTE: with overlap, a decode row's input is the previous step's sample, gathered on the
        device; the host learns it one step later. A request that stops therefore computes one
        token more than it keeps, and that sample is dropped. When a row samples under a grammar,
        the previous step's samples are taken between this step's forward and its sampling (the
        mask needs them); the forward itself still overlaps that host work."""
        self._reap_aborted()
        if self.inflight is not None and not self._can_overlap():
            self._finalize(self.inflight)
            self.inflight = None
        started = time.perf_counter()
        rows = self._schedule()
        if self.speculator is not None:
            rows = self.speculator.draft(rows)
        launched = None
        if rows:
            self.step_count += 1
            batch, plan = batch_builder.build(rows, self.device, options_from(self.config))
            if plan.pending_inputs:
                self._gather_pending_inputs(batch, plan)
            work = batch_work([(req.kv.kv_len, ext, False) for req, ext in rows])
            work = work._replace(logit_rows=len(plan.sample_rows))
            logits = self.forward(batch)
            for req, ext in rows:
                req.kv.kv_len += ext
            for req, ext in rows:
                if ext > 1 and not req.decode.draft:  # NOTE: a draft's K/V is not the request's until verified
                    self.kv.cache_prefix(req)  # chunked prefill caches as it goes; others hit it
            if self.inflight is not None and self.results.needs_host_tokens(rows, plan):
                # NOTE: a grammar's mask needs the previous step's tokens: take them now, while the
                # device runs this step's forward (which stays overlapped); sampling waits for them.
                self._finalize(self.inflight)
                self.inflight = None
            launched = self.results.sample(rows, plan, logits)
            if self.timer is not None:
                self.timer.launched(launched, work, started)
        previous, self.inflight = self.inflight, launched
        if previous is not None:
            self._finalize(previous)
        if launched is not None and (not self.config.overlap_schedule or launched.verify):
            # NOTE: a verify step settles at once: the next draft starts from the tokens it kept
            self._finalize(launched)
            self.inflight = None
        return bool(rows) or previous is not None

    def _can_overlap(self) -> bool:
        """Sampling the next token before the host has appended the last one is exact unless
        the sampler needs the token history (penalties, the min_new_tokens count)."""
        if not self.config.overlap_schedule:
            return False
        if self.speculator is not None and self.speculator.may_draft(len(self.running)):
            return False  # NOTE: a draft is made on the host from every token so far
        return all(r.params.repetition_penalty == 1.0 and r.params.presence_penalty == 0.0
                   and r.params.frequency_penalty == 0.0 and len(r.output_ids) >= r.params.min_new_tokens
                   for r in self.inflight.reqs)

    def _gather_pending_inputs(self, batch, plan) -> None:
        """Decode inputs still on the device: copy them from the in-flight samples, on the device."""
        assert self.inflight is not None and self.inflight.device_tokens is not None
        where = self.inflight.token_index()
        tokens = self.inflight.device_tokens
        dst = tensor_on([i for i, _ in plan.pending_inputs], torch.int64, tokens.device)
        src = tensor_on([where[id(r)] for _, r in plan.pending_inputs], torch.int64, tokens.device)
        batch.input_ids[dst] = tokens[src]

    def _finalize(self, s: Sampled) -> None:
        """Take a step's samples to the host and finish the requests that stopped."""
        finished = self.results.finalize(s)
        for req, _ in s.verify:
            self.speculator.settle(req)  # before a finished request's tokens go into the tree
        self._finish_all(finished)
        if self.timer is not None:
            self.timer.completed(s, synced=s.result is not None)

    def _finish_all(self, finished: list[Request]) -> None:
        for req in finished:
            self._finish(req)

    def _schedule(self) -> list[Row]:
        while True:
            rows = self._decode_rows()
            budget = self._budget(rows)
            prefilling = [r for r in self.running if r.todo > 1]
            if budget.limited:
                # NOTE: requests are decoding, so prefill time is scarce: short prompts (at most one chunk
                # left) go in before the next chunk of a long one, within a share of the step while a long
                # one is running, and running prefills continue shortest-remaining first.
                prefilling.sort(key=lambda r: r.todo)
                if self.waiting:
                    budget.hold_ms = budget.ms * (1 - SHORT_FIRST_SHARE) if prefilling else 0.0
                    rows += self._admit(budget, reserved=self._reserved(), short_only=True)
                    budget.hold_ms = 0.0
            for req in prefilling:
                ext = self._prefill_chunk(req, budget)
                if ext:
                    rows.append(Row(req, ext))
            rows += self._admit(budget, reserved=self._reserved())
            if rows or not any(r.todo > 0 for r in self.running):  # todo 0: done, awaiting finalize
                return rows
            if len(self.running) == 1:
                raise RuntimeError("a lone request cannot get KV slots; raise max_total_tokens")
            # Every running request is stuck waiting for memory: free some by retraction.
            self._retract(self._victim(self.running))

    def _decode_rows(self) -> list[Row]:
        decoding = [r for r in self.running if r.todo == 1]
        while decoding:
            need = sum(self.kv.pages_for(r, 1) for r in decoding) * self.kv.page_size
            if self.kv.make_free(need) or len(self.running) == 1:
                break
            victim = self._victim(self.running)
            self._retract(victim)
            if victim in decoding:
                decoding.remove(victim)
        if decoding and not self.kv.grow_each_by_one(decoding):
            raise RuntimeError("KV pool cannot hold one more token for a lone request; raise max_total_tokens")
        return [Row(req, 1) for req in decoding]

    def _budget(self, decode_rows: list[Row]) -> StepBudget:
        cfg = self.config
        if cfg.max_step_ms is None or not decode_rows:
            return StepBudget(cfg.max_prefill_tokens)
        work = batch_work([(req.kv.kv_len, 1, True) for req, _ in decode_rows])
        return step_budget(cfg.max_prefill_tokens, cfg.max_step_ms, self.step_cost, work, cfg.chunked_prefill_size)

    def _prefill_chunk(self, req: Request, budget: StepBudget) -> int:
        want = min(req.todo, self.config.chunked_prefill_size)
        ext = budget.grant(req.kv.kv_len, want, samples=req.todo <= want, floor=True)
        if ext <= 0 or not self.kv.grow(req, ext):
            return 0
        budget.take(req.kv.kv_len, ext, samples=ext == req.todo, floor=True)
        return ext

    def _reserved(self) -> int:
        return int(sum(max(0, r.params.max_new_tokens - len(r.output_ids)) for r in self.running)
                   * DECODE_RESERVE_RATIO)

    def _admit(self, budget: StepBudget, reserved: int, short_only: bool = False) -> list[Row]:
        """Admit waiting requests within `budget`; `short_only`: only those with at most one chunk to compute."""
        cfg = self.config
        if (not self.waiting or budget.exhausted or len(self.running) >= cfg.max_running_requests
                or self.kv.req_table.num_free == 0):
            return []  # NOTE: before ordering the queue, which matches up to MAX_SCORED prompts in the tree
        order = order_waiting(self.waiting, cfg.schedule_policy, self.step_count, cfg.aging_tokens_per_step,
                              self.kv.match_len)
        rows: list[Row] = []
        ps = self.kv.page_size
        prefilling = {self._prefill_key(r, r.kv.kv_len // ps * ps, r.kv.node) for r in self.running if r.todo > 1}
        for req in order:
            if budget.exhausted or len(self.running) >= cfg.max_running_requests or self.kv.req_table.num_free == 0:
                break
            if short_only and budget.time_left <= 0:
                break
            if req.decode.pending:
                continue  # retracted with a sample still on the device: take it back first
            if req.grammar is not None and not req.grammar.ready:
                continue  # its grammar is still compiling; it keeps its place and age meanwhile
            cached, node = self.kv.match_len(req)
            key = None if self.kv.tree.disable else self._prefill_key(req, cached, node)  # no tree: waiting gains nothing
            if key is not None and key in prefilling:
                continue  # another request is computing the same tokens right now
            todo = req.seq_len - cached
            if short_only and todo > cfg.chunked_prefill_size:
                continue  # a long prompt: it waits for the pass after the running prefills
            ext = budget.grant(cached, min(todo, cfg.chunked_prefill_size), samples=True, floor=not short_only)
            if ext <= 0:
                if short_only:
                    continue  # NOTE: a shorter one may still fit
                break
            need = -(-ext // self.kv.page_size) * self.kv.page_size
            future = int(max(0, req.params.max_new_tokens - len(req.output_ids)) * DECODE_RESERVE_RATIO)
            if self.running and need + reserved + future > self.kv.available_slots():
                break
            self.kv.admit(req)
            if not self.kv.grow(req, ext):
                self.kv.release(req)
                break
            if req.cached_tokens is None:
                req.cached_tokens = min(req.kv.kv_len, len(req.prompt_ids))
            self.waiting.remove(req)
            req.state = State.RUNNING
            self.running.append(req)
            rows.append(Row(req, ext))
            budget.take(cached, ext, samples=ext == todo, floor=not short_only)
            reserved += future
            prefilling.add(key)
        return rows

    @staticmethod
    def _prefill_key(req: Request, start: int, node: object) -> tuple | None:
        """What identifies the tokens a request would compute next from `start` on, after the
        cached prefix that ends at tree `node`.

        NOTE: the node stands for the whole prefix (the tree node ending at `start` on a path is
        unique, and a split keeps the tail's identity), so requests that continue different
        prefixes with the same tokens at the same position (fork branches of different programs:
        "... Way 1:") are not taken for duplicates and admitted one per step."""
        n = min(IN_BATCH_KEY, min(req.seq_len, (req.logprob_start() or req.seq_len) + len(req.prompt_logprobs)) - 1 - start)
        if n <= 0:
            return None
        return req.namespace, id(node), start, tuple(req.fill_slice(start, start + n))

    # ---- leaving the running set ---------------------------------------------------------------
    @staticmethod
    def _victim(candidates: list[Request]) -> Request:
        """Least progress first, newest first among equals."""
        return min(candidates, key=lambda r: (len(r.output_ids), -r.arrival))

    def _retract(self, req: Request) -> None:
        """Take a running request back to the waiting queue; its computed tokens stay cached."""
        self.kv.release(req)
        self.running.remove(req)
        req.state = State.WAITING
        self.retractions += 1
        self.waiting.append(req)  # enqueue_step kept: it keeps its age
        logger.debug("retracted %s with %d output tokens", req.rid, len(req.output_ids))

    def _finish(self, req: Request) -> None:
        if req.state is State.RUNNING:
            self.kv.release(req)
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.state = State.FINISHED
        self.results.finish(req)

    def _reap_aborted(self) -> None:
        for req in [r for r in self.waiting + self.running if r.abort_reason is not None]:
            req.finish_reason = req.abort_reason
            self._finish(req)

    def check_integrity(self) -> None:
        self.kv.check(self.running)

    # ---- commands from the engine's front (all on the loop thread) --------------------------------
    def abort_all(self) -> None:
        """Finish every waiting and running request with reason "abort", freeing their slots."""
        for req in self.waiting + self.running:
            req.abort_reason = req.abort_reason or "abort"
        self._reap_aborted()

    def recover_from_failed_step(self) -> None:
        """A step raised: its samples are unusable; abort everything in flight, keep the tree."""
        self.inflight = None
        for req in self.waiting + self.running:
            req.abort_reason = req.abort_reason or "abort"
            req.decode.pending = 0
        self._reap_aborted()

    def flush_cache(self) -> bool:
        """Empty the radix tree; refused (False) while requests are waiting or running."""
        if self.running or self.waiting:
            return False
        self.kv.tree.reset()
        return True

    def stats(self) -> dict:
        """Counters and gauges of the scheduler and its KV cache (see EngineStats.snapshot)."""
        tree, alloc = self.kv.tree, self.kv.allocator
        return dict(running=len(self.running), waiting=len(self.waiting), retractions=self.retractions,
                    evicted_tokens=tree.evicted_tokens, generated_tokens=self.results.generated_tokens,
                    kv_capacity=alloc.capacity, kv_free=alloc.num_free_slots, tree_tokens=tree.total_size,
                    finished=dict(self.results.finished_by_reason), query_tokens=tree.query_tokens,
                    hit_tokens=tree.hit_tokens, spec_draft_tokens=self.results.spec_drafted,
                    spec_accepted_tokens=self.results.spec_accepted, spec_verify_rows=self.results.spec_verifies)
