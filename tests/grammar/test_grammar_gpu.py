"""Structured output on CUDA (CUDA graphs, overlap, the Triton bitmask kernel): random SmolLM2-shape
weights, so the text is noise, but every constrained output must be in its grammar token by token
(checked by a fresh matcher), end by itself, and validate. The tokenizer is the embedded model's,
or the one in $RADIXSERVE_TEST_TOKENIZER (a machine without the embedded package)."""
from __future__ import annotations

import json
import os
import re

import jsonschema
import pytest
import torch

from grammar_cases import CHOICES, REGEXES, SCHEMAS
from radixserve import Engine, SamplingParams

pytestmark = pytest.mark.gpu

# Bounded schemas a random model still finishes (no free number fractions, no free-length strings).
NAMES = ["flat_person", "nested_address", "enum_color", "const_version", "array_of_ints", "boolean_and_null",
         "string_pattern", "format_uuid", "long_fixed_keys", "integer_range", "ref_definitions_list",
         "tuple_prefix_items"]


@pytest.fixture(scope="module")
def engine():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tokenizer = os.environ.get("RADIXSERVE_TEST_TOKENIZER")
    if tokenizer is None:
        from radixserve.models.loader import embedded_model_path
        try:
            tokenizer = embedded_model_path()
        except ValueError as exc:
            pytest.skip(str(exc))
    e = Engine("dummy:smollm2-135m", device="cuda", tokenizer=tokenizer, max_total_tokens=65536)
    yield e
    e.shutdown()


def test_constrained_outputs_on_cuda_stay_in_their_grammar(engine):
    import xgrammar as xgr

    prompt = engine.tokenizer.encode("Answer in JSON:")
    cases = [(SamplingParams(max_new_tokens=192, temperature=0, json_schema=SCHEMAS[n]), ("json", SCHEMAS[n]))
             for n in NAMES]
    cases += [(SamplingParams(max_new_tokens=64, temperature=1.0, seed=i, json_schema=SCHEMAS[n]), ("json", SCHEMAS[n]))
              for i, n in enumerate(NAMES)]
    cases += [(SamplingParams(max_new_tokens=32, temperature=0, regex=rx), ("regex", rx)) for rx in REGEXES.values()]
    cases += [(SamplingParams(max_new_tokens=32, temperature=1.0, seed=3, choice=CHOICES["quoted"]),
               ("choice", CHOICES["quoted"]))]
    free = [SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)] * 8
    params = [c[0] for c in cases] + free
    outs = engine.generate(input_ids=[prompt] * len(params), sampling_params=params)
    compiler = engine.grammar.compiler()
    json_compiler = engine.grammar.compiler(json_only=True)
    stopped = 0
    for (p, (kind, arg)), o in zip(cases, outs):
        if kind == "json":
            compiled = json_compiler.compile_json_schema(json.dumps(arg), any_whitespace=False)
        elif kind == "regex":
            compiled = compiler.compile_regex(arg)
        else:
            from radixserve.grammar.spec import choice_ebnf
            compiled = compiler.compile_grammar(choice_ebnf(arg))
        m = xgr.GrammarMatcher(compiled)
        assert all(m.accept_token(t) for t in o.token_ids), (kind, o.text)
        if o.finish_reason == "stop":
            stopped += 1
            if kind == "json":
                jsonschema.validate(json.loads(o.text), arg)
            elif kind == "regex":
                assert re.fullmatch(arg, o.text)
            else:
                assert o.text in arg
    # greedy over random weights may pick endless digits in one or two; nearly all must end by themselves
    assert stopped >= len(cases) - 3, [o.finish_reason for o in outs]
    assert all(o.finish_reason == "length" and len(o.token_ids) == 24 for o in outs[len(cases):])
    s = engine.stats()
    assert s["running"] == 0 and s["kv_private_tokens"] == 0 and s["grammar_mask_rows"] > 0
