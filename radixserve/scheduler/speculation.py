"""Speculative decoding in the scheduler: give decoding requests a draft before a step, and settle
their KV after the step verified it.

A drafted request's row feeds its last token and the draft (1 + k tokens, an extend with a causal
mask inside the row); the ResultProcessor keeps the agreed tokens (speculative/verify.py). After
that, K/V is valid up to the last kept input, so kv_len falls back to seq_len - 1 and whole pages
past the next token go back to the allocator at once. Drafts only use slots that are free: they
never evict cached prefixes, so the radix hit rate does not pay for speculation.

Which requests draft: those without penalties, logit bias, logprobs, prompt logprobs or a grammar,
past min_new_tokens, with at least two tokens left to generate (the others decode one token per
step, unchanged). Sampled requests draft too: verification draws each position as plain decoding
would (results.py), so their output is that of speculation off with the same seed."""
from __future__ import annotations

from radixserve.config import SpeculativeConfig
from radixserve.scheduler.batch_builder import Row
from radixserve.scheduler.kv_manager import KVManager
from radixserve.scheduler.request import Request
from radixserve.speculative.proposers import Proposer
from radixserve.speculative.verify import SpecState


def can_draft(req: Request) -> bool:
    p = req.params
    return (req.grammar is None and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0 and p.logprobs is None and not p.logit_bias
            and p.prompt_logprobs_start is None and len(req.output_ids) >= p.min_new_tokens
            and req.decode.pending == 0 and p.max_new_tokens - len(req.output_ids) >= 2)


class Speculator:
    def __init__(self, config: SpeculativeConfig, kv: KVManager) -> None:
        self.config = config
        self.kv = kv
        self.proposer = Proposer(config, kv.tree)

    def may_draft(self, running: int) -> bool:
        """Whether a step with `running` requests may draft (else the scheduler keeps its overlap)."""
        return running <= self.config.max_batch

    def draft(self, rows: list[Row]) -> list[Row]:
        """`rows` with each decoding row that gets a draft widened to 1 + len(draft) tokens."""
        decoding = [i for i, (req, ext) in enumerate(rows) if ext == 1 and req.todo == 1]
        if not decoding or len(decoding) > self.config.max_batch:
            return rows
        out = list(rows)
        for i in decoding:
            req = rows[i].req
            if not can_draft(req):
                continue
            st = req.decode.spec
            if st is None:
                st = req.decode.spec = SpecState(self.config.num_speculative_tokens)
            if st.pause > 0:
                st.pause -= 1
                continue
            k = min(st.length, req.params.max_new_tokens - len(req.output_ids) - 1)
            draft = self.proposer.propose(req.fill_slice(0, req.seq_len), k, req.namespace)
            if not draft:
                continue
            pages = self.kv.pages_for(req, 1 + len(draft))
            if pages * self.kv.page_size > self.kv.allocator.num_free_slots or not self.kv.grow(req, 1 + len(draft)):
                continue  # NOTE: only free slots: a draft never evicts cached prefixes
            st.draft = tuple(draft)
            out[i] = Row(req, 1 + len(draft))
        return out

    def settle(self, req: Request) -> None:
        """After the verify step: K/V is valid up to the last kept input; free the pages past the next token."""
        st = req.decode.spec
        st.settle(self.config.num_speculative_tokens)
        kv = req.kv
        if kv.row is None:
            return
        kv.kv_len = min(kv.kv_len, req.seq_len - 1)
        ps = self.kv.page_size
        keep = max(kv.tree_len, -(-(kv.kv_len + 1) // ps) * ps)
        self.kv.free_tail(req, keep)
