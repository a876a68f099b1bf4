"""JSON schemas for structured-output tests and benchmarks.

SCHEMAS: 33 schemas of varied shape (nested objects, arrays with min/max items, enums, const,
anyOf/oneOf, $ref/$defs, string patterns, lengths and formats, integer and number ranges,
optional properties, additionalProperties false or typed), each with a name. Strings, arrays and
nesting are bounded (maxLength, pattern, format, maxItems, enums), as a schema meant for a small
model should be: unbounded, a 135M-parameter model at temperature 1 may go on writing one string
until max_new_tokens (the model's choice, not the grammar's).

RECORDS: a long array of records for throughput runs: bounded (so a grammar can end) but far
longer than any token budget, so constrained and unconstrained runs generate the same number of
tokens (every request stops at max_new_tokens), even with random weights. Its strings are bounded
by patterns, not maxLength: xgrammar 0.2.8 checks a maxLength repetition token by token at run
time (milliseconds per mask; see the micro benchmark), a bounded pattern in tens of microseconds.
LONG_KEYS: an object with long fixed keys, for jump-forward.
"""
from __future__ import annotations

ADDRESS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
           "required": ["city", "zip"], "additionalProperties": False}

SCHEMAS: dict[str, dict] = {
    "flat_person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                     "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                    "required": ["name", "age"]},
    "nested_address": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                        "address": ADDRESS},
                       "required": ["name", "address"], "additionalProperties": False},
    "deep_nesting": {"type": "object", "properties": {"a": {"type": "object", "properties": {
        "b": {"type": "object", "properties": {"c": {"type": "boolean"}}, "required": ["c"]}}, "required": ["b"]}},
        "required": ["a"]},
    "array_min_max": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                                                "minItems": 2, "maxItems": 4}},
                      "required": ["tags"]},
    "array_of_ints": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                      "minItems": 1, "maxItems": 6},
    "enum_color": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    "enum_mixed": {"enum": ["yes", 1, None, True]},
    "const_version": {"type": "object", "properties": {"version": {"const": "1.0"}, "ok": {"type": "boolean"}},
                      "required": ["version", "ok"]},
    "anyof_scalar": {"type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999},
                                                                       {"type": "string", "maxLength": 6}]}},
                     "required": ["id"]},
    "oneof_tagged": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0, "maximum": 10}},
         "required": ["kind", "r"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 9}},
         "required": ["kind", "side"], "additionalProperties": False}]},
    "ref_defs": {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                                      "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                                     "required": ["x", "y"]}},
                 "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
                 "required": ["start", "end"]},
    "ref_definitions_list": {"definitions": {"item": {"type": "string", "enum": ["apple", "pear", "plum"]}},
                             "type": "array", "items": {"$ref": "#/definitions/item"}, "minItems": 1, "maxItems": 3},
    "string_pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
                       "required": ["code"]},
    "string_lengths": {"type": "object", "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 6}},
                       "required": ["word"]},
    "integer_range": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 20}},
                      "required": ["n"]},
    "integer_exclusive": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 50},
    "number_range": {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
                     "required": ["score"]},
    "optional_props": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 10},
                                                        "pages": {"type": "integer", "minimum": 1, "maximum": 999},
                                                        "isbn": {"type": "string", "pattern": "^[0-9]{10}$"}},
                       "required": ["title"], "additionalProperties": False},
    "additional_false": {"type": "object", "properties": {"x": {"type": "integer"}},
                         "required": ["x"], "additionalProperties": False},
    "additional_typed": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9},
                         "maxProperties": 3},
    "boolean_and_null": {"type": "object", "properties": {"flag": {"type": "boolean"}, "nothing": {"type": "null"}},
                         "required": ["flag", "nothing"]},
    "nullable_type_list": {"type": "object", "properties": {"v": {"type": ["string", "null"], "maxLength": 5}},
                           "required": ["v"]},
    "array_of_objects": {"type": "array", "items": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999}, "done": {"type": "boolean"}},
        "required": ["id", "done"], "additionalProperties": False}, "minItems": 1, "maxItems": 3},
    "tuple_prefix_items": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 5}, {"type": "integer"},
                                                            {"type": "boolean"}], "items": False},
    "format_date": {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"]},
    "format_ipv4": {"type": "object", "properties": {"host": {"type": "string", "format": "ipv4"}},
                    "required": ["host"]},
    "format_uuid": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
    "refs_of_refs": {"$defs": {"name": {"type": "string", "maxLength": 10},
                               "person": {"type": "object", "properties": {"first": {"$ref": "#/$defs/name"},
                                                                           "last": {"$ref": "#/$defs/name"}},
                                          "required": ["first", "last"]}},
                     "type": "object", "properties": {"author": {"$ref": "#/$defs/person"},
                                                      "editors": {"type": "array", "items": {"$ref": "#/$defs/person"},
                                                                  "maxItems": 2}},
                     "required": ["author", "editors"]},
    "min_properties": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                                        "c": {"type": "integer"}}, "minProperties": 2},
    "pydantic_like": {"title": "Invoice", "type": "object", "properties": {
        "number": {"title": "Number", "type": "string", "pattern": "^INV-[0-9]{4}$"},
        "total": {"title": "Total", "type": "number", "minimum": 0, "maximum": 10000},
        "currency": {"title": "Currency", "enum": ["EUR", "USD"], "type": "string"},
        "note": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}], "default": None, "title": "Note"}},
        "required": ["number", "total", "currency"]},
    "short_answer": {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}},
                     "required": ["answer"]},
    "small_free_object": {"type": "object", "maxProperties": 2,
                          "additionalProperties": {"type": ["boolean", "null"]}},
    "long_fixed_keys": {"type": "object", "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 9999},
        "preferred_contact_channel_for_notifications": {"enum": ["email", "sms"]},
        "has_accepted_the_terms_and_conditions": {"type": "boolean"}},
        "required": ["customer_identification_number", "preferred_contact_channel_for_notifications",
                     "has_accepted_the_terms_and_conditions"], "additionalProperties": False},
}

RECORDS = {"type": "array", "minItems": 64, "maxItems": 64, "items": {
    "type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 99999},
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
        "kind": {"enum": ["user", "admin", "guest"]},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue", "new", "old"]}, "maxItems": 3},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "active": {"type": "boolean"}},
    "required": ["id", "name", "kind", "tags", "score", "active"], "additionalProperties": False}}

LONG_KEYS = SCHEMAS["long_fixed_keys"]
