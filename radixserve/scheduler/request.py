"""Request: one sequence as it moves through the scheduler, split by concern.

- `Request` itself: what was asked (identity, prompt, sampling parameters, grammar), where it is
  in its life (waiting / running / finished, abort), and what it produced (the outputs);
- `KVPlacement` (`req.kv`): where its K/V lives (request-table row, slots, the locked tree node),
  written by the KVManager (the scheduler only advances `kv_len` after each forward);
- `DecodeState` (`req.decode`): what decoding keeps between steps (a sample still on the device,
  the token-level stop checker, the text state, the logit-bias row), written by the
  ResultProcessor (the scheduler only clears `pending` after a failed step).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

from radixserve.outputs import TokenLogprob
from radixserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from radixserve.cache.radix_tree import TreeNode
    from radixserve.grammar.matcher import RequestGrammar
    from radixserve.sampling.stop import StopChecker, TextUpdate
    from radixserve.speculative.verify import SpecState


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class KVPlacement:
    """Where a request's K/V lives while it is running (all empty while it waits).

    NOTE: token i of the request (prompt then output) has its K/V at `slots[i]` for i < kv_len. The
    first `tree_len` slots belong to the radix tree (locked through `node`); slots[tree_len:] are
    private to this request. len(slots) is a multiple of the page size (whole pages are allocated).
    """

    row: int | None = None  # row in the request table while running
    slots: list[int] = field(default_factory=list)
    kv_len: int = 0  # tokens whose K/V is computed
    tree_len: int = 0  # leading slots owned by the tree
    node: TreeNode | None = None  # locked tree node ending the first tree_len tokens, while running

    @property
    def private_slots(self) -> int:
        return len(self.slots) - self.tree_len

    def check(self, page_size: int) -> None:
        """Assert the invariants of the class docstring."""
        assert 0 <= self.tree_len <= self.kv_len <= len(self.slots), (self.tree_len, self.kv_len, len(self.slots))
        assert len(self.slots) % page_size == 0, (len(self.slots), page_size)
        assert (self.row is None) == (self.node is None), (self.row, self.node)


class TextState(Protocol):
    """The text side of one request (engine/text.py's RequestText): detokenisation and stop strings."""

    def feed(self, tokens: Sequence[int], reason: str | None) -> TextUpdate: ...

    def close(self) -> str:
        """Text still owed when the request ends without a token-level reason (an abort)."""
        ...


@dataclass(eq=False)
class DecodeState:
    """What decoding keeps between steps; made empty at submission, filled at the first sample."""

    pending: int = 0  # tokens sampled on the device whose values the host has not appended yet
    stops: StopChecker | None = None  # token-level stops, made at the first token
    text: TextState | None = None  # detokenizer and stop strings, when the engine makes text in this process
    logit_bias: torch.Tensor | None = None  # [V] float32 on the device: params.logit_bias, built at the first sample
    spec: SpecState | None = None  # speculative decoding: the draft in flight and the next draft's length

    @property
    def draft(self) -> tuple[int, ...]:
        """Draft tokens fed after the last token in this step (verified by the step's logits)."""
        return self.spec.draft if self.spec is not None else ()


@dataclass(eq=False)
class Request:
    """A sequence: what was asked, where it is in its life, what it produced; its KV placement
    (`kv`) and decode state (`decode`) are composed in."""

    # ---- identity: what was asked
    rid: str  # the request's id, shared by its n samples: a sample is (rid, index), see radixserve/sample_id.py
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    namespace: str | None = None
    index: int = 0  # which of the n samples of its prompt
    arrival: int = 0  # submission order, for fcfs and ties
    grammar: RequestGrammar | None = None  # structured output: admitted once ready; finished when it terminates
    text_when_done: bool = False  # its caller reads the text only once it finished: the text may be made then

    # ---- life in the scheduler
    state: State = State.WAITING
    enqueue_step: int = 0  # scheduler step at which it joined the queue (aging)
    abort_reason: str | None = None  # set by an abort: the finish reason it gets at the next step

    # ---- outputs
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # output text so far, with any stop string cut off
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    cached_tokens: int | None = None  # prompt tokens served from the tree at first admission

    kv: KVPlacement = field(default_factory=KVPlacement)
    decode: DecodeState = field(default_factory=DecodeState)

    def fill_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole list (decode touches one)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:end - p]
        if end <= p:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[:end - p]

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def todo(self) -> int:
        """Tokens to feed the model before the next sample: 1 when decoding (that one may still
        be a pending sample on the device), more while prefilling."""
        return self.seq_len + self.decode.pending - self.kv.kv_len

    @property
    def prefill_done(self) -> bool:
        return self.kv.kv_len >= len(self.prompt_ids)

    def logprob_start(self) -> int | None:
        """First prompt position whose logprob is wanted (>= 1), or None."""
        start = self.params.prompt_logprobs_start
        if start is None:
            return None
        return max(1, start)
