"""vLLM-shaped results of `LLM.generate` / `LLM.chat`: one LLMOutput per prompt (vLLM's
RequestOutput) holding its n CompletionOutputs, built from the Engine's own RequestOutputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from radixserve.outputs import RequestOutput, TokenLogprob
from radixserve.sampling_params import SamplingParams


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability at a position (vLLM's Logprob)."""

    logprob: float
    rank: int | None  # 1 = the most likely token; None when the sampled token is outside the top-k asked for
    decoded_token: str | None


@dataclass(frozen=True)
class CompletionOutput:
    """One of the n samples of a prompt (vLLM's CompletionOutput)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None  # sum of the sampled tokens' logprobs; None unless logprobs were asked for
    logprobs: list[dict[int, Logprob]] | None  # per position: sampled token and the top-k alternatives
    finish_reason: str | None  # "stop" | "length" | "abort"
    stop_reason: str | int | None  # the stop string or stop token id that ended it; None for EOS or length

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class LLMOutput:
    """Everything generated for one prompt (vLLM's RequestOutput)."""

    request_id: str
    prompt: str | None  # the prompt's text (None when it was given as token ids)
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int  # prompt tokens served from the radix tree (the first sample's)
    prompt_logprobs: list[dict[int, Logprob]] | None = None  # with SamplingParams.prompt_logprobs_start


Decode = Callable[[int], str]


def to_llm_output(request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                  samples: Sequence[RequestOutput], decode: Decode) -> LLMOutput:
    """One prompt's LLMOutput from the Engine's outputs of its n samples (in index order)."""
    outputs = [_completion(s, params, decode) for s in samples]
    first = samples[0]
    plp = None if first.prompt_logprobs is None else [_position(p, decode) for p in first.prompt_logprobs]
    return LLMOutput(request_id, prompt, list(prompt_ids), outputs,
                     all(s.finish_reason is not None for s in samples), first.cached_tokens, plp)


def _completion(s: RequestOutput, params: SamplingParams, decode: Decode) -> CompletionOutput:
    logprobs = None if s.logprobs is None else [_position(p, decode) for p in s.logprobs]
    cumulative = None if s.logprobs is None else sum(p.logprob for p in s.logprobs)
    return CompletionOutput(s.index, s.text, list(s.token_ids), cumulative, logprobs, s.finish_reason,
                            _stop_reason(s.matched_stop, params))


def _stop_reason(matched: str | int | None, params: SamplingParams) -> str | int | None:
    # NOTE: the engine reports the EOS token that ended a request too; vLLM's stop_reason is None then.
    if isinstance(matched, str) or (matched is not None and matched in (params.stop_token_ids or [])):
        return matched
    return None


def _position(p: TokenLogprob, decode: Decode) -> dict[int, Logprob]:
    """The sampled token first, then the alternatives best first (a dict keeps that order)."""
    ranks = {tok: i + 1 for i, (tok, _) in enumerate(p.top)}
    out = {p.token_id: Logprob(p.logprob, ranks.get(p.token_id), decode(p.token_id))}
    for tok, lp in p.top:
        if tok not in out:
            out[tok] = Logprob(lp, ranks[tok], decode(tok))
    return out
