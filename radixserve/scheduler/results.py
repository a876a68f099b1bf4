"""After each model step: sample, append tokens, check stops, emit events.

Stops that need no text (EOS, stop token ids, max_new_tokens, a finished grammar) are decided here.
Text (detokenisation, stop strings) is made by a per-request object from `make_text`, given by
the engine; without one, events carry token ids only and whoever reads them makes the text (the
split server's front end does, off this process)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol

import torch

from radixserve.core.transfer import tensor_on
from radixserve.outputs import TokenLogprob
from radixserve.sampling.bitmask import apply_token_bitmask
from radixserve.sampling.logprobs import prompt_logprobs, to_token_logprobs
from radixserve.sampling.sampler import SampleResult, greedy_argmax, sample
from radixserve.sampling.tensors import SamplingRow, build_sampling_tensors, greedy_blocked_ids, logit_bias_row
from radixserve.sampling.stop import StopChecker
from radixserve.scheduler.batch_builder import LogitsPlan, Row
from radixserve.scheduler.request import Request, State, TextState
from radixserve.speculative.verify import accept_greedy

if TYPE_CHECKING:
    from radixserve.grammar.backend import GrammarBackend

logger = logging.getLogger(__name__)


class Event(NamedTuple):
    """What a request produced in one step (sent to whoever waits on it)."""

    req: Request
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finished: bool


class Sampled(NamedTuple):
    """One step's samples, still on the device (see ResultProcessor.sample / finalize)."""

    spans: list  # (request, prompt ids, k, (logprobs, top ids, top logprobs)) of prompt-logprob spans
    done: list[Request]  # max_new_tokens == 0: finished at the end of their prefill
    reqs: list[Request]  # requests that sampled a token, in the order of result's rows
    result: SampleResult | None  # on the host (or being copied there; see result_ready)
    result_ready: object = None  # CUDA event recorded after the copy to the host, or None
    device_tokens: torch.Tensor | None = None  # [len(reqs)] the samples where the model runs
    verify: tuple | list = ()  # (request, first row in verify_tokens) of rows that verified a draft
    verify_tokens: torch.Tensor | None = None  # the model's greedy token at every verified position

    def token_index(self) -> dict[int, int]:
        """id(request) -> its row in result.token_ids."""
        return {id(r): i for i, r in enumerate(self.reqs)}


