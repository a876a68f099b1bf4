"""Triton attention backend: KV store (optionally fused with rotary), then split-KV decode, cascade
decode over shared prefixes, or ragged extend attention (GPU), with long prompt chunks handed to
cuDNN (long_prefill.py).

Importing this module imports Triton and the kernels; radixserve imports it only when the Triton
backend is chosen.
"""
from __future__ import annotations

import logging
import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.attention import RopeTables
from radixserve.core.forward_batch import ForwardBatch
from radixserve.kernels.cascade_attention import cascade_decode_attention, choose_prefix_splits
from radixserve.kernels.decode_attention import choose_num_kv_splits, decode_attention, decode_scratch
from radixserve.kernels.extend_attention import ExtendConfig, extend_attention
from radixserve.kernels.kv_store import kv_store
from radixserve.kernels.rotary import apply_rotary_store
from radixserve.runtime.attention import long_prefill

logger = logging.getLogger(__name__)


class TritonAttentionBackend:
    """AttentionBackend over a KVPool with Triton kernels; never syncs the host.

    `max_kv_splits` bounds the decode split-KV parallelism (and the scratch); `num_kv_splits`
    fixes it instead of choosing per batch from `batch.max_seq_len`, which CUDA-graph capture
    needs (the grid is baked into the graph; any split count is correct for any length).
    `num_prefix_splits` does the same for the shared-prefix stage of cascade decode.
    With `cascade`, decode batches that carry `prefix_groups` attend each group's shared prefix
    once for all its rows (cascade_attention.py); otherwise every row reads its whole context.
    With `long_prefill_cudnn` (CUDA, 16-bit pools), long prompt chunks go to cuDNN
    (long_prefill.py); the Triton kernel takes every other extend row.
    The decode scratch holds `req_table`'s max_requests rows; it is allocated on the first decode
    unless `num_heads` is given (allocate before graph capture: pass it, or run a warm-up step).

    NOTE: rows of the output for tokens that belong to no row of the batch (padding) are left
    unwritten (torch.empty), unlike the torch backend, which zeros them.
    """

    fuses_rope = True  # forward() takes `rope=` and rotates q/k in the KV-store kernel

    def __init__(self, pool: KVPool, req_table: ReqToTokenTable, num_heads: int | None = None,
                 max_kv_splits: int = 16, num_kv_splits: int | None = None, cascade: bool = True,
                 num_prefix_splits: int | None = None, extend_config: ExtendConfig | None = None,
                 long_prefill_cudnn: bool = True) -> None:
        for name, n in (("max_kv_splits", max_kv_splits),):
            if n < 1 or n & (n - 1):
                raise ValueError(f"{name} must be a power of two >= 1, got {n}")
        for name, n in (("num_kv_splits", num_kv_splits), ("num_prefix_splits", num_prefix_splits)):
            if n is not None and not (1 <= n <= max_kv_splits and n & (n - 1) == 0):
                raise ValueError(f"{name} must be a power of two in [1, {max_kv_splits}], got {n}")
        self.pool = pool
        self.req_table = req_table
        self.max_kv_splits = max_kv_splits
        self.num_kv_splits = num_kv_splits
        self.cascade = cascade
        self.num_prefix_splits = num_prefix_splits
        self.extend_config = extend_config
        k0 = pool.k[0]
        self.long_prefill = (long_prefill_cudnn and k0.dtype in (torch.bfloat16, torch.float16)
                             and long_prefill.cudnn_available(k0.device))
        if self.long_prefill:
            logger.info("long prompt chunks (>= %d new tokens after >= %d cached) attend their prefix "
                        "through cuDNN", long_prefill.MIN_CHUNK, long_prefill.BLOCK_KEYS)
        self._long_plan: tuple[torch.Tensor, long_prefill.LongRows | None] | None = None
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        if num_heads is not None:
            self._alloc_scratch(num_heads)

    def _alloc_scratch(self, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        k0 = self.pool.k[0]  # [num_slots, Hkv, D]
        max_batch = self.req_table.table.shape[0]
        pieces = self.max_kv_splits * (2 if self.cascade else 1)  # tail pieces, then shared-prefix pieces
        self._scratch = decode_scratch(max_batch, num_heads, k0.shape[2], pieces, k0.device)
        logger.debug("decode scratch: %d rows x %d heads x %d pieces", max_batch, num_heads, pieces)
        return self._scratch

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float, rope: RopeTables | None = None) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D] in q's dtype (see AttentionBackend).

        With `rope`, q and k arrive unrotated: q is rotated in place and the rotated k is what
        goes to the pool (k itself is left unrotated).
        """
        k_pool, v_pool = self.pool.k[layer_id], self.pool.v[layer_id]  # [num_slots, Hkv, D]
        if rope is not None:
            apply_rotary_store(q, k, v, rope.positions, rope.cos, rope.sin, k_pool, v_pool, batch.out_slots)
        else:
            kv_store(k, v, k_pool, v_pool, batch.out_slots)
        out_dtype = q.dtype
        q = q.to(k_pool.dtype)
        if batch.is_decode:
            out = self._decode(q, k_pool, v_pool, batch, scaling)
        else:
            out = self._extend(q, k_pool, v_pool, batch, scaling)
        return out.to(out_dtype)

    def _extend(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, batch: ForwardBatch,
                scaling: float) -> torch.Tensor:
        table = self.req_table.table
        plan = None
        if self.long_prefill:
            # NOTE: the plan is made once per forward (layer 0) and kept for the other layers: the
            # layers of one forward share the batch's tensors.
            if self._long_plan is None or self._long_plan[0] is not batch.seq_lens:
                self._long_plan = (batch.seq_lens, long_prefill.plan_long_rows(batch))
            plan = self._long_plan[1]
        if plan is None:
            return extend_attention(q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, batch.extend_lens,
                                    batch.extend_starts, batch.max_extend_len, scaling, config=self.extend_config,
                                    max_seq_len=batch.max_seq_len)
        out = torch.empty_like(q)
        for index, row, start, ext, seq_len in plan.rows:
            long_prefill.attend_long_row(q, out, k_pool, v_pool, table, batch, index, row, start, ext, seq_len,
                                         scaling, self.extend_config)
        if plan.rest_extend_lens is not None:
            extend_attention(q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, plan.rest_extend_lens,
                             batch.extend_starts, batch.max_extend_len, scaling, out=out, config=self.extend_config,
                             max_seq_len=batch.max_seq_len)
        return out

    def _decode(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, batch: ForwardBatch,
                scaling: float) -> torch.Tensor:
        scratch = self._scratch
        if scratch is None or scratch[0].shape[1] != q.shape[1]:
            scratch = self._alloc_scratch(q.shape[1])
        num_kv_heads = k_pool.shape[1]
        splits = self.num_kv_splits or choose_num_kv_splits(
            batch.max_seq_len, batch.batch_size, num_kv_heads, self.max_kv_splits)
        table = self.req_table.table
        groups = batch.prefix_groups
        # NOTE: in a decode batch token b is row b's only token (extend_starts == arange(B)).
        if not self.cascade or groups is None or groups.num_groups == 0:
            return decode_attention(q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, scaling, splits,
                                    *scratch)
        prefix_splits = self.num_prefix_splits or choose_prefix_splits(
            groups.max_prefix_len, batch.batch_size, q.shape[1], num_kv_heads, self.max_kv_splits)
        return cascade_decode_attention(
            q, k_pool, v_pool, table, batch.req_rows, batch.seq_lens, groups.row_prefix_lens, groups.group_rows,
            groups.group_starts, groups.group_prefix_lens, groups.group_table_rows, scaling, splits, prefix_splits,
            *scratch)
