"""RadixTree: unit tests of each operation and its edge cases."""
import time

import pytest
import torch

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree


def make(num_pages=64, page_size=1, disable=False):
    a = PageAllocator(num_pages, page_size)
    return a, RadixTree(a, disable=disable)


def put(tree, alloc, tokens, namespace=None):
    """Allocate fresh slots for `tokens` (whole pages), insert, return (slots, result)."""
    ps = alloc.page_size
    slots = alloc.alloc(-(-len(tokens) // ps))[:len(tokens)]
    res = tree.insert(tokens, slots, namespace)
    return slots, res


def accounted(alloc, tree, private=0):
    tree.check_integrity()
    assert alloc.num_free_slots + tree.total_size + private == alloc.capacity


def test_empty_tree_and_empty_tokens():
    a, t = make()
    r = t.match_prefix([])
    assert r.slots.numel() == 0 and r.slots.dtype == torch.int64
    assert t.match_prefix([1, 2, 3]).slots.numel() == 0
    r = t.insert([], torch.empty(0, dtype=torch.int64))
    assert r.slots.numel() == 0
    t.lock(r.node)  # locking the root is a no-op
    t.unlock(r.node)
    assert t.total_size == 0 and t.query_tokens == 3 and t.hit_tokens == 0
    accounted(a, t)


def test_insert_then_match_returns_slots():
    a, t = make()
    slots, r = put(t, a, [1, 2, 3, 4])
    assert torch.equal(r.slots, slots)
    m = t.match_prefix([1, 2, 3, 4, 5, 6])
    assert torch.equal(m.slots, slots)
    assert m.node is r.node
    assert t.hit_tokens == 4 and t.query_tokens == 6
    assert t.evictable_size == 4 and t.protected_size == 0
    accounted(a, t)


def test_match_inside_a_node_splits_it_so_lock_covers_only_the_match():
    a, t = make()
    slots, _ = put(t, a, [1, 2, 3, 4, 5])
    m = t.match_prefix([1, 2, 3, 9])
    assert torch.equal(m.slots, slots[:3])
    assert m.node.key == [1, 2, 3] and len(m.node.children) == 1
    t.lock(m.node)
    assert t.protected_size == 3 and t.evictable_size == 2
    accounted(a, t)
    assert t.evict(100) == 2  # only the unlocked tail [4, 5] goes
    assert torch.equal(t.match_prefix([1, 2, 3, 4, 5]).slots, slots[:3])
    t.unlock(m.node)
    assert t.evict(100) == 3
    accounted(a, t)


def test_lock_survives_a_later_split_of_the_locked_node():
    a, t = make()
    put(t, a, [1, 2, 3, 4])
    r = t.match_prefix([1, 2, 3, 4])
    t.lock(r.node)
    t.match_prefix([1, 2])  # splits the locked node; both halves must stay locked
    accounted(a, t)
    assert t.protected_size == 4 and t.evict(10) == 0
    t.unlock(r.node)
    assert t.protected_size == 0 and t.evictable_size == 4
    accounted(a, t)


def test_insert_existing_prefix_frees_exactly_the_duplicates():
    a, t = make()
    first, _ = put(t, a, [1, 2, 3, 4])
    m = t.match_prefix([1, 2])  # a request reuses [1, 2] and computes [3, 4, 5] itself
    own = a.alloc(3)
    given = torch.cat([m.slots, own])
    free_before = a.num_free_slots
    r = t.insert([1, 2, 3, 4, 5], given)
    # [1, 2] were the tree's own (left alone); [3, 4] duplicated the tree's (freed); 5 is new.
    assert torch.equal(r.slots, torch.cat([first, own[2:]]))
    assert a.num_free_slots == free_before + 2
    assert a.is_free(own[:2]).all() and not a.is_free(first).any()
    assert t.total_size == 5
    accounted(a, t)


def test_insert_identical_sequence_twice_frees_second_copy():
    a, t = make()
    first, _ = put(t, a, [7, 8, 9])
    second, r = put(t, a, [7, 8, 9])
    assert torch.equal(r.slots, first)
    assert a.is_free(second).all()
    accounted(a, t)


def test_eviction_is_lru_over_leaves():
    a, t = make()
    sa, _ = put(t, a, [1, 1])
    sb, _ = put(t, a, [2, 2])
    sc, _ = put(t, a, [3, 3])
    t.match_prefix([1, 1])  # [1, 1] is now the most recent; [2, 2] the least
    assert t.evict(1) == 2
    assert t.match_prefix([2, 2]).slots.numel() == 0
    assert a.is_free(sb).all()
    assert t.evict(1) == 2
    assert t.match_prefix([3, 3]).slots.numel() == 0
    assert t.match_prefix([1, 1]).slots.numel() == 2
    assert t.evicted_tokens == 4
    accounted(a, t)


def test_parent_becomes_evictable_only_after_its_children_go():
    a, t = make()
    put(t, a, [1, 2, 3])
    put(t, a, [1, 2, 4])  # [1, 2] is now a parent with children [3] and [4]
    t.match_prefix([1, 2])  # the parent is the most recently used node...
    assert t.evict(1) == 1  # ...yet a leaf goes first
    assert t.match_prefix([1, 2]).slots.numel() == 2
    assert t.evict(2) == 3  # second leaf, then the parent (now a leaf)
    assert t.total_size == 0 and t.evictable_size == 0
    accounted(a, t)


def test_evict_stops_when_only_locked_nodes_remain():
    a, t = make()
    put(t, a, [1, 2])
    put(t, a, [5, 6])
    r = t.match_prefix([1, 2])
    t.lock(r.node)
    assert t.evict(100) == 2
    assert t.total_size == 2 and t.protected_size == 2
    accounted(a, t)


def test_unlock_below_zero_raises():
    a, t = make()
    _, r = put(t, a, [1, 2])
    t.lock(r.node)
    t.unlock(r.node)
    with pytest.raises(RuntimeError, match="not locked"):
        t.unlock(r.node)
    accounted(a, t)


def test_reset_frees_all_and_refuses_while_locked():
    a, t = make()
    put(t, a, [1, 2, 3])
    _, r = put(t, a, [4, 5])
    t.lock(r.node)
    with pytest.raises(RuntimeError, match="locked"):
        t.reset()
    t.unlock(r.node)
    t.reset()
    assert t.total_size == 0 and a.num_free_slots == a.capacity
    assert t.match_prefix([1, 2, 3]).slots.numel() == 0
    accounted(a, t)


def test_namespaces_are_isolated():
    a, t = make()
    s_none, _ = put(t, a, [1, 2, 3])
    assert t.match_prefix([1, 2, 3], namespace="salt").slots.numel() == 0
    s_salt, r = put(t, a, [1, 2, 3], namespace="salt")
    assert not a.is_free(s_salt).any(), "same tokens in another namespace are not duplicates"
    assert torch.equal(r.slots, s_salt)
    assert torch.equal(t.match_prefix([1, 2, 3]).slots, s_none)
    assert torch.equal(t.match_prefix([1, 2, 3], namespace="salt").slots, s_salt)
    assert t.evict(3) == 3  # the default namespace's copy was used less recently than "salt"'s
    assert t.match_prefix([1, 2, 3]).slots.numel() == 0
    assert t.match_prefix([1, 2, 3], namespace="salt").slots.numel() == 3
    accounted(a, t)
    with pytest.raises(ValueError, match="namespace"):
        t.match_prefix([1], namespace=3)


@pytest.mark.parametrize("page_size", [4, 16])
def test_page_truncation(page_size):
    a, t = make(num_pages=16, page_size=page_size)
    tokens = list(range(100, 100 + 2 * page_size + 3))  # two whole pages and a 3-token tail
    slots = a.alloc(3)
    r = t.insert(tokens, slots[:len(tokens)])
    assert torch.equal(r.slots, slots[:2 * page_size])
    assert t.total_size == 2 * page_size
    tail = slots[2 * page_size:]
    assert not a.is_free(tail).any(), "the truncated tail stays the caller's"
    a.free(tail)
    m = t.match_prefix(tokens[:2 * page_size - 1])  # 1 page and a bit: only whole pages match
    assert torch.equal(m.slots, slots[:page_size])
    # a mismatch in the middle of the second page matches only the first page, and splits there
    probe = tokens[:page_size + 2] + [0] * (page_size - 2)
    m = t.match_prefix(probe)
    assert torch.equal(m.slots, slots[:page_size])
    assert len(m.node.key) == page_size
    accounted(a, t)
    # a second copy diverging inside page 2 shares page 1, gets its own page 2
    other = probe + [5] * page_size
    s2 = a.alloc(3)
    r2 = t.insert(other, s2)
    assert torch.equal(r2.slots, torch.cat([slots[:page_size], s2[page_size:]]))
    assert a.is_free(s2[:page_size]).all()
    accounted(a, t)


def test_insert_rejects_partly_shared_page():
    a, t = make(num_pages=8, page_size=4)
    slots, _ = put(t, a, [1, 2, 3, 4])
    bad = torch.tensor([slots[0].item(), slots[1].item(), 99, 98])
    with pytest.raises(ValueError, match="partly"):
        t.insert([1, 2, 3, 4], bad)
    with pytest.raises(ValueError, match="one slot per token"):
        t.insert([1, 2, 3], slots)


def test_disable_mode_never_matches_and_frees_all_inserted_slots():
    a, t = make(num_pages=8, page_size=2, disable=True)
    slots = a.alloc(3)
    r = t.insert([1, 2, 3, 4, 5], slots[:5])
    assert r.slots.numel() == 0
    assert a.is_free(slots[:4]).all() and not a.is_free(slots[4:]).any()
    assert t.match_prefix([1, 2, 3, 4]).slots.numel() == 0
    assert t.total_size == 0
    accounted(a, t, private=2)


def test_check_integrity_catches_a_corrupted_counter_and_a_freed_slot():
    a, t = make()
    slots, _ = put(t, a, [1, 2, 3])
    t.evictable_size += 1
    with pytest.raises(AssertionError, match="evictable_size"):
        t.check_integrity()
    t.evictable_size -= 1
    a.free(slots[:1])  # a bug elsewhere frees a slot the tree still holds
    with pytest.raises(AssertionError, match="free list"):
        t.check_integrity()


def test_tokens_may_be_tensor_or_tuple():
    a, t = make()
    slots, _ = put(t, a, (4, 5, 6))
    assert torch.equal(t.match_prefix(torch.tensor([4, 5, 6, 7])).slots, slots)


def test_long_prompt_match_is_fast():
    a, t = make(num_pages=33000)
    tokens = [(i * 7919) % 50000 for i in range(32768)]
    put(t, a, tokens)
    query = list(tokens)  # equal values, distinct list object
    t.match_prefix(query)
    start = time.perf_counter()
    for _ in range(20):
        m = t.match_prefix(query)
    per_call = (time.perf_counter() - start) / 20
    assert m.slots.numel() == 32768
    assert per_call < 2e-3, f"32k-token match took {per_call * 1e3:.2f} ms"
