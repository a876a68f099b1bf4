"""Structured-output cases shared by the grammar tests (imported, not collected): regexes, EBNF
grammars with recognisers written independently of xgrammar, choices, prompts, and the JSON
schemas (which live with the benchmarks, radixserve/bench/grammar_schemas.py)."""
from __future__ import annotations

import re

from radixserve.bench.grammar_schemas import SCHEMAS  # noqa: F401 - re-exported for the tests

REGEXES = {
    "phone": r"\(\d{3}\) \d{3}-\d{4}",
    "ipv4": r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
    "word_list": r"[a-z]{2,8}(, [a-z]{2,8}){1,3}",
    "yes_no": r"(yes|no)",
    "date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "hex_color": r"#[0-9a-fA-F]{6}",
}

# An arithmetic expression grammar and a recogniser written independently of xgrammar.
ARITH_EBNF = r'''
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")"
number ::= [1-9] [0-9]? [0-9]?
'''


def arith_ok(text: str) -> bool:
    """Recursive-descent recogniser for ARITH_EBNF (no whitespace; numbers 1-999 without leading zeros)."""
    pos = 0

    def number() -> bool:
        nonlocal pos
        m = re.match(r"[1-9][0-9]{0,2}", text[pos:])
        if not m:
            return False
        pos += m.end()
        return True

    def factor() -> bool:
        nonlocal pos
        if text.startswith("(", pos):
            pos += 1
            if not expr() or not text.startswith(")", pos):
                return False
            pos += 1
            return True
        return number()

    def term() -> bool:
        nonlocal pos
        if not factor():
            return False
        while pos < len(text) and text[pos] in "*/":
            pos += 1
            if not factor():
                return False
        return True

    def expr() -> bool:
        nonlocal pos
        if not term():
            return False
        while pos < len(text) and text[pos] in "+-":
            pos += 1
            if not term():
                return False
        return True

    return expr() and pos == len(text)


KV_EBNF = r'''
root ::= pair ("; " pair){0,2}
pair ::= key "=" value
key ::= [a-z] [a-z]? [a-z]?
value ::= [0-9] | "on" | "off"
'''
KV_RE = re.compile(r"[a-z]{1,3}=([0-9]|on|off)(; [a-z]{1,3}=([0-9]|on|off)){0,2}")

CHOICES = {
    "sentiment": ["positive", "negative", "neutral"],
    "quoted": ['He said "hi"', "back\\slash", "two\nlines", "café ☕"],
    "numbers": ["1", "12", "123"],
}


def json_prompt(schema: dict) -> list[dict]:
    import json

    return [{"role": "system", "content": "You reply with one JSON value and nothing else."},
            {"role": "user", "content": "Give an example JSON value for this JSON Schema: " + json.dumps(schema)}]


def format_checker():
    """jsonschema's format checks, with "ipv4" as JSON Schema defines it (RFC 2673 dotted-quad:
    four decimal bytes of 1-3 digits, leading zeros allowed; Python's ipaddress refuses those)."""
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks("ipv4")
    def ipv4(value) -> bool:
        if not isinstance(value, str):
            return True
        parts = value.split(".")
        return len(parts) == 4 and all(re.fullmatch(r"[0-9]{1,3}", p) and int(p) <= 255 for p in parts)

    return checker

ANSWER_TAG = {"type": "structural_tag", "format": {
    "type": "tag", "begin": "<answer>", "end": "</answer>",
    "content": {"type": "json_schema", "json_schema": SCHEMAS["flat_person"]}}}
ANSWER_RE = re.compile(r"<answer>(.*)</answer>", re.DOTALL)
