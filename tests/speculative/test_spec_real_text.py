"""Speculation on the embedded model's real text: a RAG answer quoting its passage drafts and keeps
tokens; a JSON-schema request beside it stays valid; stop strings cut where speculation off cuts;
all token for token equal to speculation off."""
from __future__ import annotations

import json

import jsonschema
import pytest

from engine_fixtures import make_engine
from grammar_cases import SCHEMAS, json_prompt
from radixserve import SamplingParams
from radixserve.bench.spec import PASSAGE, RAG_QUESTIONS

PERSON = SCHEMAS["flat_person"]


@pytest.fixture(scope="module")
def pair():
    off = make_engine(max_total_tokens=8192)
    on = make_engine(max_total_tokens=8192, speculative_config={"method": "radix", "num_speculative_tokens": 4})
    yield off, on
    off.shutdown()
    on.shutdown()


def _rag(e, q):
    return e.apply_chat_template([{"role": "system", "content": "Answer from the passage, quoting it.\n\n" + PASSAGE},
                                  {"role": "user", "content": q}])


def test_rag_with_a_grammar_request_beside_it(pair):
    off, on = pair
    prompts = [_rag(off, q) for q in RAG_QUESTIONS[:3]] + [off.apply_chat_template(json_prompt(PERSON))]
    params = [SamplingParams(max_new_tokens=48, temperature=0)] * 3 + \
        [SamplingParams(max_new_tokens=64, temperature=0, json_schema=PERSON)]
    want = off.generate(input_ids=prompts, sampling_params=params)
    s0 = on.stats()
    got = on.generate(input_ids=prompts, sampling_params=params)
    assert [(o.token_ids, o.finish_reason) for o in got] == [(o.token_ids, o.finish_reason) for o in want]
    jsonschema.validate(json.loads(got[3].text), PERSON)
    s1 = on.stats()
    assert s1["spec_accepted_tokens"] > s0["spec_accepted_tokens"]  # the answers quote the passage
    on.check_integrity()


def test_stop_strings_inside_drafts(pair):
    off, on = pair
    prompt = _rag(off, RAG_QUESTIONS[0])
    free = off.generate(input_ids=[prompt], sampling_params=SamplingParams(max_new_tokens=48, temperature=0))[0]
    words = free.text.split()
    stop = words[len(words) // 2]  # a word the answer reaches mid-way
    params = SamplingParams(max_new_tokens=48, temperature=0, stop=[stop])
    want = off.generate(input_ids=[prompt], sampling_params=params)[0]
    assert want.finish_reason == "stop" and stop not in want.text
    for _ in range(2):  # the second time, the radix tree holds the answer and drafts all of it
        got = on.generate(input_ids=[prompt], sampling_params=params)[0]
        assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
