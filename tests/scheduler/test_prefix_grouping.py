"""Cascade grouping read off the radix tree equals a brute force over the requests' slots."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree
from radixserve.scheduler.prefix_grouping import Group, GroupingOptions, group_by_prefix


def _cache(tree: RadixTree, alloc: PageAllocator, tokens: list[int], namespace) -> SimpleNamespace:
    """A running request after its prefill, as KVManager leaves it: its computed tokens in the
    tree, the path locked, `node` / `tree_len` / the tree's slots recorded."""
    ps = tree.page_size
    hit = tree.match_prefix(tokens, namespace)
    tree.lock(hit.node)
    n = len(tokens) // ps * ps
    own = alloc.alloc(max(0, (n - hit.slots.numel()) // ps))
    slots = torch.cat([hit.slots, own]) if own is not None and own.numel() else hit.slots.clone()
    m = tree.insert(tokens[:n], slots[:n], namespace)
    tree.lock(m.node)
    tree.unlock(hit.node)
    return SimpleNamespace(node=m.node, tree_len=m.slots.numel(), slots=m.slots.tolist())


def brute_force(reqs, options: GroupingOptions) -> set[tuple[int, tuple[int, ...]]]:
    """Each row joins the prefix length p (>= min length, held by >= min_group_size rows) with the
    largest (rows holding it - 1) * p, the longest on ties; rows choosing the same prefix form a
    group; groups left too small are dropped."""
    k, chosen = options.min_group_size, {}
    for i, r in enumerate(reqs):
        best, best_key = None, (0, 0)
        for p in range(max(1, options.min_prefix_len), r.tree_len + 1):
            sharing = [j for j, o in enumerate(reqs) if o.tree_len >= p and o.slots[:p] == r.slots[:p]]
            if len(sharing) >= k and ((len(sharing) - 1) * p, p) >= best_key:
                best, best_key = p, ((len(sharing) - 1) * p, p)
        if best is not None:
            chosen.setdefault((best, tuple(r.slots[:best])), []).append(i)
    return {(p, tuple(rows)) for (p, _), rows in chosen.items() if len(rows) >= k}


def _as_set(groups: list[Group]) -> set[tuple[int, tuple[int, ...]]]:
    return {(g.prefix_len, tuple(g.rows)) for g in groups}


@st.composite
def workloads(draw):
    page_size = draw(st.sampled_from([1, 4]))
    trunks = draw(st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=40), min_size=1, max_size=4))
    reqs = []
    for _ in range(draw(st.integers(1, 12))):
        trunk = draw(st.sampled_from(trunks))
        cut = draw(st.integers(0, len(trunk)))
        own = draw(st.lists(st.integers(0, 5), min_size=1, max_size=12))
        ns = draw(st.sampled_from([None, None, "salt"]))
        reqs.append((trunk[:cut] + own, ns))
    options = GroupingOptions(draw(st.integers(0, 24)), draw(st.integers(2, 4)))
    return page_size, reqs, options


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_groups_equal_brute_force(case):
    page_size, specs, options = case
    alloc = PageAllocator(512 // page_size, page_size)
    tree = RadixTree(alloc)
    reqs = [_cache(tree, alloc, tokens, ns) for tokens, ns in specs]
    tree.check_integrity()
    groups = group_by_prefix(reqs, options)
    assert _as_set(groups) == brute_force(reqs, options)
    seen = [r for g in groups for r in g.rows]
    assert len(seen) == len(set(seen)), "a row is in two groups"
    for g in groups:
        lead = reqs[g.rows[0]].slots[:g.prefix_len]
        assert all(reqs[r].slots[:g.prefix_len] == lead for r in g.rows)


def test_disabled_cache_and_empty_paths_make_no_groups():
    alloc = PageAllocator(64, 1)
    tree = RadixTree(alloc, disable=True)
    reqs = [_cache(tree, alloc, [1, 2, 3, 4, 5], None) for _ in range(3)]
    assert group_by_prefix(reqs, GroupingOptions(0, 2)) == []


def test_thresholds():
    alloc = PageAllocator(256, 1)
    tree = RadixTree(alloc)
    system = list(range(100, 140))  # 40 shared tokens
    reqs = [_cache(tree, alloc, system + [i, i + 1], None) for i in range(3)]
    assert group_by_prefix(reqs, GroupingOptions(32, 2)) == [Group(40, [0, 1, 2])]
    assert group_by_prefix(reqs, GroupingOptions(41, 2)) == []  # prefix too short
    assert group_by_prefix(reqs, GroupingOptions(32, 4)) == []  # group too small
    assert group_by_prefix(reqs[:1], GroupingOptions(0, 2)) == []


@pytest.mark.parametrize("page_size", [1, 4])
def test_a_long_deeper_prefix_splits_off_a_short_one_does_not(page_size):
    """Two rows sharing a long conversation under a 64-token system prompt group on the
    conversation, the rest on the system prompt; a few shared tokens more (two samples of one
    question) do not split the system prompt's group."""
    alloc = PageAllocator(2048 // page_size, page_size)
    tree = RadixTree(alloc)
    system = list(range(1000, 1064))
    opts = GroupingOptions(32, 2)
    turn = system + list(range(2000, 2400))
    reqs = [_cache(tree, alloc, turn + [1, 2, 3, 4], None), _cache(tree, alloc, system + [5, 6, 7, 8], None),
            _cache(tree, alloc, turn + [9, 10, 11, 12], None), _cache(tree, alloc, system + [13, 14, 15, 16], None)]
    assert _as_set(group_by_prefix(reqs, opts)) == {(464, (0, 2)), (64, (1, 3))} == brute_force(reqs, opts)
    question = system + list(range(3000, 3012))  # 76 tokens: each pair would save only 76
    reqs = [_cache(tree, alloc, question + [i, i + 1, i + 2, i + 3], None) for i in (1, 50)]
    reqs += [_cache(tree, alloc, system + [i, i + 1, i + 2, i + 3], None) for i in (100, 150)]
    assert _as_set(group_by_prefix(reqs, opts)) == {(64, (0, 1, 2, 3))} == brute_force(reqs, opts)
