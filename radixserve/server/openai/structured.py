"""Structured output over HTTP: the request fields of several spellings -> SamplingParams' one
constraint field (json_schema, regex, ebnf, choice or structural_tag).

Spellings accepted (at most one per request; two at once is a 400 naming both):
  response_format        {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
                         {"type": "json_object"}  (any JSON object)   {"type": "text"}  (no constraint)
                         {"type": "json_object" | "json", "value": schema}, {"type": "regex", "value": ...} (TGI)
  structured_outputs     {"json" | "regex" | "choice" | "grammar" | "json_object" | "structural_tag"}  (vLLM)
  top level              regex, ebnf, json_schema (SGLang), guided_json, guided_regex, guided_choice,
                         guided_grammar (vLLM's older names)
Errors in the constraint's content (an invalid schema, an unsupported keyword, a bad regex or
grammar, a compile timeout) come from the engine as GrammarErrors carrying the SamplingParams
field; ParamNames (params.py) turns that field back into the request field the client used.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from radixserve.server.errors import APIError

JSON_OBJECT = {"type": "object"}  # JSON-object mode: any JSON object


class Constraint(NamedTuple):
    field: str  # the SamplingParams field: json_schema | regex | ebnf | choice | structural_tag
    value: Any
    param: str  # where the client put it, e.g. "response_format.json_schema.schema"


def constraints_of(req: Any) -> list[Constraint]:
    """Every constraint the request asks for, in the order the fields are checked."""
    found: list[Constraint] = []
    rf = getattr(req, "response_format", None)
    if rf is not None and rf.type in ("json", "json_object") and rf.value is not None:  # TGI's spelling
        found.append(Constraint("json_schema", rf.value, "response_format.value"))
    elif rf is not None and rf.type == "regex":
        found.append(Constraint("regex", rf.value, "response_format.value"))
    elif rf is not None and rf.type == "json_object":
        found.append(Constraint("json_schema", JSON_OBJECT, "response_format"))
    elif rf is not None and rf.type == "json_schema":
        schema = rf.json_schema.schema_
        found.append(Constraint("json_schema", JSON_OBJECT if schema is None else schema,
                                "response_format.json_schema.schema"))
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        for attr, field, name in (("json_", "json_schema", "json"), ("regex", "regex", "regex"),
                                  ("choice", "choice", "choice"), ("grammar", "ebnf", "grammar"),
                                  ("structural_tag", "structural_tag", "structural_tag")):
            value = getattr(so, attr)
            if value is not None:
                found.append(Constraint(field, value, f"structured_outputs.{name}"))
        if so.json_object:
            found.append(Constraint("json_schema", JSON_OBJECT, "structured_outputs.json_object"))
    for attr, field in (("regex", "regex"), ("ebnf", "ebnf"), ("json_schema", "json_schema"),
                        ("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                        ("guided_grammar", "ebnf")):
        value = getattr(req, attr, None)
        if value is not None:
            found.append(Constraint(field, value, attr))
    return found


def one_constraint(found: list[Constraint]) -> Constraint | None:
    if len(found) > 1:
        raise APIError(400, f"'{found[0].param}' and '{found[1].param}' cannot be combined: a request takes at most "
                       "one structured-output constraint.", param=found[1].param)
    return found[0] if found else None


def sampling_fields(c: Constraint | None) -> dict[str, Any]:
    return {} if c is None else {c.field: c.value}
