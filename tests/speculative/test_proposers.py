"""Draft proposers and greedy verification against brute-force models of what they promise."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree
from radixserve.config import EngineConfig, SpeculativeConfig
from radixserve.speculative.proposers import Proposer, prompt_lookup
from radixserve.speculative.verify import SpecState, accept_greedy


def brute_lookup(tokens, k, n_min, n_max):
    """Every n from long to short, every earlier start from late to early: the first hit's next k tokens."""
    for n in range(n_max, n_min - 1, -1):
        if n >= len(tokens):
            continue
        tail = tokens[len(tokens) - n:]
        hits = [s for s in range(len(tokens) - n) if tokens[s:s + n] == tail]
        if hits:
            s = max(hits)
            return tokens[s + n:s + n + k]
    return []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 6), st.integers(1, 3), st.integers(0, 3))
def test_prompt_lookup_matches_brute_force(tokens, k, n_min, extra):
    assert prompt_lookup(tokens, k, n_min, n_min + extra) == brute_lookup(tokens, k, n_min, n_min + extra)


def test_prompt_lookup_quotes_the_passage():
    passage = [5, 6, 7, 8, 9, 10, 11]
    assert prompt_lookup([1] + passage + [2, 3, 5, 6, 7], 3, 2, 4) == [8, 9, 10]
    assert prompt_lookup([1, 2, 3], 3, 2, 4) == []


@pytest.mark.parametrize("page_size", [1, 4])
def test_tree_continuation(page_size):
    alloc = PageAllocator(256, page_size)
    tree = RadixTree(alloc)
    rng = random.Random(page_size)
    a = [rng.randrange(1000) for _ in range(24)]
    b = a[:8] + [rng.randrange(1000, 2000) for _ in range(16)]
    for seq in (a, b):  # b is used last: its branch wins where the two fork
        tree.insert(seq, alloc.alloc(len(seq) // page_size))
    before = (tree.query_tokens, tree.hit_tokens, tree.total_size)
    n_a, n_b = len(a) - len(a) % page_size, len(b) - len(b) % page_size
    assert tree.continuation(a[:5], 6) == a[5:8] + b[8:11]  # inside a node, then the most recent branch
    assert tree.continuation(a[:9], 6) == a[9:15]
    assert tree.continuation(a[:8], 5) == b[8:13]  # at the fork: the most recent branch
    assert tree.continuation(a[:10], 100) == a[10:n_a]  # to the end of what is cached
    assert tree.continuation(b[:12], 3) == b[12:15]
    assert tree.continuation(a[:3] + [5000], 4) == []  # not all cached
    assert tree.continuation(a[:n_a], 4) == []  # nothing after it
    assert tree.continuation(a[:5], 4, namespace="other") == []
    assert (tree.query_tokens, tree.hit_tokens, tree.total_size) == before  # read-only, no hit counted
    tree.check_integrity()
    assert n_b == len(b)


def test_radix_proposer_falls_back_to_prompt_lookup():
    alloc = PageAllocator(64, 1)
    tree = RadixTree(alloc)
    tree.insert([1, 2, 3, 4, 5, 6], alloc.alloc(6))
    radix = Proposer(SpeculativeConfig(method="radix"), tree)
    ngram = Proposer(SpeculativeConfig(method="ngram"), tree)
    assert radix.propose([1, 2, 3], 2) == [4, 5]
    assert ngram.propose([1, 2, 3], 2) == []
    assert radix.propose([7, 8, 9, 7, 8], 2) == [9, 7] == ngram.propose([7, 8, 9, 7, 8], 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=6), st.data())
def test_accept_greedy_is_what_plain_greedy_steps_append(draft, data):
    targets = data.draw(st.lists(st.integers(0, 2), min_size=len(draft) + 1, max_size=len(draft) + 1))
    # plain greedy: step j appends targets[j]; the next step's target is only valid if the draft
    # fed so far equals what was appended
    plain = []
    for j, t in enumerate(targets):
        plain.append(t)
        if j < len(draft) and draft[j] != t:
            break
    assert accept_greedy(draft, targets) == plain


def test_draft_length_adapts():
    s = SpecState(length=4)
    s.draft, s.kept = (1, 2, 3, 4), 4
    s.settle(limit=6)
    assert s.length == 5
    s.draft, s.kept = (1,) * 5, 0
    s.settle(limit=6)
    assert s.length == 2
    s.draft, s.kept = (1, 2), 0
    s.settle(limit=6)
    s.draft, s.kept = (1,), 0
    s.settle(limit=6)
    assert (s.length, s.pause) == (1, 1)
    s.draft, s.kept = (1,), 0
    s.settle(limit=6)
    assert s.pause == 2 and (s.drafted, s.accepted) == (13, 4)


def test_config_validation_names_the_field():
    assert EngineConfig(speculative_config={"method": "radix"}).speculative_config == SpeculativeConfig("radix")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(num_speculative_tokens=0)
    with pytest.raises(ValueError, match="unknown keys.*'k'"):
        EngineConfig(speculative_config={"k": 3})
    with pytest.raises(ValueError, match="method"):
        EngineConfig(speculative_config={"method": "eagle"})
