"""Ollama's `options` and `format` -> one SamplingParams, and the names its errors carry.

Each option is decided once, here:
- honoured: num_predict (max_new_tokens; -1 and -2, "until the context is full", mean the rest of
  the context), temperature, top_k, top_p, min_p, typical_p, stop, seed, repeat_penalty (repetition_penalty),
  presence_penalty, frequency_penalty. Options not given keep the server's SamplingParams defaults
  (not llama.cpp's Modelfile defaults: the model card's own sampling is the engine's business).
- accepted and ignored (LOAD_OPTIONS): how llama.cpp loads and places the model (threads, GPU
  layers, mmap, batch size). They cannot change a correct answer. `num_ctx` is one of them: the
  context is the engine's, fixed at start; a prompt plus num_predict over it is a 400, never a
  silently truncated prompt. `num_keep` only matters when llama.cpp shifts the context, which
  never happens here.
- refused unless neutral (SAMPLERS): samplers this engine does not have (mirostat, tail-free)
  and the repeat-penalty window; a neutral value (the sampler off, or the penalty off)
  asks for nothing and passes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radixserve.sampling_params import SamplingParams
from radixserve.server.errors import APIError
from radixserve.server.openai import params
from radixserve.server.openai.params import ParamNames
from radixserve.server.openai.structured import JSON_OBJECT, Constraint
from radixserve.server.ollama.protocol import Options, GenerateCommon

# Ollama option -> SamplingParams field
HONOURED = {"num_predict": "max_new_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
            "min_p": "min_p", "typical_p": "typical_p", "stop": "stop", "seed": "seed", "repeat_penalty": "repetition_penalty",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "numa", "low_vram",
                "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "embedding_only")


def _no_penalty(opts: Options) -> bool:
    return opts.repeat_penalty in (None, 1.0)


# option -> (is this value neutral here?, why another value is refused)
SAMPLERS: dict[str, tuple[Callable[[Any, Options], bool], str]] = {
    "repeat_last_n": (lambda v, o: v in (None, -1) or _no_penalty(o),
                      "repeat_penalty here covers every token of the sequence, not a window of the last n; "
                      "use -1 (the whole context) or leave it out"),
    "penalize_newline": (lambda v, o: v in (None, False) or _no_penalty(o),
                         "newlines cannot be exempted from repeat_penalty; leave it out or set it to false"),
    "tfs_z": (lambda v, o: v in (None, 1.0), "tail-free sampling is not implemented; use 1.0 (off) or leave it out"),
    "mirostat": (lambda v, o: v in (None, 0), "mirostat sampling is not implemented; use 0 (off) or leave it out"),
    "mirostat_tau": (lambda v, o: v is None or not o.mirostat, "mirostat sampling is not implemented"),
    "mirostat_eta": (lambda v, o: v is None or not o.mirostat, "mirostat sampling is not implemented"),
}


def names(constraint: Constraint | None, prompt: str) -> ParamNames:
    """SamplingParams field -> `options.<Ollama name>`; the constraint -> `format`."""
    renamed = {field: f"options.{option}" for option, field in HONOURED.items()}
    return ParamNames(renamed, prefix="options.", prompt=prompt, constraint=constraint)


def constraint(fmt: str | dict | None) -> Constraint | None:
    """`format`: "json" is any JSON object, a dict is a JSON Schema, "" or absent is free text."""
    if fmt is None or fmt == "":
        return None
    return Constraint("json_schema", JSON_OBJECT if fmt == "json" else fmt, "format")


def sampling(body: GenerateCommon, prompt_len: int, max_context_len: int, names_: ParamNames) -> SamplingParams:
    """The request's one SamplingParams (a 400 naming `options.<name>` for a value it refuses)."""
    opts = body.options or Options()
    for name, (neutral, reason) in SAMPLERS.items():
        if not neutral(getattr(opts, name), opts):
            raise APIError(400, f"'options.{name}' is not supported by this server: {reason}.",
                           param=f"options.{name}", code="unsupported_parameter")
    fields: dict[str, Any] = {}
    for option, field in HONOURED.items():
        value = getattr(opts, option)
        if value is not None:
            fields[field] = value
    predict = fields.get("max_new_tokens")
    if predict is None or predict in (-1, -2):  # Ollama: -1 unbounded, -2 fill the context
        fields["max_new_tokens"] = max(1, max_context_len - prompt_len)
    if names_.constraint is not None:
        fields[names_.constraint.field] = names_.constraint.value
    if body.logprobs:
        fields["logprobs"] = body.top_logprobs or 0
    elif body.top_logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs")
    return params.make_sampling(fields, names_)
