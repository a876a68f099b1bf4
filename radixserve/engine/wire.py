"""Messages between the HTTP front end (engine/client.py) and the engine process (engine/process.py).

Every message is one of the types below (msgspec Structs, encoded as MessagePack arrays with the
type's tag first). One ZeroMQ message carries a list of them: what a scheduler step produced, or
what the front end queued in one event-loop turn; never one ZeroMQ message per token per request.
Decoding checks each message against its declared type.

Front end -> engine (`ToEngine`):
    Add      a request: its PreparedRequest (checked once, in the front end) and cache namespace
    Abort    finish a request (index None: all its samples) or one sample at the next step
    Call     a named call answered by one Reply: stats | flush_cache | check_integrity | cache_events | save_cache | shutdown
Engine -> front end (`FromEngine`):
    Ready          once, first: the EngineInfo
    StartupFailed  instead of Ready, when the engine could not be built; the process then exits
    Tokens         a sample's new tokens (a step's worth)
    Finished       a sample left the scheduler; its slots are free
    Failed         a request was refused (queue full, invalid) or its grammar failed
    Reply          the answer to a Call
In the front end only (never encoded): EngineDead, handed to every open request when the engine
process is gone.

A sample is named by (rid, index) in every message about one: the request's id and which of its
n samples (radixserve/sample_id.py).
"""
from __future__ import annotations

import pickle
from typing import Any, Literal, NamedTuple, Union

import msgspec

from radixserve.engine.prepare import PreparedRequest
from radixserve.outputs import TokenLogprob
from radixserve.sample_id import SampleId

# (token id, logprob, top alternatives as (token id, logprob), best first)
WireLogprob = tuple[int, float, list[tuple[int, float]]]
CallName = Literal["stats", "flush_cache", "check_integrity", "cache_events", "save_cache", "shutdown"]
FailureKind = Literal["grammar", "queue_full", "invalid"]


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


class _Message(msgspec.Struct, array_like=True, frozen=True, tag=True, gc=False):
    """Base of the messages: positional on the wire (array_like), fields by name in the code; the tag
    (the class name) selects the type when decoding.

    NOTE: gc=False (not tracked by the cycle collector: cheaper to make and decode, thousands per step)
    is safe because a message holds only strings, numbers, bytes and lists/tuples of them: it can
    never be part of a reference cycle. Keep it that way."""


# ---- front end -> engine ----------------------------------------------------------------------------
class Add(_Message):
    rid: str
    prepared_pickle: bytes  # a PreparedRequest (engine/prepare.py), pickled: trusted as is, never re-checked
    namespace: str | None  # the cache namespace (cache_salt)

    @classmethod
    def of(cls, rid: str, prepared: PreparedRequest, namespace: str | None) -> "Add":
        return cls(rid, pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL), namespace)

    @property
    def prepared(self) -> PreparedRequest:
        # NOTE: only ever from our own process pair over a private ipc socket (mode 0700 directory).
        return pickle.loads(self.prepared_pickle)


class Abort(_Message):
    rid: str
    index: int | None  # None: every sample of the request
    reason: Literal["abort", "stop"]  # "stop": a stop string matched in the front end


class Call(_Message):
    call_id: int
    name: CallName
    args: tuple  # plain values (ints, strings, None)


# ---- engine -> front end ----------------------------------------------------------------------------
class Ready(_Message):
    info_pickle: bytes  # an EngineInfo, pickled: it carries the EngineConfig and the tokenizer object

    @classmethod
    def of(cls, info: EngineInfo) -> "Ready":
        return cls(pickle.dumps(info, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def info(self) -> EngineInfo:
        # NOTE: only ever from our own process pair over a private ipc socket (mode 0700 directory).
        return pickle.loads(self.info_pickle)


class StartupFailed(_Message):
    message: str
    user_error: bool = False  # a ValueError (missing model, bad option): said in one line, no traceback


class Tokens(_Message):
    rid: str
    index: int
    token_ids: list[int]
    logprobs: list[WireLogprob] | None
    reason: str | None  # why the sample stops after these tokens (EOS, stop token id, length), or None
    prompt_len: int
    cached: int  # prompt tokens served from the radix tree
    prompt_logprobs: list[WireLogprob] | None  # on a sample's first message only, when asked for

    @property
    def sample(self) -> SampleId:
        return SampleId(self.rid, self.index)


class Finished(_Message):
    rid: str
    index: int
    reason: str | None  # the sample's finish reason
    matched_stop: str | int | None
    prompt_len: int
    cached: int
    prompt_logprobs: list[WireLogprob] | None  # when this is the sample's first message and they were asked for

    @property
    def sample(self) -> SampleId:
        return SampleId(self.rid, self.index)


class Failed(_Message):
    rid: str
    kind: FailureKind
    field: str | None  # the field an error is about (FieldError.field)
    message: str


class Reply(_Message):
    call_id: int
    ok: bool
    value_pickle: bytes  # the call's result (ok) or the error's repr (not ok), pickled

    @classmethod
    def of(cls, call_id: int, ok: bool, value: Any) -> "Reply":
        return cls(call_id, ok, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def value(self) -> Any:
        return pickle.loads(self.value_pickle)


class EngineDead(NamedTuple):
    """Handed by the front end's receiver to every open request when the engine process is gone;
    never encoded."""


ToEngine = Union[Add, Abort, Call]
FromEngine = Union[Ready, StartupFailed, Tokens, Finished, Failed, Reply]

_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(list[ToEngine])
_from_engine = msgspec.msgpack.Decoder(list[FromEngine])


# NOTE: msgspec holds the GIL for a whole encode/decode, so the shared encoder and decoders are safe
# from any thread.
def encode(batch: list[ToEngine] | list[FromEngine]) -> bytes:
    return _encoder.encode(batch)


def decode_to_engine(data: bytes | memoryview) -> list[ToEngine]:
    return _to_engine.decode(data)


def decode_from_engine(data: bytes | memoryview) -> list[FromEngine]:
    return _from_engine.decode(data)


def logprobs_to_wire(lps: list[TokenLogprob] | None) -> list[WireLogprob] | None:
    if not lps:
        return None
    return [(lp.token_id, lp.logprob, lp.top) for lp in lps]


def logprobs_from_wire(lps: list[WireLogprob] | None) -> list[TokenLogprob]:
    if not lps:
        return []
    return [TokenLogprob(t, lp, list(top)) for t, lp, top in lps]
