"""Messages between the HTTP front end and the engine process: plain tuples, pickled, one ZeroMQ
message per batch (a scheduler step's outputs, or what the front end queued in one event-loop turn),
never one message per token per request.

Front end -> engine (a list of):
    (ADD, rid, prepared, namespace)               prepared: a PreparedRequest (engine/prepare.py), trusted
    (ABORT, rid, reason)                          reason "abort", or "stop" (a stop string matched in the front end)
    (CALL, call_id, name, args)                   stats | flush_cache | check_integrity | cache_events | shutdown
Engine -> front end (a list of):
    (READY, info)                                 once, first: see EngineInfo
    (TOKENS, rid, index, token_ids, logprobs, reason, prompt_len, cached, prompt_logprobs)
        prompt_logprobs: on a sample's first message only (TOKENS or FINISHED), when asked for
        reason: why the request stops after these tokens (token-level: EOS, stop token id, length), or None
    (FINISHED, rid, reason, matched_stop, prompt_len, cached, prompt_logprobs)
        the request left the scheduler; its slots are free
    (ERROR, rid, kind, field, message)            kind: grammar | queue_full | invalid
    (REPLY, call_id, ok, value)
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, NamedTuple

from radixserve.outputs import TokenLogprob
from radixserve.sampling_params import SamplingParams

ADD, ABORT, CALL = "add", "abort", "call"
READY, TOKENS, FINISHED, ERROR, REPLY = "ready", "tokens", "finished", "error", "reply"

_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


class EngineInfo(NamedTuple):
    """What the front end needs to know of the engine to validate and tokenise on its own."""

    model_name: str
    max_context_len: int
    vocab_size: int
    eos_ids: tuple[int, ...]
    kv_capacity: int
    config: Any  # the EngineConfig
    tokenizer: Any  # the engine's own tokenizer, pickled: the front end encodes exactly as it would
    pid: int


def dumps(batch: list[tuple]) -> bytes:
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> list[tuple]:
    # NOTE: only ever from our own process pair over a private ipc socket (mode 0700 directory).
    return pickle.loads(data)


def params_to_wire(p: SamplingParams) -> tuple:
    return tuple(getattr(p, name) for name in _PARAM_FIELDS)


def params_from_wire(values: tuple) -> SamplingParams:
    return SamplingParams(**dict(zip(_PARAM_FIELDS, values)))


def logprobs_to_wire(lps: list[TokenLogprob] | None) -> list[tuple] | None:
    if not lps:
        return None
    return [(lp.token_id, lp.logprob, lp.top) for lp in lps]


def logprobs_from_wire(lps: list[tuple] | None) -> list[TokenLogprob]:
    if not lps:
        return []
    return [TokenLogprob(t, lp, list(top)) for t, lp, top in lps]
