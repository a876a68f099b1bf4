"""The one validation (radixserve/engine/prepare.py) and FieldError: no model needed. A stub grammar
backend stands in for xgrammar; the expected limits are computed here by hand."""
from __future__ import annotations

import dataclasses

import pytest

from radixserve.engine.errors import ContextLengthError, VocabularyError
from radixserve.engine.prepare import PreparedRequest, RequestLimits, per_prompt, prepare, prompts_to_ids
from radixserve.errors import FieldError
from radixserve.grammar.errors import GrammarError
from radixserve.grammar.spec import GrammarSpec
from radixserve.sampling_params import SamplingParams
from radixserve.server.openai.params import ParamNames, make_sampling
from radixserve.server.errors import APIError
from radixserve.server.openai.structured import Constraint

# context 64, pool of 200 slots in pages of 16: a request holds at most min(64, 200 - 16) = 64 tokens
LIMITS = RequestLimits(vocab_size=100, max_context_len=64, kv_capacity=200, page_size=16)
SMALL_POOL = RequestLimits(vocab_size=100, max_context_len=64, kv_capacity=40, page_size=16)  # 24 tokens


class StubGrammar:
    def __init__(self, bad: str | None = None) -> None:
        self.validated: list[GrammarSpec] = []
        self.bad = bad

    def validate(self, spec: GrammarSpec) -> None:
        self.validated.append(spec)
        if self.bad is not None and self.bad in spec.source:
            raise GrammarError(spec.field, f"{spec.field} is not valid: stub")


@pytest.mark.parametrize("kw, field", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, min_new_tokens=3), "min_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(regex=""), "regex"),
    (dict(ebnf=""), "ebnf"),
    (dict(regex="a+", choice=["x"]), "regex"),
    (dict(logit_bias={3: 101}), "logit_bias"),
    (dict(choice=["a"], ignore_eos=True), "ignore_eos"),
])
def test_sampling_params_errors_carry_their_field(kw, field):
    with pytest.raises(FieldError) as err:
        SamplingParams(**kw)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)  # the Python API's callers still catch ValueError


def test_the_http_layer_names_its_own_parameter_from_the_field():
    names = ParamNames({"max_new_tokens": "max_tokens"}, constraint=Constraint("regex", "", "guided_regex"))
    with pytest.raises(APIError) as err:
        make_sampling({"max_new_tokens": -1}, names)
    assert (err.value.status, err.value.param) == (400, "max_tokens")
    with pytest.raises(APIError) as err:
        make_sampling({"regex": ""}, names)
    assert err.value.param == "guided_regex"
    with pytest.raises(APIError) as err:
        make_sampling({"top_p": 2.0}, ParamNames(prefix="sampling_params."))
    assert err.value.param == "sampling_params.top_p"


def test_a_request_within_the_limits_is_prepared_as_given():
    sp = SamplingParams(max_new_tokens=10, temperature=0)
    req = prepare([1, 2, 3], sp, LIMITS, StubGrammar())
    assert req == PreparedRequest((1, 2, 3), sp, None)
    assert req.params is sp  # not rebuilt
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.params = SamplingParams()  # type: ignore[misc]


@pytest.mark.parametrize("ids, field", [([], "input_ids"), ([1, 100], "input_ids"), ([1, True], "input_ids"),
                                        (list(range(64)), "input_ids")])
def test_prompt_errors_name_the_prompt(ids, field):
    with pytest.raises(FieldError) as err:
        prepare(ids, SamplingParams(), LIMITS, StubGrammar())
    assert err.value.field == field


def test_a_prompt_the_pool_cannot_hold_is_refused():
    with pytest.raises(FieldError, match="raise max_total_tokens") as err:
        prepare(list(range(24)), SamplingParams(), SMALL_POOL, StubGrammar())  # needs 24 + 1 + 16 > 40 slots
    assert err.value.field == "input_ids"


def test_logit_bias_outside_the_vocabulary_carries_the_token():
    with pytest.raises(VocabularyError) as err:
        prepare([1], SamplingParams(logit_bias={7: 1.0, 150: 2.0, 120: 1.0}), LIMITS, StubGrammar())
    assert (err.value.field, err.value.token_id, err.value.vocab_size) == ("logit_bias", 120, 100)


def test_over_the_context_refuse_raises_with_the_numbers():
    sp = SamplingParams(max_new_tokens=60)
    with pytest.raises(ContextLengthError) as err:
        prepare(list(range(10)), sp, LIMITS, StubGrammar(), "refuse")
    e = err.value
    assert (e.field, e.prompt_tokens, e.max_new_tokens, e.max_context_len) == ("max_new_tokens", 10, 60, 64)
    ok = prepare(list(range(10)), SamplingParams(max_new_tokens=54), LIMITS, StubGrammar(), "refuse")
    assert ok.params.max_new_tokens == 54  # exactly the context: served as asked


def test_over_the_context_clamp_lowers_max_new_tokens_once():
    sp = SamplingParams(max_new_tokens=60, min_new_tokens=58)
    req = prepare(list(range(10)), sp, LIMITS, StubGrammar())
    assert (req.params.max_new_tokens, req.params.min_new_tokens) == (54, 54)
    assert (sp.max_new_tokens, sp.min_new_tokens) == (60, 58)  # the caller's params are left alone
    again = prepare(list(req.input_ids), req.params, LIMITS, StubGrammar())
    assert again.params is req.params  # already within: nothing more to apply


def test_over_the_pool_both_rules_lower_max_new_tokens():
    for rule in ("clamp", "refuse"):
        req = prepare(list(range(10)), SamplingParams(max_new_tokens=30), SMALL_POOL, StubGrammar(), rule)
        assert req.params.max_new_tokens == 40 - 16 - 10


def test_the_grammar_spec_is_built_and_checked_once():
    grammar = StubGrammar()
    req = prepare([1, 2], SamplingParams(json_schema={"type": "object"}), LIMITS, grammar)
    assert req.grammar == GrammarSpec("json_schema", "json_schema", '{"type": "object"}')
    assert grammar.validated == [req.grammar]
    with pytest.raises(GrammarError) as err:
        prepare([1, 2], SamplingParams(regex="x+"), LIMITS, StubGrammar(bad="x"))
    assert err.value.field == "regex"
    assert isinstance(err.value, FieldError)


def test_a_bad_grammar_is_reported_before_the_context_rule():
    with pytest.raises(GrammarError):
        prepare([1, 2], SamplingParams(regex="x+", max_new_tokens=100), LIMITS, StubGrammar(bad="x"), "refuse")


def test_per_prompt_and_prompts_to_ids():
    sp = SamplingParams(n=2)
    assert per_prompt(sp, 3) == [sp, sp, sp]
    assert [p.max_new_tokens for p in per_prompt(None, 2)] == [128, 128]
    with pytest.raises(ValueError, match="got 1 sampling_params for 2 prompts"):
        per_prompt([sp], 2)

    class Tok:
        def encode(self, text):
            return [len(text)]
    assert prompts_to_ids(Tok(), ["ab", "c"], None) == [[2], [1]]
    assert prompts_to_ids(Tok(), None, [5, 6]) == [[5, 6]]
    assert prompts_to_ids(Tok(), None, [[5], [6, 7]]) == [[5], [6, 7]]
    with pytest.raises(ValueError, match="exactly one"):
        prompts_to_ids(Tok(), "a", [1])
