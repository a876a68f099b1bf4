"""Structured output on the embedded model (CPU): 33 JSON schemas, regexes, EBNF grammars and
choices, greedy and sampled (temperature 1, three seeds), all in one batch. Every output is checked
by an oracle independent of xgrammar (jsonschema with format checks, re.fullmatch, a hand-written
recogniser, list membership) and ends by itself ("stop", on EOS), not at max_new_tokens."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from engine_fixtures import make_engine
from grammar_cases import (ANSWER_RE, ANSWER_TAG, ARITH_EBNF, CHOICES, KV_EBNF, KV_RE, REGEXES, SCHEMAS, arith_ok,
                           format_checker, json_prompt)
from radixserve import SamplingParams

SEEDS = (None, 11, 22, 33)  # None = greedy
MAX_NEW = 96


def _params(seed, **constraint) -> SamplingParams:
    return SamplingParams(max_new_tokens=MAX_NEW, temperature=0 if seed is None else 1.0, seed=seed, **constraint)


@pytest.fixture(scope="module")
def run():
    """(case, check, output) for every case and seed, generated in one call."""
    e = make_engine(jump_forward=True)  # the schema set exercises jump-forward too (off by default)
    try:
        cases = []  # (name, prompt ids, params, check)
        for name, schema in SCHEMAS.items():
            ids = e.apply_chat_template(json_prompt(schema))
            cases += [(f"json:{name}:{s}", ids, _params(s, json_schema=schema), ("json", schema)) for s in SEEDS]
        for name, rx in REGEXES.items():
            ids = e.apply_chat_template([{"role": "user", "content": f"Write a {name.replace('_', ' ')}."}])
            cases += [(f"regex:{name}:{s}", ids, _params(s, regex=rx), ("regex", rx)) for s in SEEDS]
        arith = e.apply_chat_template([{"role": "user", "content": "Write an arithmetic expression."}])
        kv = e.apply_chat_template([{"role": "user", "content": "Write a few settings as key=value."}])
        cases += [(f"ebnf:arith:{s}", arith, _params(s, ebnf=ARITH_EBNF), ("arith", None)) for s in SEEDS]
        cases += [(f"ebnf:kv:{s}", kv, _params(s, ebnf=KV_EBNF), ("kv", None)) for s in SEEDS]
        tag = e.apply_chat_template([{"role": "user", "content": "Answer inside <answer> tags with a JSON person."}])
        cases += [(f"structural_tag:answer:{s}", tag, _params(s, structural_tag=ANSWER_TAG), ("tag", None))
                  for s in SEEDS]
        for name, options in CHOICES.items():
            ids = e.apply_chat_template([{"role": "user", "content": f"Pick one {name}: {', '.join(options)}"}])
            cases += [(f"choice:{name}:{s}", ids, _params(s, choice=options), ("choice", options)) for s in SEEDS]
        outs = e.generate(input_ids=[c[1] for c in cases], sampling_params=[c[2] for c in cases])
        e.check_integrity()
        yield cases, outs, e.stats(), e
    finally:
        e.shutdown()


def _problem(check, text: str) -> str | None:
    kind, arg = check
    if kind == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON ({exc})"
        try:
            jsonschema.validate(value, arg, format_checker=format_checker())
        except jsonschema.ValidationError as exc:
            return f"invalid: {exc.message}"
        return None
    if kind == "regex":
        return None if re.fullmatch(arg, text) else "no full match"
    if kind == "arith":
        return None if arith_ok(text) else "not an expression of the grammar"
    if kind == "kv":
        return None if KV_RE.fullmatch(text) else "not a key=value list of the grammar"
    if kind == "tag":
        m = ANSWER_RE.fullmatch(text)
        return _problem(("json", SCHEMAS["flat_person"]), m.group(1)) if m else "no <answer> tag"
    return None if text in arg else "not one of the choices"


def test_case_counts():
    assert len(SCHEMAS) >= 30


def test_every_output_satisfies_its_constraint_and_stops(run):
    cases, outs, _, engine = run
    bad = []
    for (name, _, _, check), out in zip(cases, outs, strict=True):
        problem = _problem(check, out.text)
        if problem is None and out.finish_reason != "stop":
            problem = f"finish_reason {out.finish_reason}"
        if problem is not None:
            bad.append(f"{name}: {problem}: {out.text[:120]!r}")
    assert not bad, "\n".join(bad)


def test_outputs_end_on_eos_and_text_is_the_tokens(run):
    cases, outs, _, engine = run
    eos = engine.eos_ids
    for (name, *_), out in zip(cases, outs):
        assert out.token_ids[-1] in eos and out.matched_stop == out.token_ids[-1], name
        assert engine.tokenizer.decode(out.token_ids, skip_special_tokens=True) == out.text, name


def test_sampled_outputs_differ_from_greedy_somewhere(run):
    """The seeds really sample (under the mask) rather than collapsing to the greedy answer."""
    cases, outs, _, _ = run
    by_case: dict[str, set[str]] = {}
    for (name, *_), out in zip(cases, outs):
        by_case.setdefault(name.rsplit(":", 1)[0], set()).add(out.text)
    assert sum(len(texts) > 1 for texts in by_case.values()) >= len(by_case) // 2


def test_grammar_stats(run):
    cases, outs, stats, _ = run
    assert stats["grammar_compile_failed"] == 0 and stats["grammar_compiled"] == len(cases)
    assert stats["grammar_mask_rows"] > 0
    assert 0 < stats["jump_forward_tokens"] < sum(len(o.token_ids) for o in outs)
    assert stats["requests_finished"] == {"stop": len(cases)}
    assert stats["running"] == 0 and stats["kv_private_tokens"] == 0
