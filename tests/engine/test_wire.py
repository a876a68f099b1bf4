"""The messages between the front end and the engine process (radixserve/engine/wire.py): every
declared kind survives the real encoding unchanged, decoding refuses what a direction does not
carry, and a sample's public id is made from (rid, index) in one way."""
from __future__ import annotations

import dataclasses
import typing

import msgspec
import pytest

from radixserve.config import EngineConfig
from radixserve.engine import wire
from radixserve.engine.prepare import PreparedRequest
from radixserve.grammar.spec import grammar_spec
from radixserve.outputs import TokenLogprob
from radixserve.sample_id import SampleId
from radixserve.sampling_params import SamplingParams

LPS = [(7, -0.5, [(7, -0.5), (9, -1.25)]), (3, -2.0, [])]
FULL_PARAMS = SamplingParams(max_new_tokens=5, min_new_tokens=0, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05,
                             repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5, seed=3,
                             stop=["a", "b"], stop_token_ids=[2, 5], skip_special_tokens=False, n=3, logprobs=4,
                             prompt_logprobs_start=1, prompt_top_logprobs=2, logit_bias={3: -100.0, 11: 2.5},
                             json_schema={"type": "object", "properties": {"x": {"type": "integer"}}})

def prepared(ids: list[int], params: SamplingParams) -> PreparedRequest:
    return PreparedRequest(tuple(ids), params, grammar_spec(params))


TO_ENGINE = [
    wire.Add.of("r1", prepared([1, 2, 3], FULL_PARAMS), "salt"),
    wire.Add.of("r2", prepared([4], SamplingParams(regex="[a-z]+")), None),
    wire.Add.of("r3", prepared([5, 6], SamplingParams(min_new_tokens=2, ignore_eos=True, stop="z", choice=None)), None),
    wire.Abort("r1", None, "abort"),
    wire.Abort("r1", 2, "stop"),
    wire.Call(7, "cache_events", (0, None, 100)),
    wire.Call(8, "stats", ()),
]
FROM_ENGINE = [
    wire.Tokens("r1", 2, [10, 11], LPS, None, 3, 1, None),
    wire.Tokens("r1", 0, [12], None, "length", 3, 1, []),
    wire.Finished("r1", 0, "stop", "a", 3, 1, None),
    wire.Finished("r1", 1, "stop", 5, 3, 0, LPS),
    wire.Failed("r2", "grammar", "regex", "the regex does not compile"),
    wire.Failed("r3", "queue_full", None, "64 requests are queued; retry later"),
    wire.Reply.of(7, True, {"head": 3, "events": [("x", 1)]}),
    wire.Reply.of(8, False, "RuntimeError('boom')"),
    wire.StartupFailed("OSError: no such model"),
]


def kinds(union) -> set[type]:
    return set(typing.get_args(union))


def test_every_declared_kind_round_trips_through_the_real_encoding():
    assert {type(m) for m in TO_ENGINE} == kinds(wire.ToEngine)
    assert {type(m) for m in FROM_ENGINE} | {wire.Ready} == kinds(wire.FromEngine)
    got = wire.decode_to_engine(wire.encode(TO_ENGINE))
    assert got == TO_ENGINE and [type(m) for m in got] == [type(m) for m in TO_ENGINE]
    assert got[0].prepared == prepared([1, 2, 3], FULL_PARAMS) and isinstance(got[0].prepared.params, SamplingParams)
    assert got[0].prepared.grammar.kind == "json_schema" and got[1].prepared.grammar.source == "[a-z]+"
    got = wire.decode_from_engine(wire.encode(FROM_ENGINE))
    assert got == FROM_ENGINE and [type(m) for m in got] == [type(m) for m in FROM_ENGINE]
    assert got[6].value == {"head": 3, "events": [("x", 1)]} and got[7].value == "RuntimeError('boom')"
    assert got[1].prompt_logprobs == [] and got[0].prompt_logprobs is None  # "asked, none" != "not asked"


def test_ready_carries_the_engine_info_and_its_objects():
    info = wire.EngineInfo("m", 1024, 32000, (2,), 4096, EngineConfig(max_total_tokens=4096), {"tok": [1, 2]}, 99)
    (msg,) = wire.decode_from_engine(wire.encode([wire.Ready.of(info)]))
    assert isinstance(msg, wire.Ready) and msg.info == info and isinstance(msg.info.config, EngineConfig)


def test_each_direction_decodes_only_its_own_messages():
    with pytest.raises(msgspec.ValidationError):
        wire.decode_from_engine(wire.encode([wire.Abort("r", None, "abort")]))
    with pytest.raises(msgspec.ValidationError):
        wire.decode_to_engine(wire.encode([wire.Finished("r", 0, "stop", None, 1, 0, None)]))
    with pytest.raises(msgspec.ValidationError):  # a reason outside the declared Literal
        wire.decode_to_engine(msgspec.msgpack.encode([["Abort", "r", None, "later"]]))
    with pytest.raises(msgspec.ValidationError):  # the old positional tuples are not messages
        wire.decode_from_engine(msgspec.msgpack.encode([["tokens", "r", 0, [1], None, None, 1, 0, None]]))


def test_the_prepared_request_crosses_as_prepared():
    """The engine trusts what the front end prepared: the request arrives equal, field by field,
    with its grammar spec, and nothing is built or checked again on decoding."""
    p = prepared([1], SamplingParams(stop="x", json_schema={"type": "string"}))
    (msg,) = wire.decode_to_engine(wire.encode([wire.Add.of("r", p, None)]))
    assert msg.prepared == p and msg.prepared.params.stop == ["x"]
    assert dataclasses.asdict(msg.prepared.params) == dataclasses.asdict(p.params)


def test_messages_are_frozen_and_named_by_field():
    msg = wire.Tokens("r", 1, [5], None, None, 2, 0, None)
    assert msg.sample == SampleId("r", 1) and msg.token_ids == [5]
    with pytest.raises(AttributeError):
        msg.rid = "other"  # type: ignore[misc]


def test_logprobs_convert_both_ways():
    lps = [TokenLogprob(7, -0.5, [(7, -0.5), (9, -1.25)]), TokenLogprob(3, -2.0, [])]
    (msg,) = wire.decode_from_engine(wire.encode([wire.Tokens("r", 0, [7, 3], wire.logprobs_to_wire(lps),
                                                              None, 1, 0, None)]))
    assert wire.logprobs_from_wire(msg.logprobs) == lps
    assert wire.logprobs_to_wire([]) is None and wire.logprobs_from_wire(None) == []


def test_a_sample_is_named_by_its_request_alone_or_with_its_index():
    assert SampleId("abc", 0).name(1) == "abc"
    assert [SampleId("abc", i).name(3) for i in range(3)] == ["abc#0", "abc#1", "abc#2"]
    assert SampleId("a#1", 0).name(2) == "a#1#0"  # a caller's id is taken as it is, never parsed
