"""Request: one sequence's state as it moves through the scheduler."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from radixserve.outputs import TokenLogprob
from radixserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from radixserve.grammar.matcher import RequestGrammar


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """A sequence: prompt tokens, tokens generated so far, and where its KV lives.

    NOTE: token i of `fill_ids` has its K/V at `slots[i]` for i < kv_len. The first `tree_len`
    slots belong to the radix tree (locked through `node`); slots[tree_len:] are private to this
    request. len(slots) is a multiple of the page size (whole pages are allocated).
    """

    rid: str  # the request's id, shared by its n samples: a sample is (rid, index), see radixserve/sample_id.py
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    namespace: str | None = None
    index: int = 0  # which of the n samples of its prompt
    arrival: int = 0  # submission order, for fcfs and ties
    eos_ids: tuple[int, ...] = ()
    grammar: RequestGrammar | None = None  # structured output: admitted once ready; finished when it terminates
    on_event: Callable[["Request", list[int], bool], None] | None = None  # (req, new token ids, finished)

    state: State = State.WAITING
    output_ids: list[int] = field(default_factory=list)
    pending: int = 0  # tokens sampled on the device whose values the host has not appended yet
    row: int | None = None  # row in the request table while running
    slots: list[int] = field(default_factory=list)
    kv_len: int = 0
    tree_len: int = 0
    node: Any = None  # locked tree node while running
    cached_tokens: int | None = None  # prompt tokens served from the tree at first admission
    enqueue_step: int = 0
    admitted_once: bool = False
    aborted: bool = False
    abort_reason: str = "abort"  # the finish reason an abort gives
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # output text so far, with any stop string cut off
    stop_checker: Any = None  # token-level stops (sampling.stop.StopChecker), made at the first token
    text_state: Any = None  # detokenizer and stop strings, when the engine makes text in this process
    logit_bias: Any = None  # [V] float32 device tensor of params.logit_bias, built at the first sample

    @property
    def fill_ids(self) -> list[int]:
        """All tokens known so far: the prompt then the output."""
        return self.prompt_ids + self.output_ids

    def fill_slice(self, start: int, end: int) -> list[int]:
        """fill_ids[start:end] without building the whole list (decode touches one token)."""
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
        return self.seq_len + self.pending - self.kv_len

    @property
    def prefill_done(self) -> bool:
        return self.kv_len >= len(self.prompt_ids)

    @property
    def private_slots(self) -> int:
        return len(self.slots) - self.tree_len

    @property
    def max_len(self) -> int:
        """The most tokens this request can ever hold in the KV cache."""
        return len(self.prompt_ids) + self.params.max_new_tokens

    def logprob_start(self) -> int | None:
        """First prompt position whose logprob is wanted (>= 1), or None."""
        start = self.params.prompt_logprobs_start
        if start is None:
            return None
        return max(1, start)
