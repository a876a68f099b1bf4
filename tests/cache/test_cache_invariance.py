"""A request's greedy tokens do not depend on how its KV was produced: cold, from the tree,
at page size 1 or 16, batched with others, chunked, or after retraction."""
from __future__ import annotations

import pytest

from engine_fixtures import QUESTIONS, SYSTEM, chat_ids, make_engine
from radixserve import SamplingParams

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


def _run(engine, ids_list):
    return engine.generate(input_ids=ids_list, sampling_params=GREEDY)


@pytest.fixture(scope="module")
def reference():
    """Cold run of every question, one engine, one request at a time."""
    e = make_engine(disable_radix_cache=True)
    try:
        ids = [chat_ids(e, q) for q in QUESTIONS[:4]]
        return ids, [_run(e, [x])[0].token_ids for x in ids]
    finally:
        e.shutdown()


@pytest.mark.parametrize("page_size", [1, 16])
def test_cold_then_cached_then_batched(reference, page_size):
    ids, expected = reference
    e = make_engine(page_size=page_size)
    try:
        cold = _run(e, [ids[0]])[0]
        assert cold.cached_tokens == 0 and cold.token_ids == expected[0]
        again = _run(e, [ids[0]])[0]  # whole prompt (but its last token) from the tree
        assert again.cached_tokens >= (len(ids[0]) - 1) // page_size * page_size
        assert again.token_ids == expected[0]
        batched = _run(e, ids)  # shares the system prompt with the first, batched together
        assert [o.token_ids for o in batched] == expected
        assert all(o.cached_tokens >= len(e.tokenizer.encode(SYSTEM)) // page_size * page_size - page_size
                   for o in batched[1:])
        e.check_integrity()
    finally:
        e.shutdown()


def test_chunked_prefill(reference):
    ids, expected = reference
    e = make_engine(chunked_prefill_size=16, max_prefill_tokens=40)
    try:
        assert [o.token_ids for o in _run(e, ids)] == expected
        e.check_integrity()
    finally:
        e.shutdown()


def test_after_retraction(reference):
    ids, expected = reference
    # Room for the prompts but not for every request's decode: the scheduler must retract.
    e = make_engine(max_total_tokens=max(map(len, ids)) + 40, max_prefill_tokens=4096)
    try:
        outs = _run(e, ids)
        assert [o.token_ids for o in outs] == expected
        assert e.stats()["retractions"] > 0
        e.check_integrity()
    finally:
        e.shutdown()


def test_partially_cached_prefix(reference):
    """A prompt whose prefix was cached by a different, longer request."""
    ids, expected = reference
    e = make_engine()
    try:
        _run(e, [ids[1] + ids[1][-5:]])  # caches all of ids[1]'s tokens and more
        out = _run(e, [ids[1]])[0]
        assert out.cached_tokens == len(ids[1]) - 1
        assert out.token_ids == expected[1]
    finally:
        e.shutdown()
