"""A validated TGI body -> what the engine takes: prompt token ids and one SamplingParams, plus
what the response needs (details, prefill, full text). TGI's rules, where they differ from ours:

- greedy unless `do_sample` is true or a sampling parameter (temperature != 1, top_k > 0,
  top_p < 1) is given, as TGI decides; a sampled request without `seed` gets one drawn here, so
  `details.seed` reproduces it;
- `max_new_tokens` defaults to 100 (TGI's documented default), capped by the context;
- `truncate` keeps the last `truncate` prompt tokens;
- refused with a 400 naming the field: `best_of` > 1 (no ranking of sequences is offered here;
  ask /v1/completions with best_of), `watermark` true, `adapter_id` (no adapters are served).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from radixserve.engine.interface import EngineHandle
from radixserve.sampling_params import SamplingParams
from radixserve.server.errors import APIError
from radixserve.server.openai.params import ParamNames, encode, make_sampling
from radixserve.server.openai.structured import Constraint, sampling_fields
from radixserve.server.tgi.protocol import Grammar, Parameters, TGIRequest

DEFAULT_MAX_NEW_TOKENS = 100
P = "parameters."


@dataclass(frozen=True)
class TGIPlan:
    prompt: list[int]
    sp: SamplingParams
    names: ParamNames
    details: bool
    prefill: bool  # decoder_input_details: the prompt tokens (with logprobs) in details.prefill
    top_n: int  # top_n_tokens: alternatives per generated token in details.top_tokens
    prefix: str  # text put before generated_text ("" unless return_full_text)


def grammar_constraint(grammar: Grammar | None, param: str) -> Constraint | None:
    """TGI's grammar ({"type": "json" | "json_object" | "regex", "value": ...}) as our one constraint."""
    if grammar is None:
        return None
    if grammar.type == "regex":
        if not isinstance(grammar.value, str):
            raise APIError(400, "A regex grammar's value must be a string.", param=param)
        return Constraint("regex", grammar.value, param)
    return Constraint("json_schema", grammar.value, param)


def _refuse(p: Parameters) -> None:
    if p.best_of is not None and p.best_of != 1:
        raise APIError(400, f"best_of must be 1 on this server, got {p.best_of}: ranking several sequences is not "
                       "offered on the TGI API; use /v1/completions with best_of and n.", param=P + "best_of",
                       code="unsupported_parameter")
    if p.watermark:
        raise APIError(400, "watermark is not supported: this server does not watermark its outputs.",
                       param=P + "watermark", code="unsupported_parameter")
    if p.adapter_id is not None:
        raise APIError(400, "adapter_id is not supported: this server serves one model and no adapters.",
                       param=P + "adapter_id", code="unsupported_parameter")


def _prompt(engine: EngineHandle, req: TGIRequest, truncate: int | None) -> list[int]:
    if not req.inputs:
        raise APIError(400, "inputs must not be empty.", param="inputs")
    ids = encode(engine, req.inputs)
    if truncate is not None:
        if truncate < 1:
            raise APIError(400, f"truncate must be >= 1, got {truncate}.", param=P + "truncate")
        ids = ids[-truncate:]
    return ids


def plan(engine: EngineHandle, req: TGIRequest) -> TGIPlan:
    p = req.parameters or Parameters()
    _refuse(p)
    prompt = _prompt(engine, req, p.truncate)
    constraint = grammar_constraint(p.grammar, P + "grammar.value")
    names = ParamNames({"logprobs": P + "top_n_tokens", "prompt_top_logprobs": P + "decoder_input_details"},
                       prefix=P, prompt="inputs", constraint=constraint)
    sampled = p.do_sample or p.temperature not in (None, 1.0) or p.top_k not in (None, 0) or \
        p.top_p not in (None, 1.0) or p.typical_p not in (None, 1.0)
    max_new = p.max_new_tokens
    if max_new is None:
        max_new = max(1, min(DEFAULT_MAX_NEW_TOKENS, engine.max_context_len - len(prompt)))
    if max_new < 1:
        raise APIError(400, f"max_new_tokens must be >= 1, got {max_new}.", param=P + "max_new_tokens")
    fields: dict[str, Any] = {"max_new_tokens": max_new, "stop": p.stop, **sampling_fields(constraint)}
    if sampled:
        fields.update({"temperature": p.temperature if p.temperature is not None else 1.0,
                       "top_k": p.top_k or -1, "top_p": p.top_p if p.top_p is not None else 1.0,
                       "typical_p": p.typical_p if p.typical_p is not None else 1.0,
                       "seed": p.seed if p.seed is not None else random.randrange(2**31)})
    else:
        fields["temperature"] = 0.0
    for name in ("repetition_penalty", "frequency_penalty"):
        if getattr(p, name) is not None:
            fields[name] = getattr(p, name)
    top_n = p.top_n_tokens or 0
    fields["logprobs"] = top_n  # every generated token carries its logprob (TGI's token.logprob)
    prefill = p.details and p.decoder_input_details
    if prefill:
        fields["prompt_logprobs_start"] = 0
    sp = make_sampling(fields, names)
    prefix = req.inputs if p.return_full_text else ""
    return TGIPlan(prompt, sp, names, p.details, prefill, top_n, prefix)
