"""ForwardBatch: the plain tensors that cross from the scheduler to the model runner."""
from __future__ import annotations

from typing import NamedTuple

import torch

from radixserve.core.prefix_groups import PrefixGroups


class ForwardBatch(NamedTuple):
    """One model step over B requests contributing T new tokens in total.

    Row b computes `extend_lens[b]` new tokens at positions
    `seq_lens[b] - extend_lens[b] .. seq_lens[b] - 1`; its keys/values for all `seq_lens[b]` tokens
    live at the KV slots `req_to_token[req_rows[b], :seq_lens[b]]` (the scheduler has written the
    slots of the new tokens there, and they equal `out_slots` for those tokens).
    A decode row has extend_lens[b] == 1.
    """

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_slots: torch.Tensor  # [T] int64: KV slot each new token's K/V is written to
    req_rows: torch.Tensor  # [B] int64: row of each request in the request table
    seq_lens: torch.Tensor  # [B] int64: tokens in the KV cache after this step
    extend_lens: torch.Tensor  # [B] int64: new tokens of each row this step (>= 1)
    extend_starts: torch.Tensor  # [B] int64: offset of each row's first new token in [T]
    logits_indices: torch.Tensor  # [L] int64: token indices (into [T]) whose logits are wanted
    max_seq_len: int  # host copies, so kernels need no device->host sync
    max_extend_len: int
    is_decode: bool  # every row has extend_lens == 1
    prefix_groups: PrefixGroups | None = None  # decode rows sharing a cached prefix (cascade attention)

    @property
    def batch_size(self) -> int:
        return self.req_rows.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
