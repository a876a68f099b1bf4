"""RadixTree against a brute-force reference, over random request lifecycles (hypothesis).

The reference keeps, per namespace, every cached page-aligned prefix (a tuple of tokens) with
the slots of its last page, its last-access tick and its lock count. It knows nothing of nodes,
splits or heaps. After every operation the tree must hold exactly the reference's prefixes,
pass check_integrity(), and account for every slot: free + tree + private == capacity.
"""
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree

NUM_PAGES = 24


@dataclass
class Ref:
    page_size: int
    pages: dict = field(default_factory=dict)  # (ns, prefix) -> tuple of the last page's slots
    ticks: dict = field(default_factory=dict)  # (ns, prefix) -> last access
    locks: dict = field(default_factory=dict)  # (ns, prefix) -> lock count
    tick: int = 0

    def prefixes(self, ns, tokens):
        """Page-aligned prefixes of tokens, shortest first."""
        ps = self.page_size
        return [(ns, tuple(tokens[:j])) for j in range(ps, len(tokens) // ps * ps + 1, ps)]

    def match(self, ns, tokens):
        hit = []
        for key in self.prefixes(ns, tokens):
            if key not in self.pages:
                break
            hit.append(key)
        if hit:
            self.tick += 1
            for key in hit:
                self.ticks[key] = self.tick
        return hit

    def slots(self, keys):
        return [s for key in keys for s in self.pages[key]]


def dump(tree: RadixTree) -> dict:
    """(ns, prefix) -> last page's slots, read straight from the tree's nodes."""
    ps, out = tree.page_size, {}
    stack = [(ns, (), child) for ns, root in tree._roots.items() for child in root.children.values()]
    while stack:
        ns, prefix, node = stack.pop()
        vals = node.value.tolist()
        for j in range(0, len(node.key), ps):
            prefix = prefix + tuple(node.key[j:j + ps])
            out[(ns, prefix)] = tuple(vals[j:j + ps])
        stack.extend((ns, prefix, c) for c in node.children.values())
    return out


@dataclass
class Sim:
    ref: Ref
    alloc: PageAllocator
    tree: RadixTree
    active: list = field(default_factory=list)  # [ns, tokens, matched keys, node, own slots]
    private: int = 0

    def check(self):
        self.tree.check_integrity()
        assert self.alloc.num_free_slots + self.tree.total_size + self.private == self.alloc.capacity
        assert dump(self.tree) == self.ref.pages
        for _, _, hit, _, _ in self.active:
            assert all(k in self.ref.pages for k in hit), "a locked prefix disappeared"

    def evict(self, k):
        ps, ref = self.ref.page_size, self.ref
        before_evicted = self.tree.evicted_tokens
        freed = self.tree.evict(k)
        after = dump(self.tree)
        assert all(ref.pages.get(key) == v for key, v in after.items()), "eviction changed or added a page"
        removed = [key for key in ref.pages if key not in after]
        assert freed == ps * len(removed) == self.tree.evicted_tokens - before_evicted
        for key in removed:
            assert ref.locks.get(key, 0) == 0, f"evicted a locked prefix {key}"
            assert self.alloc.is_free(torch.tensor(ref.pages[key])).all()
        for ns, prefix in after:  # still prefix-closed: only leaves were taken
            assert len(prefix) == ps or (ns, prefix[:-ps]) in after, "evicted a prefix's beginning"
        has_ext = {(ns, p[:-ps]) for ns, p in after}
        leaves = [key for key in after if key not in has_ext and ref.locks.get(key, 0) == 0]
        if removed and leaves:
            assert max(ref.ticks[key] for key in removed) <= min(ref.ticks[key] for key in leaves), \
                "evicted a more recently used leaf before a less recent one"
        if freed < k:
            assert not leaves, "stopped evicting while unlocked leaves remained"
        for key in removed:
            del ref.pages[key], ref.ticks[key]
        return freed

    def insert(self, ns, tokens, slots):
        """Insert with the reference's expectation; returns the caller's pages past the cut."""
        ps, ref = self.ref.page_size, self.ref
        keys = ref.prefixes(ns, tokens)
        expect, dups = [], []
        ref.tick += 1
        for j, key in enumerate(keys):
            mine = tuple(slots[j * ps:(j + 1) * ps].tolist())
            if key in ref.pages:
                if ref.pages[key] != mine:
                    dups.extend(mine)
            else:
                ref.pages[key] = mine
            ref.ticks[key] = ref.tick
            expect.extend(ref.pages[key])
        r = self.tree.insert(tokens, slots[:len(tokens)], ns)
        assert r.slots.tolist() == expect
        if dups:
            assert self.alloc.is_free(torch.tensor(dups)).all(), "duplicate slots were not freed"
        return slots[len(keys) * ps:]

    def start(self, ns, tokens):
        ps = self.ref.page_size
        hit = self.ref.match(ns, tokens)
        r = self.tree.match_prefix(tokens, ns)
        assert r.slots.tolist() == self.ref.slots(hit)
        self.tree.lock(r.node)
        for key in hit:
            self.ref.locks[key] = self.ref.locks.get(key, 0) + 1
        need = -(-len(tokens) // ps) - len(hit)
        own = self.alloc.alloc(need)
        if own is None:
            self.evict((need - self.alloc.num_free_pages) * ps)
            self.check()
            own = self.alloc.alloc(need)
        if own is None:
            self.unlock(hit, r.node)
            return
        self.active.append([ns, tokens, hit, r.node, own])
        self.private += own.numel()

    def unlock(self, hit, node):
        self.tree.unlock(node)
        for key in hit:
            self.ref.locks[key] -= 1

    def finish(self, i):
        ns, tokens, hit, node, own = self.active.pop(i % len(self.active))
        slots = torch.cat([torch.tensor(self.ref.slots(hit), dtype=torch.int64), own])
        self.alloc.free(self.insert(ns, tokens, slots))
        self.private -= own.numel()
        self.unlock(hit, node)

    def fresh_insert(self, ns, tokens):
        ps = self.ref.page_size
        own = self.alloc.alloc(-(-len(tokens) // ps))
        if own is not None:
            self.alloc.free(self.insert(ns, tokens, own))

    def match(self, ns, tokens):
        hit = self.ref.match(ns, tokens)
        assert self.tree.match_prefix(tokens, ns).slots.tolist() == self.ref.slots(hit)

    def reset(self):
        if any(self.ref.locks.values()):
            with pytest.raises(RuntimeError):
                self.tree.reset()
        else:
            self.tree.reset()
            self.ref.pages.clear()
            self.ref.ticks.clear()


def ops(alphabet, max_len):
    ns = st.sampled_from([None, "a"])
    # a few shared stems plus random tails, so prefixes collide and nodes split often
    stems = st.sampled_from([[], [0] * max_len, list(range(alphabet)) * max_len])
    tail = st.lists(st.integers(0, alphabet - 1), max_size=max_len)
    toks = st.builds(lambda stem, cut, t: (stem[:cut] + t)[:max_len], stems, st.integers(0, max_len), tail)
    start = st.tuples(st.just("start"), ns, toks)
    finish = st.tuples(st.just("finish"), st.integers(0, 9))
    return st.lists(st.one_of(
        start, start, finish, finish,
        st.tuples(st.just("match"), ns, toks),
        st.tuples(st.just("evict"), st.integers(0, 8)),
        st.tuples(st.just("fresh_insert"), ns, toks),
        st.tuples(st.just("reset")),
    ), min_size=15, max_size=60)


def run(page_size, program):
    alloc = PageAllocator(NUM_PAGES, page_size)
    sim = Sim(Ref(page_size), alloc, RadixTree(alloc))
    for op, *args in program:
        if op == "finish":
            if sim.active:
                sim.finish(*args)
        elif op == "evict":
            sim.evict(args[0])
        else:
            getattr(sim, op)(*args)
        sim.check()
    while sim.active:
        sim.finish(0)
        sim.check()
    sim.evict(alloc.capacity)
    sim.check()
    assert sim.tree.total_size == 0 and alloc.num_free_slots == alloc.capacity


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(ops(alphabet=3, max_len=10))
def test_tree_matches_reference_page_size_1(program):
    run(1, program)


@PROPERTY
@given(ops(alphabet=2, max_len=14))
def test_tree_matches_reference_page_size_4(program):
    run(4, program)
