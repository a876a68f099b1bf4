"""Waiting-queue orders: fcfs, lpm (longest prefix match) and dfs-weight, with aging.

Serving requests in depth-first order of the prefix tree maximises cache hits (SGLang paper,
Theorem 3.1). Pure longest-prefix-first can starve a request that shares nothing, so a waiting
request gains `aging_tokens_per_step` of priority for every scheduler step it has waited.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

from radixserve.scheduler.request import Request

# NOTE: lpm/dfs-weight look at most this many waiting requests per step (the oldest); matching
# every request of a huge queue each step would cost more than the ordering gains.
MAX_SCORED = 256


def order_waiting(waiting: Sequence[Request], policy: str, step: int, aging: float,
                  match: Callable[[Request], tuple[int, object]]) -> list[Request]:
    """Return the waiting requests in admission order.

    `match(req)` gives (cached prefix length, deepest matched tree node) for a request.
    """
    by_arrival = sorted(waiting, key=lambda r: r.arrival)
    if policy == "fcfs" or len(by_arrival) <= 1:
        return by_arrival
    scored, rest = by_arrival[:MAX_SCORED], by_arrival[MAX_SCORED:]
    matches = {id(r): match(r) for r in scored}
    bonus = {id(r): aging * (step - r.enqueue_step) for r in scored}
    if policy == "lpm":
        ordered = sorted(scored, key=lambda r: (-(matches[id(r)][0] + bonus[id(r)]), r.arrival))
        return ordered + rest
    # dfs-weight: requests whose age bonus exceeds the longest match go first (starvation bound),
    # the others in depth-first order of the tree, heavier subtrees first.
    longest = max(m[0] for m in matches.values())
    aged = [r for r in scored if bonus[id(r)] > longest and bonus[id(r)] > 0]
    young = [r for r in scored if not (bonus[id(r)] > longest and bonus[id(r)] > 0)]
    return aged + _dfs_order(young, {k: v[1] for k, v in matches.items()}) + rest


def _dfs_order(reqs: list[Request], nodes: dict[int, object]) -> list[Request]:
    """Order requests by a depth-first walk over their matched tree nodes, visiting the child
    subtree holding more waiting requests first (SGLang's DFS-weight idea)."""
    at_node: dict[int, list[Request]] = defaultdict(list)
    node_of: dict[int, object] = {}
    for r in reqs:
        node = nodes[id(r)]
        at_node[id(node)].append(r)
        node_of[id(node)] = node
    # weight[node] = waiting requests in its subtree; children[parent] = child nodes with weight
    weight: dict[int, int] = defaultdict(int)
    children: dict[int, dict[int, object]] = defaultdict(dict)
    roots: dict[int, object] = {}
    for nid, node in node_of.items():
        count = len(at_node[nid])
        cur = node
        while cur is not None:
            weight[id(cur)] += count
            parent = getattr(cur, "parent", None)
            if parent is None:
                roots[id(cur)] = cur
            else:
                children[id(parent)][id(cur)] = cur
            cur = parent
    # Iterative walk: deeper (more cached) subtrees first, heavier before lighter, then the
    # requests whose match ends at the node itself.
    out: list[Request] = []
    stack: list[tuple[object, bool]] = [(r, False) for r in sorted(roots.values(), key=lambda c: weight[id(c)])]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.extend(sorted(at_node.get(id(node), []), key=lambda r: r.arrival))
            continue
        stack.append((node, True))
        for kid in sorted(children[id(node)].values(), key=lambda c: weight[id(c)]):
            stack.append((kid, False))  # lightest pushed first, so the heaviest is visited first
    return out
