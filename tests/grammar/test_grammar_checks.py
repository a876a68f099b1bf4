"""Bad structured-output input: a ValueError naming the field, before anything is queued; the engine
keeps serving with nothing leaked. And the JSON-Schema keyword check, against xgrammar itself:
every keyword it refuses is one xgrammar really does not enforce (a violating instance gets
through xgrammar's matcher), and the schemas it lets through are enforced."""
from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

from engine_fixtures import make_engine
from grammar_cases import SCHEMAS, format_checker
from radixserve import SamplingParams
from radixserve.grammar import GrammarError
from radixserve.grammar.backend import JSON_ANY_WHITESPACE
from radixserve.grammar.schema_check import check_schema


@pytest.fixture(scope="module")
def engine():
    e = make_engine(max_total_tokens=2048)
    yield e
    e.shutdown()


# ---- SamplingParams: types and combinations --------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(json_schema={"type": "object"}, regex="a+"), ["json_schema", "regex"]),
    (dict(regex="a", ebnf='root ::= "a"'), ["regex", "ebnf"]),
    (dict(choice=["a"], structural_tag={"type": "structural_tag"}), ["choice", "structural_tag"]),
    (dict(choice=[]), ["choice", "non-empty"]),
    (dict(choice="yes"), ["choice"]),
    (dict(choice=["a", 3]), ["choice", "strings"]),
    (dict(json_schema=5), ["json_schema"]),
    (dict(json_schema=["type"]), ["json_schema"]),
    (dict(regex=""), ["regex"]),
    (dict(ebnf=7), ["ebnf"]),
    (dict(structural_tag=1.5), ["structural_tag"]),
    (dict(regex="a+", ignore_eos=True), ["ignore_eos", "regex"]),
    (dict(json_schema={}, min_new_tokens=2), ["min_new_tokens", "json_schema"]),
])
def test_sampling_params_refuse_bad_constraints(kwargs, words):
    with pytest.raises(ValueError) as exc:
        SamplingParams(**kwargs)
    for w in words:
        assert w in str(exc.value)


def test_sampling_params_accept_each_constraint_alone():
    for kw in (dict(json_schema={"type": "object"}), dict(json_schema='{"type": "integer"}'), dict(regex="[ab]+"),
               dict(ebnf='root ::= "x"'), dict(choice=("a", "b")), dict(structural_tag={"type": "structural_tag"})):
        p = SamplingParams(**kw)
        assert p.constraint == next(iter(kw))
    assert SamplingParams(choice=("a", "b")).choice == ["a", "b"]
    assert SamplingParams().constraint is None


# ---- the engine's request checks ----------------------------------------------------------------------

ST_OK = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<tool>"], "tags": [
    {"begin": "<tool>", "content": {"type": "json_schema", "json_schema": {"type": "object"}}, "end": "</tool>"}]}}

BAD_CONTENT = [  # (SamplingParams kwargs, words the message must contain)
    (dict(json_schema="{not json"), ["json_schema", "not valid JSON"]),
    (dict(json_schema={"type": "foo"}), ["json_schema", "not a valid JSON Schema"]),
    (dict(json_schema={"type": "string", "minLength": -1}), ["json_schema", "not a valid JSON Schema"]),
    (dict(json_schema={"type": "object", "properties": {"a": 5}}), ["json_schema", "not a valid JSON Schema"]),
    (dict(json_schema={"not": {"type": "string"}}), ["json_schema", "'not'"]),
    (dict(json_schema={"type": "array", "items": {"type": "integer"}, "uniqueItems": True}), ["uniqueItems"]),
    (dict(json_schema={"type": "number", "multipleOf": 0.5}), ["multipleOf"]),
    (dict(json_schema={"if": {"type": "integer"}, "then": {"minimum": 1}}), ["'if'"]),
    (dict(json_schema={"type": "object", "properties": {"a": {"$ref": "#/$defs/x", "maxLength": 2}},
                       "$defs": {"x": {"type": "string"}}}), ["maxLength", "$ref", "#/properties/a"]),
    (dict(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}),
     ["required", "'b'"]),
    (dict(json_schema={"type": "string", "format": "date", "pattern": "^2"}), ["pattern", "format"]),
    (dict(json_schema={"$ref": "#/$defs/missing"}), ["json_schema", "missing"]),
    (dict(json_schema={"type": "integer", "minimum": 1.5}), ["json_schema", "whole number"]),
    (dict(regex="(ab"), ["regex", "parenthesis"]),
    (dict(regex="(?=a)b"), ["regex", "Lookahead"]),
    (dict(ebnf='root ::= "a" | '), ["ebnf"]),
    (dict(ebnf='rooot ::= "a"'), ["ebnf", "root"]),
    (dict(ebnf='root ::= undefined_rule'), ["ebnf", "undefined_rule"]),
    (dict(structural_tag={"type": "structural_tag", "format": {"type": "nope"}}), ["structural_tag", "nope"]),
    (dict(structural_tag="[1, 2"), ["structural_tag", "not valid JSON"]),
]


