"""The router's mirror of a replica's cache against brute-force models (hypothesis).

1. TokenTree (a prefix-closed set) and TokenCounter (a multiset) against Python sets and counters.
2. The whole protocol against the real RadixTree: requests are cached in a real tree (evicting
   under a small page pool, with namespaces, page sizes 1/2/4, resets, and an event log small
   enough to overflow); the mirror hears what the router would hear (the requests it routed,
   then the events on the wire format of GET /cache/events, or a dump when the log no longer
   reaches its cursor). After every poll the mirror must hold exactly the tree's token paths and
   predict exactly the tree's match for any query, and hold nothing routed any more.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.cache_events import CacheEvent, CacheEventLog
from radixserve.cache.radix_tree import RadixTree
from radixserve.router.mirror import CacheMirror, decode_events, dump_paths
from radixserve.router.token_tree import TokenCounter, TokenTree
from radixserve.cache.cache_events import encode_event_list as _encode

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seqs = st.lists(st.integers(0, 3), min_size=0, max_size=9)


def prefixes(s) -> set[tuple]:
    return {tuple(s[:i]) for i in range(1, len(s) + 1)}


def lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def closure(paths) -> set[tuple]:
    out = set()
    for p in paths:
        out |= prefixes(p)
    return out


def aligned(model: set, ps: int) -> set:
    """The prefix closure of the members that are whole pages long."""
    return closure(p for p in model if len(p) % ps == 0)


@SETTINGS
@given(st.sampled_from([1, 2, 3]),
       st.lists(st.tuples(st.sampled_from(["insert", "discard", "match", "clear"]), seqs), max_size=40))
def test_token_tree_is_a_prefix_closed_set_of_pages(ps, ops):
    tree, model = TokenTree(ps), set()  # model: every non-empty prefix held
    for op, s in ops:
        s = s[:len(s) - len(s) % ps]
        if op == "insert":
            added = tree.insert(s)
            assert added == len(prefixes(s) - model)
            model |= prefixes(s)
        elif op == "discard" and s:
            kept = aligned({p for p in model if p[:len(s)] != tuple(s)}, ps)
            assert tree.discard(s) == len(model - kept)
            model = kept
        elif op == "match":
            assert tree.match(s) == max((len(p) for p in prefixes(s) if p in model), default=0)
        elif op == "clear":
            tree.clear()
            model = set()
        assert tree.num_tokens == len(model)
        assert closure(tree.paths()) == model
        assert all(len(p) % ps == 0 for p in tree.paths())


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "match"]), seqs), max_size=40))
def test_token_counter_is_a_multiset(ops):
    fly, model = TokenCounter(), Counter()
    for op, s in ops:
        s = tuple(s)
        if op == "add":
            fly.add(s)
            model[s] += 1
        elif op == "remove" and model[s]:
            fly.remove(s)
            model[s] -= 1
        elif op == "match":
            assert fly.match(s) == max((lcp(s, t) for t, c in model.items() if c), default=0)
        live = [t for t, c in model.items() if c]
        assert fly.size == sum(model.values())
        assert fly.num_tokens == len(closure(live))
    with pytest.raises(KeyError):
        fly.remove((9, 9))


def test_discard_keeps_the_rest_of_a_cut_edge():
    tree = TokenTree()
    tree.insert([1, 2, 3, 4, 5])
    tree.insert([1, 2, 3, 9])
    assert tree.discard([1, 2, 3, 4]) == 2
    assert tree.paths() == {(1, 2, 3, 9)}
    assert tree.discard([1, 2, 7]) == 0  # nothing stored there
    assert tree.discard([1]) == 4 and tree.num_tokens == 0


# ---- the protocol against the real tree ---------------------------------------------------------
class Replica:
    """A real RadixTree caching whole requests, as the engine does when they finish."""

    def __init__(self, page_size: int, num_pages: int, max_events: int) -> None:
        self.alloc = PageAllocator(num_pages, page_size)
        self.tree = RadixTree(self.alloc)
        self.tree.events = CacheEventLog(page_size, max_events=max_events)
        self.ps = page_size

    def cache(self, tokens: list[int], ns) -> bool:
        """Compute and cache `tokens`; False if they cannot fit even after evicting."""
        n = len(tokens) - len(tokens) % self.ps
        if n == 0:
            return False
        m = self.tree.match_prefix(tokens[:n], ns)
        self.tree.lock(m.node)
        need = (n - m.slots.numel()) // self.ps
        if need > self.alloc.num_free_pages:
            self.tree.evict((need - self.alloc.num_free_pages) * self.ps)
        new = self.alloc.alloc(need) if need else torch.empty(0, dtype=torch.int64)
        self.tree.unlock(m.node)
        if new is None:
            return False
        self.tree.insert(tokens[:n], torch.cat([m.slots, new]), ns)
        return True

    def paths(self, ns) -> set[tuple]:
        for name, nodes in self.tree.dump():
            if name == ns:
                return closure(tuple(p) for p in dump_paths([[p, k] for p, k in nodes]))
        return set()


def poll(rep: Replica, mirror: CacheMirror) -> bool:
    """What the router's poller does with one answer of GET /cache/events; True if it resynced."""
    batch = mirror.take_pending()
    log = rep.tree.events
    events = log.since(mirror.cursor) if mirror.epoch == log.epoch else None
    if events is None:
        namespaces = [(ns, dump_paths([[p, k] for p, k in nodes])) for ns, nodes in rep.tree.dump()]
        mirror.resync(log.epoch, log.head, rep.ps, True, namespaces, batch)
        return True
    mirror.apply_events(decode_events(_encode(events)), batch)
    return False


