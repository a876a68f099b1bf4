"""Structured gen in radixserve.lang on the embedded SmolLM2 (CPU): regex, json_schema (dict and
pydantic model), ebnf and choices outputs validate (re.fullmatch, the jsonschema package, a
recogniser of the test grammar), and the state keeps the constrained tokens exactly."""
from __future__ import annotations

import json
import re

import jsonschema
import pydantic
import pytest

import radixserve.lang as sgl
from radixserve import Engine
from server_fixtures import assert_no_leak

PHONE = r"\(\d{3}\) \d{3}-\d{4}"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 30},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "languages": {"type": "array", "items": {"enum": ["en", "fr", "de", "pt"]},
                                 "minItems": 1, "maxItems": 3}},
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
ANSWER_EBNF = 'root ::= ("yes" | "no") ", because it is " ("clear" | "bright" | "blue" | "daytime") "."'


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population_millions: int = pydantic.Field(ge=0, le=100)


@pytest.fixture(scope="module")
def engine():
    eng = Engine(device="cpu", dtype="float32", max_total_tokens=16384, check_integrity=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def local(engine):
    be = sgl.LocalBackend(engine)
    yield be
    be.shutdown()


@sgl.function
def structured(s, seed):
    s += sgl.system("You answer in the format asked for.")
    s += sgl.user("Give a US phone number.")
    s += sgl.assistant(sgl.gen("phone", max_tokens=20, regex=PHONE, seed=seed))
    s += sgl.user("Describe a person who speaks some languages, as JSON.")
    s += sgl.assistant(sgl.gen("person", max_tokens=150, json_schema=PERSON, seed=seed + 1))
    s += sgl.user("Describe a large city as JSON.")
    s += sgl.assistant(sgl.gen("city", max_tokens=150, json_schema=City, seed=seed + 2))
    s += sgl.user("Is the sky blue? Answer yes or no and say why.")
    s += sgl.assistant(sgl.gen("why", max_tokens=40, ebnf=ANSWER_EBNF, seed=seed + 3))
    s += sgl.user("Pick a colour.")
    s += sgl.assistant(sgl.gen("colour", choices=["red", "green", "blue"], seed=seed + 4))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_structured_gens_validate(engine, local, temperature):
    runs = 1 if temperature == 0 else 3  # greedy programs would all be the same
    states = structured.run_batch([{"seed": 10 * i} for i in range(runs)], backend=local, temperature=temperature)
    for st in states:
        assert re.fullmatch(PHONE, st["phone"]), st["phone"]
        jsonschema.validate(json.loads(st["person"]), PERSON)
        City.model_validate_json(st["city"])
        assert re.fullmatch(r"(yes|no), because it is (clear|bright|blue|daytime)\.", st["why"]), st["why"]
        assert st["colour"] in ("red", "green", "blue")
        for name in ("phone", "person", "city", "why", "colour"):
            assert st.meta(name)["finish_reason"] == "stop", (name, st.meta(name))
        # later calls hit the earlier constrained outputs in the tree
        assert st.meta("colour")["cached_tokens"] > st.meta("city")["prompt_tokens"]
    assert_no_leak(engine)


def test_constrained_tokens_are_the_states_tokens(engine, local):
    @sgl.function
    def one(s):
        s += sgl.user("Give a US phone number.")
        s += sgl.assistant_begin()
        s += sgl.gen("phone", max_tokens=20, regex=PHONE)
    st = one.run(backend=local, temperature=0)
    m = st.meta("phone")
    prompt = st.token_ids()[:m["prompt_tokens"]]
    from radixserve import SamplingParams
    out = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(max_new_tokens=20, temperature=0,
                                                                             regex=PHONE))[0]
    assert out.text == st["phone"]
    assert st.token_ids() == prompt + out.token_ids[:-1]  # the model's tokens, its EOS dropped
    assert out.token_ids[-1] in engine.eos_ids


def test_bad_structured_arguments(local):
    with pytest.raises(ValueError, match="at most one"):
        sgl.gen("x", regex="a+", ebnf="root ::= 'a'")
    with pytest.raises(ValueError, match="does not compile"):
        sgl.gen("x", regex="(unclosed")

    @sgl.function
    def bad_schema(s):
        s += "Data:" + sgl.gen("x", json_schema={"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(sgl.ProgramError, match=r"gen\('x'\) in bad_schema .*json_schema"):
        bad_schema.run(backend=local)