def _to_host_async(result: SampleResult) -> tuple[SampleResult, object]:
    """Start copying a SampleResult into pinned host memory; returns it and an event to wait on."""
    if result.token_ids.device.type != "cuda":
        return result, None

    def copy(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host
    host = SampleResult(*(copy(t) for t in result))
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


class TextMaker(Protocol):
    """Makes a request's text side (engine/text.py's RequestText)."""

    def __call__(self, req: Request) -> TextState: ...


class ResultProcessor:
    def __init__(self, vocab_size: int, eos_ids: set[int], emit: Callable[[Event], None],
                 grammar: GrammarBackend | None = None, jump_forward: bool = True,
                 make_text: TextMaker | None = None) -> None:
        self.make_text = make_text
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self._eos_tuple = tuple(sorted(eos_ids))
        self.emit = emit
        self.grammar = grammar  # grammar requests need one (the engine makes it)
        self.jump_forward = jump_forward
        self.generated_tokens = 0
        self.spec_drafted = 0  # draft tokens verified (speculative decoding)
        self.spec_accepted = 0  # of them, kept
        self.spec_verifies = 0  # rows that verified a draft (each appends its kept tokens + 1)
        self.finished_by_reason: dict[str, int] = {}

    @staticmethod
    def needs_host_tokens(rows: list[Row], plan: LogitsPlan) -> bool:
        """Whether sampling this step needs the previous step's tokens on the host first: a grammar's
        mask depends on every token before it."""
        return any(rows[i].req.grammar is not None for i in plan.sample_rows)

    def sample(self, rows: list[Row], plan: LogitsPlan, logits: torch.Tensor) -> Sampled:
        """Enqueue sampling (and prompt logprobs) of one step on the device; no host sync.

        logits [L, V] float32 laid out as `plan` says. The sampled requests' `pending` count goes
        up by one until `finalize` appends the token."""
        spans = []
        for row, pos, count, target in plan.prompt_spans:
            req = rows[row].req
            ids = tensor_on(req.prompt_ids[target:target + count], torch.int64, logits.device)
            k = req.params.prompt_top_logprobs
            spans.append((req, ids, k, prompt_logprobs(logits[pos:pos + count], ids, k)))
        # NOTE: a finalize between this step's forward and now (grammar steps) may have finished a
        # request or jumped it forward; such a row's logits predict a position already decided.
        sampling = [(rows[i].req, j) for i, j in zip(plan.sample_rows, plan.sample_logits)
                    if rows[i].req.state is not State.FINISHED
                    and rows[i].req.kv.kv_len == rows[i].req.seq_len + rows[i].req.decode.pending]
        done = [req for req, _ in sampling if req.params.max_new_tokens == 0]
        sampling = [(req, j) for req, j in sampling if req.params.max_new_tokens > 0]
        reqs = [req for req, _ in sampling]
        verify, verify_tokens = self._verify_targets(rows, plan, logits)
        if not reqs:
            return Sampled(spans, done, reqs, None, verify=verify, verify_tokens=verify_tokens)
        # NOTE: the copy to the host is enqueued now, before the next step's kernels, so finalize
        # waits for this step only: that is what lets the next step overlap the host work.
        idx = tensor_on([j for _, j in sampling], torch.int64, logits.device)
        for r in reqs:
            if r.params.logit_bias and r.decode.logit_bias is None:  # once per request, not per step
                r.decode.logit_bias = logit_bias_row(r.params.logit_bias, self.vocab_size, logits.device)
        sample_rows = [SamplingRow(r.params, r.seed, len(r.output_ids) + r.decode.pending, r.prompt_ids,
                                   r.output_ids, self._eos_tuple, None, r.decode.logit_bias) for r in reqs]
        bitmask = self._bitmask(reqs, logits.device)
        blocked = [greedy_blocked_ids(r, self.vocab_size) for r in sample_rows]
        if all(b is not None for b in blocked):  # the common case (greedy, ignore_eos too) needs no per-step tensors
            x = logits[idx]  # [B, V] a copy
            if bitmask is not None:
                apply_token_bitmask(x, bitmask)
            result = SampleResult(greedy_argmax(x, blocked), None, None, None)
        else:
            t = build_sampling_tensors(sample_rows, self.vocab_size, logits.device, token_bitmask=bitmask)
            result = sample(logits[idx], t)
        for r in reqs:
            r.decode.pending += 1
        host, ready = _to_host_async(result)
        return Sampled(spans, done, reqs, host, ready, result.token_ids, verify, verify_tokens)

    def _verify_targets(self, rows: list[Row], plan: LogitsPlan, logits: torch.Tensor) -> tuple[list, torch.Tensor | None]:
        """The token plain decoding would sample at every position of the rows verifying a draft.

        NOTE: position j of a draft is sampled as decode step len(output) + j would be: the same
        processed distribution and the same counter-based noise of (seed, step, token). So a draft
        token is kept exactly when plain decoding would have drawn it (probability p(token), what
        rejection sampling of a one-token draft accepts too), and a seeded request's output is
        token for token that of speculation off. Drafting requests have no penalties, logit bias
        or min_new_tokens still to reach (scheduler/speculation.py), so nothing else depends on j."""
        if not plan.verify_rows:
            return [], None
        verify, idx, srows = [], [], []
        for i, pos, count in plan.verify_rows:
            r = rows[i].req
            verify.append((r, len(idx)))
            idx.extend(range(pos, pos + count))
            n = len(r.output_ids)
            srows += [SamplingRow(r.params, r.seed, n + j, r.prompt_ids, r.output_ids, self._eos_tuple, None, None)
                      for j in range(count)]
        x = logits[tensor_on(idx, torch.int64, logits.device)]  # a copy
        blocked = [greedy_blocked_ids(row, self.vocab_size) for row in srows]
        if all(b is not None for b in blocked):
            return verify, greedy_argmax(x, blocked).cpu()
        return verify, sample(x, build_sampling_tensors(srows, self.vocab_size, logits.device)).token_ids.cpu()

    def _bitmask(self, reqs: list[Request], device: torch.device) -> torch.Tensor | None:
        grammars = [r.grammar for r in reqs]
        if all(g is None for g in grammars):
            return None
        from radixserve.grammar.bitmask import batch_bitmask

        for r in reqs:
            # NOTE: the mask is right only if the matcher has seen every output token (see RequestGrammar).
            assert r.grammar is None or (r.decode.pending == 0 and r.grammar.accepted == len(r.output_ids)), \
                (r.rid, r.decode.pending, r.grammar.accepted, len(r.output_ids))
        return batch_bitmask(grammars, self.grammar, device)

    def finalize(self, s: Sampled) -> list[Request]:
        """Bring one step's samples to the host: append tokens, detokenise, check stops. Returns
        the requests that finished. Requests that finished meanwhile drop their sample."""
        for req, ids, k, (lp, top_ids, top_lps) in s.spans:
            req.prompt_logprobs.extend(to_token_logprobs(ids, lp, top_ids, top_lps, k))
        finished: list[Request] = []
        for req in s.done:
            req.finish_reason = "length"
            finished.append(req)
        if s.verify:
            finished += self._accept_drafts(s)
        if s.result is None:
            return finished
        result, reqs = s.result, s.reqs
        if s.result_ready is not None:
            s.result_ready.synchronize()  # this step's samples only, not the step launched after it
        tokens = result.token_ids.tolist()
        lps = None
        if result.logprobs is not None:
            ks = [r.params.logprobs or 0 for r in reqs]
            lps = to_token_logprobs(result.token_ids, result.logprobs, result.top_ids, result.top_logprobs, ks)
        constrained: list[tuple[Request, int]] = []
        for i, (req, tok) in enumerate(zip(reqs, tokens)):
            req.decode.pending -= 1
            if req.state is State.FINISHED:
                continue  # computed one step ahead; the request had already stopped
            new_lp = [lps[i]] if lps is not None and req.params.logprobs is not None else []
            if self._append(req, tok, new_lp):
                finished.append(req)
            elif req.grammar is not None:
                constrained.append((req, tok))
        if constrained:
            finished += self._advance_grammars(constrained)
        return finished

    def _accept_drafts(self, s: Sampled) -> list[Request]:
        """Append each verifying request's kept tokens (its draft's agreed prefix and the model's next
        token), stopping where a stop condition hits. Returns the requests that finished."""
        targets = s.verify_tokens.tolist()
        finished = []
        for req, off in s.verify:
            draft = req.decode.draft
            kept = accept_greedy(draft, targets[off:off + len(draft) + 1])
            self.spec_drafted += len(draft)
            self.spec_accepted += len(kept) - 1
            self.spec_verifies += 1
            req.decode.spec.kept = len(kept) - 1
            if req.state is State.FINISHED:
                continue
            for tok in kept:
                if self._append(req, tok, []):
                    finished.append(req)
                    break
        return finished

    def _advance_grammars(self, rows: list[tuple[Request, int]]) -> list[Request]:
        """Feed each row's sampled token to its grammar (one batched call), then append what the
        grammar forces next (jump-forward). Returns the requests that finished."""
        from radixserve.grammar.matcher import accept_batch

        ok = accept_batch([req.grammar for req, _ in rows], [tok for _, tok in rows], self.grammar.batch_matcher())
        finished = []
        for (req, token), accepted in zip(rows, ok):
            if not accepted:  # the mask admitted it, so this is a bug; stop this request only
                logger.error("%s: token %d is outside its grammar (%s); aborting the request", req.rid, token,
                             req.grammar.spec.field)
                req.finish_reason = "abort"
                finished.append(req)
            elif self._jump_forward(req):
                finished.append(req)
        return finished

    def _jump_forward(self, req: Request) -> bool:
        """Append the text the request's grammar forces next, if long enough to pay (see
        JUMP_FORWARD_MIN_TOKENS). True when the request finished."""
        # NOTE: a request that wants logprobs gets them for every token, so it decodes every token.
        if not self.jump_forward or req.params.logprobs is not None:
            return False
        forced = req.grammar.jump_forward(self.grammar.encode_forced, req.params.max_new_tokens - len(req.output_ids))
        if forced:
            self.grammar.stats.jump_forwards += 1
            self.grammar.stats.jump_forward_tokens += len(forced)
        for tok in forced:
            if self._append(req, tok, []):
                return True
        return False

    def _append(self, req: Request, token: int, lps: list[TokenLogprob]) -> bool:
        """Append one output token and decide whether the request stops here (the owner of stop
        decisions in this process: token-level stops always, stop strings when it makes the text)."""
        d = req.decode
        if d.stops is None:
            p = req.params
            d.stops = StopChecker(p.stop_token_ids, self.eos_ids, p.ignore_eos, p.max_new_tokens, p.min_new_tokens)
            d.text = self.make_text(req) if self.make_text is not None else None
        req.output_ids.append(token)
        req.logprobs.extend(lps)
        self.generated_tokens += 1
        reason = d.stops.check_token(token, len(req.output_ids))
        req.matched_stop = d.stops.matched_stop
        piece = ""
        if d.text is not None:
            piece, _, matched = d.text.feed((token,), reason)
            if matched is not None:
                reason, req.matched_stop = "stop", matched
            req.text += piece
        req.finish_reason = reason
        self.emit(Event(req, piece, [token], lps, False))
        return reason is not None

    def finish(self, req: Request) -> None:
        reason = req.finish_reason or "abort"
        req.finish_reason = reason
        if req.decode.text is not None:
            req.text += req.decode.text.close()
        self.finished_by_reason[reason] = self.finished_by_reason.get(reason, 0) + 1
        self.emit(Event(req, "", [], [], True))
