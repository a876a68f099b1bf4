"""One validation: a request becomes a frozen PreparedRequest here, and only here.

`prepare` checks the prompt and the sampling parameters against the engine's limits, applies the
one context rule (below), and builds the structured-output grammar spec once (parsed, so an
invalid schema is refused now; compiling it against the vocabulary comes later, in the engine).
Everything after it (Engine.submit, the engine process of the split server, the scheduler)
trusts the prepared request and checks nothing again.

Who prepares: the in-process Engine for its Python callers; the split server's EngineClient in the
HTTP front end (the engine process never sees an unprepared request); the HTTP routes through
`engine.prepare(..., over_context="refuse")`, with the FieldErrors mapped to their own parameter
names.

The context rule: a request holds prompt + max_new_tokens tokens, which must fit the model's
context and the KV pool (less one page of slack). Over the context, "refuse" raises
ContextLengthError (the OpenAI behaviour of the HTTP server), "clamp" lowers max_new_tokens (the
Python API's behaviour); over the pool, max_new_tokens is always lowered.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

from radixserve.engine.errors import ContextLengthError, VocabularyError
from radixserve.errors import PROMPT_FIELD, FieldError
from radixserve.grammar.spec import GrammarSpec, grammar_spec
from radixserve.sampling_params import SamplingParams

OverContext = Literal["clamp", "refuse"]


@dataclass(frozen=True)
class RequestLimits:
    """What an engine can hold, as far as one request is concerned."""

    vocab_size: int
    max_context_len: int
    kv_capacity: int  # KV slots in the pool
    page_size: int

    @property
    def max_sequence_len(self) -> int:
        """Prompt + output tokens one request may hold (the pool keeps a page of slack)."""
        return min(self.max_context_len, self.kv_capacity - self.page_size)


@dataclass(frozen=True)
class PreparedRequest:
    """A request the engine trusts: checked prompt token ids, sampling parameters with the context
    rule applied, and its grammar spec (None without structured output).

    NOTE: build it with `prepare` only; `params` is never changed after (the engine and the
    scheduler read it, the engine process receives it pickled as is)."""

    input_ids: tuple[int, ...]
    params: SamplingParams
    grammar: GrammarSpec | None

    @property
    def n(self) -> int:
        return self.params.n


def prepare(input_ids: Sequence[int], params: SamplingParams, limits: RequestLimits, grammar,
            over_context: OverContext = "clamp") -> PreparedRequest:
    """Check a request and apply the context rule; FieldError (naming the field) for one the
    engine cannot serve. `grammar`: the GrammarBackend that parses constraints."""
    if not isinstance(params, SamplingParams):
        raise FieldError("sampling_params", "sampling_params must be a radixserve.SamplingParams")
    vocab = limits.vocab_size
    bad = sorted(t for t in params.logit_bias or {} if t >= vocab)
    if bad:
        raise VocabularyError("logit_bias", bad[0], vocab,
                              f"logit_bias has token id {bad[0]} outside the vocabulary [0, {vocab})")
    if len(input_ids) == 0:
        raise FieldError(PROMPT_FIELD, "the prompt is empty; give at least one token")
    bad = [t for t in input_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
    if bad:
        raise VocabularyError(PROMPT_FIELD, bad[0], vocab, f"token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
    n, ctx = len(input_ids), limits.max_context_len
    if n >= ctx:
        raise FieldError(PROMPT_FIELD, f"the prompt has {n} tokens; the model's context is {ctx} tokens, so at "
                                       f"most {ctx - 1} fit")
    need = n + 1 + limits.page_size
    if need > limits.kv_capacity:
        raise FieldError(PROMPT_FIELD, f"the prompt needs {need} KV slots but the pool holds {limits.kv_capacity}; "
                                       "raise max_total_tokens")
    spec = grammar_spec(params)
    if spec is not None:
        grammar.validate(spec)
    if over_context == "refuse" and n + params.max_new_tokens > ctx:
        raise ContextLengthError(n, params.max_new_tokens, ctx)
    return PreparedRequest(tuple(input_ids), _fit(params, limits.max_sequence_len - n), spec)


def _fit(params: SamplingParams, cap: int) -> SamplingParams:
    """`params` with max_new_tokens at most `cap` (and min_new_tokens with it)."""
    if params.max_new_tokens <= cap:
        return params
    cap = max(cap, 0)
    return dataclasses.replace(params, max_new_tokens=cap, min_new_tokens=min(params.min_new_tokens, cap))


def per_prompt(sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int) -> list[SamplingParams]:
    """One SamplingParams per prompt: the default, one for all, or one each."""
    if sampling_params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    sp = list(sampling_params)
    if len(sp) != count:
        raise ValueError(f"got {len(sp)} sampling_params for {count} prompts")
    return sp


def prompts_to_ids(tokenizer, prompts: str | Sequence[str] | None,
                   input_ids: Sequence[int] | Sequence[Sequence[int]] | None) -> list[list[int]]:
    """The prompts of a generate() call (text, or token ids: one list or a list of lists) as
    lists of token ids."""
    if (prompts is None) == (input_ids is None):
        raise ValueError("give exactly one of prompts (text) or input_ids (token ids)")
    if prompts is not None:
        items = [prompts] if isinstance(prompts, str) else list(prompts)
        if not items or not all(isinstance(p, str) for p in items):
            raise ValueError("prompts must be a string or a non-empty list of strings")
        return [list(tokenizer.encode(p)) for p in items]
    if isinstance(input_ids, Sequence) and input_ids and all(isinstance(t, int) for t in input_ids):
        return [list(input_ids)]
    if not isinstance(input_ids, Sequence) or not input_ids or not all(isinstance(x, Sequence) for x in input_ids):
        raise ValueError("input_ids must be a list of token ids or a non-empty list of such lists")
    return [list(x) for x in input_ids]
