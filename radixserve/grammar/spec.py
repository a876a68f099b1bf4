"""GrammarSpec: a request's structured-output field, normalised into one grammar source text."""
from __future__ import annotations

import json
from typing import NamedTuple

from radixserve.sampling_params import SamplingParams


class GrammarSpec(NamedTuple):
    """What to compile. `field` is the SamplingParams field it came from (error messages name it);
    `kind` is how xgrammar compiles `source`: json_schema, regex, ebnf or structural_tag."""

    field: str
    kind: str
    source: str


def grammar_spec(params: SamplingParams) -> GrammarSpec | None:
    """The request's grammar, or None. Raises ValueError naming the field for text that is not JSON."""
    field = params.constraint
    if field is None:
        return None
    value = getattr(params, field)
    if field == "choice":
        return GrammarSpec(field, "ebnf", choice_ebnf(value))
    if field in ("json_schema", "structural_tag"):
        return GrammarSpec(field, field, _json_text(field, value))
    return GrammarSpec(field, field, value)


def _json_text(field: str, value: dict | str) -> str:
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field} is not valid JSON: {exc}") from None
        return value
    try:
        # NOTE: key order is kept: it is the order in which a schema's properties are generated.
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} cannot be written as JSON: {exc}") from None


def choice_ebnf(choices: list[str]) -> str:
    """root ::= "a" | "b" | ... with each choice as an EBNF string literal (duplicates dropped)."""
    unique = list(dict.fromkeys(choices))
    return "root ::= " + " | ".join(_literal(c) for c in unique)


def _literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")  # NOTE: xgrammar reads a \x escape up to the last hex digit
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
