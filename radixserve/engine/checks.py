"""The checks every request passes before it is queued, shared by the in-process Engine and the
server's EngineClient (which refuses bad input before it reaches the engine process)."""
from __future__ import annotations

from typing import Sequence

from radixserve.grammar.spec import grammar_spec
from radixserve.sampling_params import SamplingParams


def check_request(input_ids: Sequence[int], params: SamplingParams, *, vocab_size: int, max_context_len: int,
                  kv_capacity: int, page_size: int, grammar) -> None:
    """Raise ValueError, saying what is wrong, for a request the engine cannot serve; a bad
    structured-output constraint raises GrammarError (a ValueError naming its SamplingParams
    field). `grammar`: the GrammarBackend that parses constraints (compiling comes later)."""
    if not isinstance(params, SamplingParams):
        raise ValueError("sampling_params must be a radixserve.SamplingParams")
    if len(input_ids) == 0:
        raise ValueError("the prompt is empty; give at least one token")
    bad = [t for t in input_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]!r} is outside the vocabulary [0, {vocab_size})")
    bad = sorted(t for t in params.logit_bias or {} if t >= vocab_size)
    if bad:
        raise ValueError(f"logit_bias has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    if len(input_ids) >= max_context_len:
        raise ValueError(f"the prompt has {len(input_ids)} tokens; the model's context is "
                         f"{max_context_len} tokens, so at most {max_context_len - 1} fit")
    need = len(input_ids) + 1 + page_size
    if need > kv_capacity:
        raise ValueError(f"the prompt needs {need} KV slots but the pool holds {kv_capacity}; raise max_total_tokens")
    check_constraint(params, grammar)


def check_constraint(params: SamplingParams, grammar) -> None:
    """Raise GrammarError if the request's constraint is invalid or not enforceable. Cheap: it
    parses the grammar; compiling it against the vocabulary comes later, in a thread."""
    spec = grammar_spec(params)
    if spec is not None:
        grammar.validate(spec)