@pytest.mark.parametrize("kwargs, words", BAD_CONTENT, ids=[str(i) for i in range(len(BAD_CONTENT))])
def test_bad_grammar_content_is_a_value_error_naming_the_field(engine, kwargs, words):
    params = SamplingParams(max_new_tokens=4, **kwargs)
    ids = engine.tokenizer.encode("hi")
    with pytest.raises(GrammarError) as exc:
        engine.check_request(ids, params)
    assert exc.value.field == params.constraint  # for an HTTP layer to name its own parameter
    for w in words:
        assert w in str(exc.value), str(exc.value)
    with pytest.raises(ValueError):  # the same through generate: nothing is queued
        engine.generate(input_ids=[ids], sampling_params=params)
    assert engine.stats()["waiting"] == 0


def test_good_content_passes_the_checks(engine):
    ids = engine.tokenizer.encode("hi")
    for kw in (dict(json_schema=s) for s in SCHEMAS.values()):
        engine.check_request(ids, SamplingParams(**kw))
    engine.check_request(ids, SamplingParams(structural_tag=ST_OK))
    engine.check_request(ids, SamplingParams(json_schema="true"))


def test_engine_keeps_serving_after_bad_input(engine):
    for kwargs, _ in BAD_CONTENT:
        with pytest.raises(ValueError):
            engine.generate("hi", SamplingParams(max_new_tokens=2, **kwargs))
    out = engine.generate("The capital of France is", SamplingParams(max_new_tokens=6, temperature=0,
                                                                     choice=["Paris", "Rome"]))[0]
    assert out.text == "Paris" and out.finish_reason == "stop"
    engine.check_integrity()
    stats = engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0 and stats["kv_private_tokens"] == 0


# ---- the keyword check against xgrammar ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ascii_compiler():
    info = xgr.TokenizerInfo([chr(c) for c in range(32, 127)], vocab_type=xgr.VocabType.RAW)
    return xgr.GrammarCompiler(info)


def _xgrammar_accepts(compiler, schema, instance) -> bool:
    text = json.dumps(instance, separators=(", ", ": "))
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=JSON_ANY_WHITESPACE, strict_mode=True)
    m = xgr.GrammarMatcher(compiler.compile_grammar(grammar))
    return m.accept_string(text) and m.is_completed()


def _valid(schema, instance) -> bool:
    try:  # formats checked too (date, ipv4, uuid, ... need no extra packages)
        jsonschema.validate(instance, schema, format_checker=format_checker())
        return True
    except jsonschema.ValidationError:
        return False


