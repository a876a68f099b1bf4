"""PrefixGroups: decode rows of one step that share a cached prefix, for cascade attention.

The radix tree knows which running requests share a prefix: their request-table rows hold the
same KV slots for it. A cascade attention backend reads each group's shared prefix once for all
of the group's queries, then each row's own tail, and merges the two partial results by their
log-sum-exp. The scheduler side builds this (batch-side grouping, shared by the CPU and GPU
backends); backends that do not know it ignore it and attend to every row's whole KV, which is
the same function.

Semantics, for a decode batch of B rows (row b's keys are req_to_token[req_rows[b], :seq_lens[b]]):
- G groups; group g covers the batch rows group_rows[group_starts[g]:group_starts[g + 1]]
  (at least two rows each) and a shared prefix of group_prefix_lens[g] tokens, whose slots are
  req_to_token[group_table_rows[g], :group_prefix_lens[g]] and equal those of every member;
- row_prefix_lens[b] is the shared prefix length of row b's group, 0 for rows in no group;
  row b's private part is positions [row_prefix_lens[b], seq_lens[b]), never empty.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class PrefixGroups(NamedTuple):
    row_prefix_lens: torch.Tensor  # [B] int64: shared prefix of each row's group (0: no group)
    group_rows: torch.Tensor  # [R] int64: batch rows of all groups, group after group
    group_starts: torch.Tensor  # [G + 1] int64: offsets into group_rows
    group_prefix_lens: torch.Tensor  # [G] int64
    group_table_rows: torch.Tensor  # [G] int64: a request-table row holding the group's prefix slots
    max_group_size: int  # host copies, so kernels need no device->host sync
    max_prefix_len: int

    @property
    def num_groups(self) -> int:
        return self.group_prefix_lens.shape[0]
