"""KV pool: per-layer K and V tensors indexed by slot. Knows nothing of requests or trees."""
from __future__ import annotations

import torch


class KVPool:
    """K/V storage for `num_slots` tokens in every layer.

    NOTE: slot ids come from the PageAllocator; page 0 (slots 0..page_size-1) is never handed
    out, so kernels and padded CUDA-graph rows may write there harmlessly.
    """

    def __init__(self, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (num_slots, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.dtype = dtype

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def store(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slots [T] int64, k/v [T, Hkv, D]."""
        self.k[layer_id][slots] = k.to(self.dtype)
        self.v[layer_id][slots] = v.to(self.dtype)
