"""The token rules of a program state: what a gen appends, and one log-prob per (context, token).

Constant text: every appended string is tokenised on its own (Backend.encode), never merged with
its neighbours, so "a" + "b" holds the tokens of "a" then those of "b".
"""
from __future__ import annotations

from typing import Any

from radixserve.lang.backend.base import GenOutput
from radixserve.sampling_params import SamplingParams

CONTEXT_TOKENS = 8  # prompt tokens decoded before an output, so its leading spaces decode as in context


def gen_tokens(backend: Any, prompt: list[int], out: GenOutput, params: SamplingParams) -> tuple[list[int], int]:
    """The ids a gen appends to the state, and how many of them are the model's own (a prefix).

    The matched stop token (EOS or a stop_token_id: a special token, or one asked for) is dropped:
    the value does not contain it. Then the longest run of output tokens whose text is a prefix of
    the value is kept as is; text of the value past it (the tail of a token cut by a stop string,
    or half a UTF-8 character) is tokenised on its own."""
    ids = list(out.token_ids)
    if ids and out.finish_reason == "stop" and (ids[-1] in backend.special_ids or ids[-1] in params.stop_token_ids):
        ids.pop()
    ctx = prompt[-CONTEXT_TOKENS:]
    skip = params.skip_special_tokens
    ctx_text = backend.decode(ctx, skip)
    k, covered = len(ids), ""
    while k > 0:
        full = backend.decode(ctx + ids[:k], skip)
        covered = full[len(ctx_text):] if full.startswith(ctx_text) else None
        if covered is not None and out.text.startswith(covered):
            break
        k -= 1
    covered = covered if k > 0 else ""
    return ids[:k] + backend.encode(out.text[len(covered):]), k


def share_equal_prefixes(choice_ids: list[list[int]], logprobs: list[list[float]]) -> None:
    """NOTE: choices that begin with the same tokens have, by definition, the same log-prob for
    each of those tokens (same context, same token); their requests computed it separately, so
    the float values can differ in the last bits. Use the first choice's value for all of them,
    so that a comparison (greedy_token_selection compares exactly) never turns on that noise."""
    seen: dict[tuple[int, ...], float] = {}
    for ids, lps in zip(choice_ids, logprobs):
        for j in range(len(ids)):
            lps[j] = seen.setdefault(tuple(ids[:j + 1]), lps[j])
