"""What a program appends to its state: constant text, `gen`, `select` and role markers.

Expressions are plain immutable values built by the functions at the bottom (`gen`, `select`,
`user`, ...). Every argument is checked when the expression is built, so a bad one raises
ValueError at the line that wrote it. `a + b` joins expressions (and strings) into one.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from radixserve.lang.choices import ChoicesMethod, resolve, token_length_normalized
from radixserve.sampling_params import SamplingParams

ROLES = ("system", "user", "assistant")
# gen() argument -> SamplingParams field
_SAMPLING_ARGS = {
    "max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens", "stop": "stop",
    "stop_token_ids": "stop_token_ids", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "min_p": "min_p", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos", "seed": "seed",
}
# the structured-output fields of SamplingParams (at most one per call)
_GRAMMAR_ARGS = {"regex": "regex", "json_schema": "json_schema", "ebnf": "ebnf", "choices": "choice",
                 "structural_tag": "structural_tag"}
# defaults for every call of a program, settable in run()/run_batch() (SamplingParams names)
DEFAULTABLE = ("max_new_tokens", "min_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k",
               "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "ignore_eos", "seed")


class CallSite(NamedTuple):
    """Where a gen/select was written: named in errors."""

    function: str
    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.function} ({os.path.basename(self.filename)}:{self.lineno})"


def _call_site(depth: int = 2) -> CallSite | None:
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return None
    return CallSite(frame.f_code.co_name, frame.f_code.co_filename, frame.f_lineno)


class Expr:
    """Base of all expressions; `+` concatenates."""

    def __add__(self, other: Any) -> "ExprList":
        return ExprList((self, as_expr(other)))

    def __radd__(self, other: Any) -> "ExprList":
        return ExprList((as_expr(other), self))


@dataclass(frozen=True, eq=False)
class Text(Expr):
    value: str


@dataclass(frozen=True, eq=False)
class Gen(Expr):
    name: str | None
    overrides: dict  # SamplingParams fields given in the call
    return_logprob: bool
    top_logprobs_num: int
    site: CallSite | None

    def describe(self) -> str:
        return f"gen({self.name!r})" if self.name is not None else "gen()"


@dataclass(frozen=True, eq=False)
class Select(Expr):
    name: str | None
    choices: tuple[str, ...]
    method: ChoicesMethod
    site: CallSite | None

    def describe(self) -> str:
        return f"select({self.name!r})" if self.name is not None else "select()"


@dataclass(frozen=True, eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True, eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(frozen=True, eq=False)
class ExprList(Expr):
    items: tuple[Expr, ...]

    def __post_init__(self) -> None:
        flat: list[Expr] = []
        for item in self.items:
            flat.extend(item.items if isinstance(item, ExprList) else (item,))
        object.__setattr__(self, "items", tuple(flat))


def as_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise ValueError(f"a program state takes strings and expressions (gen, select, roles), "
                     f"not {type(value).__name__}; convert it with str() first")


def walk(expr: Expr):
    """The leaves of an expression, in order."""
    if isinstance(expr, ExprList):
        for item in expr.items:
            yield from walk(item)
    else:
        yield expr


# ---- building expressions ------------------------------------------------------------------------
def _check_name(name: Any, what: str) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{what} name must be a non-empty string or None, got {name!r}")


def grammar_fields() -> set[str]:
    """The structured-output fields this build's SamplingParams has."""
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    return {field for field in _GRAMMAR_ARGS.values() if field in names}


def _grammar_overrides(args: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in args.items() if v is not None}
    if len(given) > 1:
        raise ValueError(f"gen takes at most one of regex, json_schema, ebnf, choices, structural_tag; "
                         f"got {' and '.join(sorted(given))}")
    if not given:
        return {}
    (arg, value), = given.items()
    field = _GRAMMAR_ARGS[arg]
    if field not in grammar_fields():
        raise ValueError(f"gen({arg}=...) needs structured output, which this build of radixserve lacks "
                         f"(SamplingParams has no '{field}' field)")
    if arg == "regex":
        if not isinstance(value, str):
            raise ValueError(f"regex must be a string, got {type(value).__name__}")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"regex {value!r} does not compile: {exc}") from exc
    elif arg == "json_schema":
        if hasattr(value, "model_json_schema"):  # a pydantic model class
            value = value.model_json_schema()
        if not isinstance(value, (dict, str)):
            raise ValueError(f"json_schema must be a dict, a JSON string or a pydantic model, got {type(value).__name__}")
    elif arg == "choices":
        value = _check_choices(value, "gen")
    return {field: value}


def _check_choices(choices: Any, what: str) -> list[str]:
    if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
        raise ValueError(f"{what} choices must be a non-empty list of strings, got {choices!r}")
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{what} choices must all be non-empty strings, got {list(choices)!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{what} choices must be distinct, got {list(choices)!r}")
    return list(choices)


def check_sampling(fields: dict[str, Any]) -> None:
    """Raise ValueError (SamplingParams' own message) if these fields are invalid together."""
    probe = dict(fields)
    probe.setdefault("max_new_tokens", max(128, probe.get("min_new_tokens") or 0))
    SamplingParams(**probe)


def gen(name: str | None = None, max_tokens: int | None = None, *, min_tokens: int | None = None,
        stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        min_p: float | None = None, frequency_penalty: float | None = None,
        presence_penalty: float | None = None, repetition_penalty: float | None = None,
        ignore_eos: bool | None = None, seed: int | None = None, return_logprob: bool = False,
        top_logprobs_num: int = 0, regex: str | None = None, json_schema: Any = None, ebnf: str | None = None,
        choices: list[str] | None = None, structural_tag: Any = None) -> Gen:
    """Generate from the state's tokens; the output is appended and stored under `name`.

    Unset arguments take the program's defaults (run(..., temperature=0, ...)), then
    SamplingParams' defaults. At most one of regex / json_schema / ebnf / choices /
    structural_tag constrains the output (structured output)."""
    _check_name(name, "gen")
    local = locals()
    overrides = {field: local[arg] for arg, field in _SAMPLING_ARGS.items() if local[arg] is not None}
    check_sampling(overrides)
    if not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be a bool, got {return_logprob!r}")
    if not isinstance(top_logprobs_num, int) or not 0 <= top_logprobs_num <= 20:
        raise ValueError(f"top_logprobs_num must be an integer in [0, 20], got {top_logprobs_num!r}")
    overrides.update(_grammar_overrides(dict(regex=regex, json_schema=json_schema, ebnf=ebnf, choices=choices,
                                             structural_tag=structural_tag)))
    return Gen(name, overrides, return_logprob, top_logprobs_num, _call_site())


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesMethod | str = token_length_normalized) -> Select:
    """Append the choice the model scores best after the state's tokens (no decoding: the
    choices' prompt log-probs, all choices in one batched request that shares the prefix)."""
    _check_name(name, "select")
    if choices is None:
        raise ValueError("select needs choices=[...]")
    checked = _check_choices(choices, "select")
    if temperature != 0:
        raise ValueError(f"select is deterministic (it scores every choice); temperature must be 0, got {temperature!r}")
    return Select(name, tuple(checked), resolve(choices_method), _call_site())


def _role(role: str, expr: Any = None) -> ExprList:
    if expr is None:
        return ExprList((RoleBegin(role), RoleEnd(role)))
    return ExprList((RoleBegin(role), as_expr(expr), RoleEnd(role)))


def system(expr: Any = None) -> ExprList:
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")
