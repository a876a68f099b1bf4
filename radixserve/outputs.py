"""Results handed back to callers of the Engine."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """Log-probability of one token, with the top alternatives at that position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first


@dataclass
class RequestOutput:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the radix tree instead of computed
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # positions >= prompt_logprobs_start
    index: int = 0  # which of n samples
    matched_stop: str | int | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class StreamDelta:
    """One incremental piece of a streamed request."""

    request_id: str
    index: int
    text: str  # new text since the last delta (never half a UTF-8 character)
    token_ids: list[int]  # new tokens since the last delta
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prompt_logprobs: list[TokenLogprob] | None = None  # on a sample's first delta, when prompt logprobs were asked for
    matched_stop: str | int | None = None  # on the finishing delta: the stop string or token that ended it