tenant_prompts = st.tuples(st.sampled_from([None, "a", "b"]), st.integers(0, 2),
                           st.lists(st.integers(0, 2), max_size=8))
op = st.one_of(st.tuples(st.just("request"), tenant_prompts),
               st.tuples(st.just("evict"), st.integers(1, 12)),
               st.tuples(st.just("poll"), st.none()),
               st.tuples(st.just("reset"), st.none()))


@settings(SETTINGS, max_examples=100)
@given(st.sampled_from([1, 2, 4]), st.integers(6, 16), st.sampled_from([3, 1000]),
       st.lists(op, min_size=20, max_size=80), st.lists(tenant_prompts, min_size=1, max_size=6))
def test_mirror_follows_the_real_tree(page_size, num_pages, max_events, ops, queries):
    rep = Replica(page_size, num_pages, max_events)
    mirror = CacheMirror(page_size)
    systems = [[7, 8, 9, 10, 11, 12], [7, 8, 5, 6], [20, 21, 22, 23, 24, 25, 26, 27]]
    for kind, arg in ops + [("poll", None)]:
        if kind == "request":
            ns, system, question = arg
            tokens = systems[system] + question
            handle = mirror.begin(ns, [tokens])
            ok = rep.cache(tokens, ns)
            mirror.end(handle, [tokens] if ok else [])
        elif kind == "evict":
            rep.tree.evict(arg * page_size)
        elif kind == "reset":
            rep.tree.reset()
        else:
            event("resync" if poll(rep, mirror) else "events")
            rep.tree.check_integrity()
            for ns in (None, "a", "b"):
                mirrored, real = closure(mirror.paths(ns)), rep.paths(ns)
                assert mirrored == real, (ns, sorted(mirrored - real), sorted(real - mirrored))
            assert not mirror.inflight and not mirror.pending, "the events covered every finished request"
            for ns, system, question in queries:
                q = systems[system] + question
                assert mirror.predicted_hit(ns, q) == rep.tree.match_prefix(q[:-1], ns).slots.numel()


def test_log_is_bounded_and_says_when_a_reader_fell_behind():
    log = CacheEventLog(page_size=1, max_events=6, max_tokens=10)
    rep = Replica(1, 64, 1000)
    rep.tree.events = log
    for i in range(4):
        rep.cache([100 + i] * 3, None)  # events 1..4: inserts
    rep.tree.evict(3 * 4)  # events 5..8: evictions of 3 tokens each
    # 6 events at most, and at most 10 evicted tokens held: events 6..8 (9 tokens) remain
    assert log.head == 8 and len(log) == 3 and log.held_tokens == 9
    assert log.since(4) is None  # event 5 was dropped
    assert [(e.seq, e.kind) for e in log.since(5)] == [(6, "evict"), (7, "evict"), (8, "evict")]
    assert [e.path for e in log.since(5, limit=2)] == [(101,), (102,)]
    assert log.since(8) == [] and log.since(9) is None and log.since(-1) is None
    rep.cache([7, 7], None)
    assert log.since(8) == [CacheEvent(9, "insert", None, (7, 7), 2)]


def test_event_paths_survive_later_splits_of_their_parent():
    """An event names a node; the tree splits that node afterwards; the path read later is still
    the path at the time of the event."""
    rep = Replica(1, 64, 1000)
    rep.cache([1, 2, 3, 4, 5, 6], None)
    rep.cache([1, 2, 3, 4, 5, 6, 7, 8], None)  # node [7, 8] under [1..6]
    assert rep.tree.evict(2) == 2  # evicts [7, 8]: parent is the [1..6] node
    rep.cache([1, 2, 9], None)  # splits [1..6] into [1, 2] + [3..6]
    rep.cache([1, 2, 3, 4, 5, 6, 7, 0], None)
    evictions = [e for e in rep.tree.events.since(0) if e.kind == "evict"]
    assert [(e.path, e.tokens, e.namespace) for e in evictions] == [((1, 2, 3, 4, 5, 6, 7), 2, None)]
    inserts = [e.path for e in rep.tree.events.since(0) if e.kind == "insert"]
    assert inserts == [(1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 9), (1, 2, 3, 4, 5, 6, 7, 0)]
