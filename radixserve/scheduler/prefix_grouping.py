"""Which decode rows of a step share a cached prefix (for cascade attention), read off the radix tree.

A running request holds its first `tree_len` tokens as the locked path root..`node` of the
radix tree (see KVPlacement), and its request-table row holds that path's slots at positions
0..tree_len-1. Two requests whose paths pass through the same node hold the same slots up to the end of that node.
So a group is a tree node and decode rows whose path passes through it; its prefix length is
the node's depth in tokens. This runs on the host every step: one walk up each row's path
(a handful of nodes), no token comparison.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from radixserve.scheduler.request import KVPlacement


class GroupingOptions(NamedTuple):
    min_prefix_len: int  # shorter shared prefixes are not worth a separate attention call
    min_group_size: int  # fewer rows sharing a prefix are not either


def options_from(config) -> GroupingOptions | None:
    """The EngineConfig's cascade settings; None when cascade attention is off."""
    if not config.cascade_attention:
        return None
    return GroupingOptions(config.cascade_min_prefix_len, config.cascade_min_group_size)


class Group(NamedTuple):
    prefix_len: int
    rows: list[int]  # indices into the step's decode rows, ascending


def group_by_prefix(placements: Sequence[KVPlacement], options: GroupingOptions) -> list[Group]:
    """Groups of `placements` (the KV placements of one step's decode rows, in batch order) sharing a cached prefix.

    Each row joins at most one group, through the node of its path that saves the most K/V
    reads if every row through it joined: (rows through it - 1) * its depth, deeper on ties;
    only nodes at least `min_prefix_len` tokens deep with at least `min_group_size` rows count.
    So 16 requests under one 500-token system prompt stay one group even when pairs of them
    share a few more tokens (n > 1 samples of one question), while two requests sharing a long
    conversation under a short system prompt group on the conversation. Groups left smaller than
    `min_group_size` (their other rows chose other nodes) are dropped.
    """
    if len(placements) < options.min_group_size:
        return []
    depth: dict[int, int] = {}  # id(node) -> tokens from the root to the end of the node
    count: dict[int, int] = {}  # id(node) -> rows whose path passes through it
    paths: list[list] = []
    for placement in placements:
        path = _path(placement.node)
        _depths(path, depth)
        kept = [nd for nd in path if depth[id(nd)] >= options.min_prefix_len]
        for nd in kept:
            count[id(nd)] = count.get(id(nd), 0) + 1
        paths.append(kept)
    chosen: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        best, best_key = None, (0, 0)
        for nd in path:
            n, d = count[id(nd)], depth[id(nd)]
            if n >= options.min_group_size and ((n - 1) * d, d) > best_key:
                best, best_key = nd, ((n - 1) * d, d)
        if best is not None:
            chosen.setdefault(id(best), []).append(i)
    groups = [Group(depth[key], rows) for key, rows in chosen.items() if len(rows) >= options.min_group_size]
    groups.sort(key=lambda grp: grp.rows[0])
    return groups


def _path(node) -> list:
    """Nodes from below the namespace root down to `node` (empty for a root or None)."""
    path = []
    while node is not None and node.parent is not None:
        path.append(node)
        node = node.parent
    path.reverse()
    return path


def _depths(path: list, depth: dict[int, int]) -> None:
    """Fill depth[id(n)] for the nodes of a root-down path (reusing those already known)."""
    total = 0
    for nd in path:
        known = depth.get(id(nd))
        if known is None:
            total += len(nd.key)
            depth[id(nd)] = total
        else:
            total = known
