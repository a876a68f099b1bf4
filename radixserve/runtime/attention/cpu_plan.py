"""The CPU attention backend's per-step metadata, computed once before the first layer.

Everything that depends only on the batch (which rows decode, where their K/V sit in the
mirror, masks, cascade groups and their prefixes, each extending row's slots) is worked out here
once; each layer then only stores its new K/V and attends.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from radixserve.core.forward_batch import ForwardBatch
from radixserve.runtime.attention.kv_mirror import KVMirror, SlotVersions, TailView
from radixserve.runtime.attention.prefix_store import PrefixEntry, PrefixStore


class GroupPlan(NamedTuple):
    """Decode rows sharing a prefix held in `entry`: it is attended once for all of them."""

    entry: PrefixEntry
    members: torch.Tensor  # [n] int64 indices into the step's decode rows
    size: int
    all_rows: bool  # members == arange(B): no indexing needed


class GatherTails(NamedTuple):
    """Decode tails read straight from the pool (when the mirror would exceed its budget)."""

    slots: torch.Tensor  # [B, W] int64 pool slots of each row's run (padding: slot 0)
    mask: torch.Tensor  # [B, 1, 1, W] additive


class DecodePlan(NamedTuple):
    tokens: torch.Tensor | None  # [B] token index of each decode row; None when every token decodes
    tail: TailView | None  # each row's run in the mirror, or None: GatherTails instead
    gather: GatherTails | None
    groups: list[GroupPlan]


class ExtendRow(NamedTuple):
    start: int  # first token of the row in the batch
    length: int  # new tokens (> 1)
    slots: torch.Tensor  # [L] int64 pool slots of positions 0 .. L-1, the new ones last


class StepPlan(NamedTuple):
    batch: ForwardBatch  # the batch this plan belongs to (compared by identity)
    decode: DecodePlan | None
    extend: list[ExtendRow]


def build_plan(batch: ForwardBatch, table: torch.Tensor, mirror: KVMirror, store: PrefixStore,
               versions: SlotVersions) -> StepPlan:
    """table: the request table [R, C] (on CPU)."""
    versions.bump(batch.out_slots)
    rows = batch.req_rows.tolist()
    seq_lens = batch.seq_lens.tolist()
    ext_lens = batch.extend_lens.tolist()
    starts = batch.extend_starts.tolist()
    dec = [b for b, e in enumerate(ext_lens) if e == 1]
    extend = [ExtendRow(starts[b], ext_lens[b], table[rows[b], :seq_lens[b]].clone())
              for b, e in enumerate(ext_lens) if e > 1]
    if not dec:
        store.keep_only([])
        return StepPlan(batch, None, extend)
    all_decode = len(dec) == len(rows)
    d_rows = [rows[b] for b in dec]
    d_lens = [seq_lens[b] for b in dec]
    tokens = None if all_decode else torch.tensor([starts[b] for b in dec], dtype=torch.int64)
    new_slots = batch.out_slots if all_decode else batch.out_slots[tokens]
    if batch.prefix_groups is not None:
        bases, groups = _given_groups(batch, table, store)
    else:
        bases, groups = _kept_groups(d_rows, d_lens, table, mirror, store)
    store.keep_only([g.entry for g in groups])
    tail = mirror.prepare(table, d_rows, bases, d_lens, new_slots, keep_rows=set(rows))
    gather = None if tail is not None else _gather_tails(table, d_rows, bases, d_lens, mirror.pool.dtype)
    return StepPlan(batch, DecodePlan(tokens, tail, gather, groups), extend)


def _group(entry: PrefixEntry, members: list[int], num_rows: int) -> GroupPlan:
    return GroupPlan(entry, torch.tensor(members, dtype=torch.int64), len(members),
                     members == list(range(num_rows)))


def _given_groups(batch: ForwardBatch, table: torch.Tensor, store: PrefixStore
                  ) -> tuple[list[int], list[GroupPlan]]:
    """Groups as the scheduler described them (a decode-only batch: decode row b is batch row b)."""
    pg = batch.prefix_groups
    bases = pg.row_prefix_lens.tolist()
    members = pg.group_rows.tolist()
    bounds = pg.group_starts.tolist()
    groups = []
    for g, (p, table_row) in enumerate(zip(pg.group_prefix_lens.tolist(), pg.group_table_rows.tolist())):
        entry = store.get(table[table_row, :p])
        groups.append(_group(entry, members[bounds[g]:bounds[g + 1]], batch.batch_size))
    return bases, groups


def _kept_groups(d_rows: list[int], d_lens: list[int], table: torch.Tensor, mirror: KVMirror,
                 store: PrefixStore) -> tuple[list[int], list[GroupPlan]]:
    """A step without a grouping (it also extends other rows): each decode row keeps the shared
    prefix its mirror run starts after, so its mirror stays valid; rows with the same prefix
    still share one read of it."""
    # NOTE: a base left by an earlier request of the same table row is still a correct split as
    # long as the row's private part is not empty.
    bases = [b if b < n else 0 for b, n in ((mirror.base_of(r), n) for r, n in zip(d_rows, d_lens))]
    by_entry: dict[int, tuple[PrefixEntry, list[int]]] = {}
    for i, (row, base) in enumerate(zip(d_rows, bases)):
        if base > 0:
            entry = store.get(table[row, :base])
            by_entry.setdefault(id(entry), (entry, []))[1].append(i)
    return bases, [_group(e, m, len(d_rows)) for e, m in by_entry.values()]


def _gather_tails(table: torch.Tensor, d_rows: list[int], bases: list[int], d_lens: list[int],
                  dtype: torch.dtype) -> GatherTails:
    runs = torch.tensor(d_lens, dtype=torch.int64) - torch.tensor(bases, dtype=torch.int64)  # [B]
    width = int(runs.max())
    cols = torch.arange(width)[None, :]  # [1, W]
    inside = cols < runs[:, None]  # [B, W]
    pos = (torch.tensor(bases, dtype=torch.int64)[:, None] + cols).clamp_(max=table.shape[1] - 1)
    slots = table[torch.tensor(d_rows, dtype=torch.int64)[:, None], pos].masked_fill_(~inside, 0)
    mask = torch.zeros(inside.shape, dtype=dtype).masked_fill_(~inside, float("-inf"))
    return GatherTails(slots, mask[:, None, None, :])
