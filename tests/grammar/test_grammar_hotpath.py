"""The per-step grammar work of the scheduler, against plain per-request xgrammar calls: the batched
accept, the batch bitmask with unconstrained rows in it, the jump-forward length rule, and the
remembered checks and tokenisations."""
from __future__ import annotations

import json
import random
from concurrent.futures import Future

import pytest
import torch
import xgrammar as xgr

from radixserve.bench.grammar_schemas import LONG_KEYS, RECORDS, SCHEMAS
from radixserve.grammar import backend as backend_mod
from radixserve.grammar.backend import GrammarBackend
from radixserve.grammar.bitmask import batch_bitmask
from radixserve.grammar.errors import GrammarError
from radixserve.grammar.matcher import JUMP_FORWARD_MIN_TOKENS, RequestGrammar, accept_batch
from radixserve.grammar.spec import GrammarSpec
from radixserve.models.loader import embedded_model_path
from radixserve.models.tokenizer import load_tokenizer
from radixserve.sampling.bitmask import unpack_bitmask

EOS = 2  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def backend():
    tok = load_tokenizer(embedded_model_path())
    b = GrammarBackend(tok, len(tok), [EOS], threads=2, timeout_s=30.0)
    yield b
    b.shutdown()


def _spec(schema) -> GrammarSpec:
    return GrammarSpec("json_schema", "json_schema", json.dumps(schema))


def _grammar(backend, schema) -> RequestGrammar:
    spec = _spec(schema)
    fut: Future = backend.compile(spec)
    fut.result(timeout=60)
    g = RequestGrammar(spec, fut)
    assert g.ready
    return g


def _single_mask(matcher, vocab: int) -> torch.Tensor:
    mask = xgr.allocate_token_bitmask(1, vocab)
    matcher.fill_next_token_bitmask(mask)
    return mask[0]


def test_batched_accept_and_bitmask_match_one_matcher_at_a_time(backend):
    """Random walks through several grammars at once: every batched step equals what separate
    matchers (fed the same tokens one call each) admit and accept, rejects included."""
    vocab = backend.vocab_size
    schemas = [RECORDS, LONG_KEYS, SCHEMAS["nested_address"], SCHEMAS["array_of_ints"], SCHEMAS["enum_mixed"]]
    grammars = [_grammar(backend, s) for s in schemas]
    compiler = backend.compiler(json_only=True)
    oracles = [xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(s), any_whitespace=False)) for s in schemas]
    rng = random.Random(0)
    rejects = 0
    for step in range(24):
        live = [i for i, g in enumerate(grammars) if not g.finished]
        if not live:
            break
        # unconstrained rows between the constrained ones: all ones, whatever the buffer held before
        layout = [None] + [grammars[i] for i in live] + [None]
        mask = batch_bitmask(layout, backend, torch.device("cpu"))
        assert mask.shape == (len(layout), (vocab + 31) // 32)
        assert bool((mask[0] == -1).all()) and bool((mask[-1] == -1).all())
        tokens = []
        for row, i in enumerate(live, start=1):
            assert torch.equal(mask[row], _single_mask(oracles[i], vocab)), (schemas[i], step)
            allowed = unpack_bitmask(mask[row:row + 1], vocab)[0].nonzero().flatten().tolist()
            if step % 7 == 3 and i == live[0]:  # now and then a token the grammar refuses
                refused = [t for t in range(3, vocab) if t not in set(allowed)]
                tokens.append(rng.choice(refused))
            else:
                tokens.append(rng.choice(allowed))
        before = [grammars[i].accepted for i in live]
        ok = accept_batch([grammars[i] for i in live], tokens, backend.batch_matcher())
        expected = [oracles[i].accept_token(t) for i, t in zip(live, tokens)]
        assert ok == expected
        rejects += ok.count(False)
        assert [grammars[i].accepted for i in live] == [b + k for b, k in zip(before, ok)]
    assert rejects > 0
    assert accept_batch([], [], backend.batch_matcher()) == []


def test_jump_forward_only_for_long_forced_text(backend):
    g = _grammar(backend, LONG_KEYS)
    key = json.dumps(list(LONG_KEYS["properties"])[0])  # the first key, forced after "{"
    forced_text = g.matcher.find_jump_forward_string()
    assert forced_text.startswith("{" + key)
    tokens = backend.encode(forced_text)
    assert len(tokens) >= JUMP_FORWARD_MIN_TOKENS
    # a budget below the rule's length: nothing is jumped and the matcher is untouched
    assert g.jump_forward(backend.encode_forced, JUMP_FORWARD_MIN_TOKENS - 1) == []
    assert g.accepted == 0 and g.matcher.find_jump_forward_string() == forced_text
    # a rule longer than the forced text: nothing either
    assert g.jump_forward(backend.encode_forced, 1000, min_tokens=len(tokens) + 1) == []
    assert g.accepted == 0
    jumped = g.jump_forward(backend.encode_forced, 1000)
    assert jumped == tokens and g.accepted == len(tokens)
    assert backend.tokenizer.decode(jumped) == forced_text
    # short forced text (a separator inside an object of short keys) is left to the decoder
    short = _grammar(backend, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    assert 0 < len(backend.encode(short.matcher.find_jump_forward_string())) < JUMP_FORWARD_MIN_TOKENS
    assert short.jump_forward(backend.encode_forced, 1000) == [] and short.accepted == 0


def test_forced_text_tokenisation_is_remembered(backend, monkeypatch):
    calls = []
    real = backend.encode
    monkeypatch.setattr(backend, "encode", lambda text: calls.append(text) or real(text))
    text = '", "preferred_contact_channel_for_notifications": "'
    first = backend.encode_forced(text)
    assert list(first) == real(text) and calls == [text]
    assert backend.encode_forced(text) == first and calls == [text]
    monkeypatch.setattr(backend_mod, "FORCED_TEXT_CACHE_SIZE", 2)
    for t in ("a", "b", "c"):
        backend.encode_forced(t)
    assert text not in backend._forced and len(backend._forced) <= 2


def test_schema_checks_are_remembered_but_errors_are_not(backend, monkeypatch):
    calls = []
    real = backend_mod._check_json_schema
    monkeypatch.setattr(backend_mod, "_check_json_schema", lambda s: calls.append(1) or real(s))
    spec = _spec({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}})
    backend.validate(spec)
    backend.validate(spec)
    assert len(calls) == 1
    bad = _spec({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 0.5}}})
    for _ in range(2):
        with pytest.raises(GrammarError, match="multipleOf"):
            backend.validate(bad)
    assert len(calls) == 3
    # the same text under another kind is checked afresh
    with pytest.raises(GrammarError):
        backend.validate(GrammarSpec("regex", "regex", "(unclosed"))
