"""The interface every attention backend implements."""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from radixserve.core.forward_batch import ForwardBatch


class RopeTables(NamedTuple):
    """Rotary inputs for a backend that rotates q and k itself while it stores k/v (one kernel):
    such a backend has `fuses_rope = True` and takes `forward(..., rope=RopeTables(...))`."""

    positions: torch.Tensor  # [T] int64
    cos: torch.Tensor  # [max_positions, D/2] float32
    sin: torch.Tensor  # [max_positions, D/2] float32


class AttentionBackend(Protocol):
    """Stores a layer's new K/V into the pool and attends over each row's full context."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] of the new tokens -> attention output [T, H, D].

        First writes k/v to `batch.out_slots` in layer `layer_id` of the pool, then for each row
        attends causally: the new token at position p sees the row's tokens 0..p.
        """
        ...
