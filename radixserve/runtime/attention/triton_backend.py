"""Triton attention backend: KV store, then split-KV decode or ragged extend attention (GPU).

Importing this module imports Triton and the kernels; radixserve imports it only when the Triton
backend is chosen.
"""
from __future__ import annotations

import logging

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.kernels.decode_attention import choose_num_kv_splits, decode_attention, decode_scratch
from radixserve.kernels.extend_attention import extend_attention
from radixserve.kernels.kv_store import kv_store
from radixserve.runtime.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


class TritonAttentionBackend:
    """AttentionBackend over a KVPool with Triton kernels; never syncs the host.

    `max_kv_splits` bounds the decode split-KV parallelism (and the scratch); `num_kv_splits`
    fixes it instead of choosing per batch from `batch.max_seq_len`, which CUDA-graph capture
    needs (the grid is baked into the graph; any split count is correct for any length).
    The decode scratch holds `req_table`'s max_requests rows; it is allocated on the first decode
    unless `num_heads` is given (allocate before graph capture: pass it, or run a warm-up step).

    NOTE: rows of the output for tokens that belong to no row of the batch (padding) are left
    unwritten (torch.empty), unlike the torch backend, which zeros them.
    """

    def __init__(self, pool: KVPool, req_table: ReqToTokenTable, num_heads: int | None = None,
                 max_kv_splits: int = 16, num_kv_splits: int | None = None) -> None:
        if max_kv_splits < 1 or max_kv_splits & (max_kv_splits - 1):
            raise ValueError(f"max_kv_splits must be a power of two >= 1, got {max_kv_splits}")
        if num_kv_splits is not None and not (1 <= num_kv_splits <= max_kv_splits
                                              and num_kv_splits & (num_kv_splits - 1) == 0):
            raise ValueError(f"num_kv_splits must be a power of two in [1, {max_kv_splits}], got {num_kv_splits}")
        self.pool = pool
        self.req_table = req_table
        self.max_kv_splits = max_kv_splits
        self.num_kv_splits = num_kv_splits
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        if num_heads is not None:
            self._alloc_scratch(num_heads)

    def _alloc_scratch(self, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        k0 = self.pool.k[0]  # [num_slots, Hkv, D]
        max_batch = self.req_table.table.shape[0]
        self._scratch = decode_scratch(max_batch, num_heads, k0.shape[2], self.max_kv_splits, k0.device)
        logger.debug("decode scratch: %d rows x %d heads x %d splits", max_batch, num_heads, self.max_kv_splits)
        return self._scratch

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D] in q's dtype (see AttentionBackend)."""
        k_pool, v_pool = self.pool.k[layer_id], self.pool.v[layer_id]  # [num_slots, Hkv, D]
        kv_store(k, v, k_pool, v_pool, batch.out_slots)
        out_dtype = q.dtype
        q = q.to(k_pool.dtype)
        table = self.req_table.table
        if batch.is_decode:
            scratch = self._scratch
            if scratch is None or scratch[0].shape[1] != q.shape[1]:
                scratch = self._alloc_scratch(q.shape[1])
            splits = self.num_kv_splits or choose_num_kv_splits(
                batch.max_seq_len, batch.batch_size, k_pool.shape[1], self.max_kv_splits)
            # NOTE: in a decode batch token b is row b's only token (extend_starts == arange(B)).
            out = decode_attention(q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, scaling,
                                   splits, *scratch)
        else:
            out = extend_attention(q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, batch.extend_lens,
                                   batch.extend_starts, batch.max_extend_len, scaling)
        return out.to(out_dtype)