NOT_ENFORCED = [  # (schema, an instance that violates it) - check_schema must refuse the schema
    ({"type": "number", "multipleOf": 0.5}, 0.3),
    ({"type": "integer", "multipleOf": 3, "minimum": 0}, 4),
    ({"type": "integer", "multipleOf": 2000}, 4),
    ({"type": "integer", "multipleOf": 2.5}, 3),
    ({"type": "array", "uniqueItems": True, "items": {"type": "integer"}}, [1, 1]),
    ({"type": "array", "contains": {"const": 5}, "items": {"type": "integer"}}, [1, 1]),
    ({"not": {"type": "integer"}}, 3),
    ({"type": "integer", "not": {"const": 3}}, 3),
    ({"if": {"type": "integer"}, "then": {"minimum": 5}}, 3),
    ({"type": "object", "dependentRequired": {"a": ["b"]},
      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}, {"a": 1}),
    ({"type": "object", "dependentSchemas": {"a": {"required": ["b"]}},
      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}, {"a": 1}),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "c"]}, {"a": 1}),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["c"],
      "additionalProperties": True}, {"a": 1}),
    ({"type": "object", "required": ["a"]}, {}),
    ({"$ref": "#/$defs/a", "maxLength": 1, "$defs": {"a": {"type": "string"}}}, "abc"),
    ({"type": "string", "enum": ["a", "bb"], "minLength": 2}, "a"),
    ({"const": "abc", "type": "integer"}, "abc"),
    ({"type": "string", "anyOf": [{"minLength": 2}], "maxLength": 3}, "abcd"),
    ({"anyOf": [{"type": "string"}], "maxLength": 3}, "abcd"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 3),
    ({"oneOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                {"type": "object", "properties": {"b": {"type": "integer"}}}]}, {}),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]}, {"a": 1}),
    ({"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 5}]}, 7),
    ({"minLength": 3}, "a"),
    ({"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"}, "abcd"),
    ({"type": "string", "format": "email", "minLength": 30}, "a@b.co"),
    ({"type": "string", "format": "date", "pattern": "^1"}, "2020-01-01"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "propertyNames": {"pattern": "^b"}}, {"a": 1}),
]


@pytest.mark.parametrize("schema, instance", NOT_ENFORCED, ids=[str(i) for i in range(len(NOT_ENFORCED))])
def test_refused_keywords_are_really_not_enforced_by_xgrammar(ascii_compiler, schema, instance):
    assert not _valid(schema, instance)
    # the oracle: xgrammar lets the violating instance through, so the refusal is warranted
    assert _xgrammar_accepts(ascii_compiler, schema, instance)
    with pytest.raises(ValueError, match="json_schema"):
        check_schema(schema)


ENFORCED = [  # (schema, a violating instance): accepted by check_schema and refused by xgrammar
    ({"type": "integer", "multipleOf": 3}, 4),
    ({"type": "integer", "multipleOf": 3, "minimum": 0, "maximum": 100}, 4),
    ({"type": "object", "minProperties": 2, "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
     {"a": 1}),
    ({"type": "object", "maxProperties": 1, "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
     {"a": 1, "b": 2}),
    ({"type": "object", "patternProperties": {"^x": {"type": "integer"}}}, {"xa": "s"}),
    ({"type": "object", "propertyNames": {"maxLength": 2}}, {"abc": 1}),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
     {"b": 1}),
    ({"type": "string", "enum": ["a", "bb"]}, "c"),
    ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, 3.5),
    ({"oneOf": [{"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]},
                {"type": "object", "properties": {"k": {"const": "b"}}, "required": ["k"]}]}, {"k": "c"}),
    ({"allOf": [{"type": "integer"}]}, "x"),
    ({"type": ["string", "integer"], "maxLength": 2}, "abc"),
    ({"type": ["string", "integer"], "minimum": 2}, 1),
    ({"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, [1, 2]),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1]),
    ({"type": "number", "exclusiveMinimum": 0}, 0),
    ({"type": "string", "format": "date"}, "2020-13-01"),
    ({"type": "object", "unevaluatedProperties": False, "properties": {"a": {"type": "integer"}}}, {"b": 1}),
    ({"$ref": "#/definitions/a", "definitions": {"a": {"type": "integer"}}}, "x"),
] + [(s, {"surely": "not this"}) if s.get("type") != "object" or "properties" in s else (s, [1])
     for s in SCHEMAS.values() if s.get("type") != "array"]


@pytest.mark.parametrize("schema, instance", ENFORCED, ids=[str(i) for i in range(len(ENFORCED))])
def test_accepted_schemas_are_enforced_by_xgrammar(ascii_compiler, schema, instance):
    check_schema(schema)
    assert not _valid(schema, instance)
    assert not _xgrammar_accepts(ascii_compiler, schema, instance)


def test_json_object_mode_is_any_object(ascii_compiler):
    """response_format json_object maps to json_schema {"type": "object"}: any JSON object (xgrammar's
    strict mode forbids undeclared properties only where properties are declared), nothing else."""
    mode = {"type": "object"}
    check_schema(mode)
    for ok in ({}, {"a": 1}, {"a": {"b": [True, None, 1.5, "x"]}, "c": "d"}):
        assert _xgrammar_accepts(ascii_compiler, mode, ok), ok
    for bad in ([1], "x", 3, None):
        assert not _xgrammar_accepts(ascii_compiler, mode, bad), bad
