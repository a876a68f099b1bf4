"""Long prompt chunks: the cached prefix through torch's cuDNN attention in fixed-size key blocks,
the rest through the Triton kernel, merged by log-sum-exp (CUDA, 16-bit dtypes).

Measured on an H100 (benchmarks/results/gpu_attention_h100.md): for big blocks torch's SDPA picks
cuDNN, which runs at 550-620 TFLOP/s where the paged Triton kernel (and torch's flash kernel)
reach 330-410. A long prompt is computed in chunks over its growing cached prefix, so almost all
its attention FLOPs are chunk queries x cached keys. For a chunk row (>= MIN_CHUNK new tokens
after >= BLOCK_KEYS cached ones):
  - the first n * BLOCK_KEYS prefix keys go to cuDNN, one call per block of BLOCK_KEYS keys,
    gathered from the paged pool into a contiguous [Hkv, BLOCK_KEYS, D] buffer;
  - the remaining keys (the prefix's last partial block and the chunk's own causal keys) go to
    the Triton extend kernel with kv_start = n * BLOCK_KEYS;
  - merge_states combines the n + S pieces by their log-sum-exp.
NOTE: cuDNN builds an execution plan per distinct shape and stride set (~80 ms each on the H100,
cached after); whole-prefix calls, a new key length every chunk, made the path slower than the
Triton kernel. Here the keys come in one block shape and the queries are padded to a multiple of
MIN_CHUNK, so a process builds a handful of plans (one per padded chunk size), not one per chunk.

NOTE: deciding which rows are long needs the batch's lengths on the host: one small
device->host copy per forward, taken only when the batch may hold a long chunk (max_seq_len and
max_extend_len, host ints, say so), where a step takes far longer than that copy.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from radixserve.core.forward_batch import ForwardBatch
from radixserve.kernels.extend_attention import ExtendConfig, extend_attention
from radixserve.kernels.merge_states import merge_states

BLOCK_KEYS = 8192  # prefix keys per cuDNN call
MIN_CHUNK = 512  # new tokens from which a row counts as a prompt chunk
LOG2E = math.log2(math.e)


class LongRows(NamedTuple):
    """The rows of one batch that take the cuDNN path, and what is left for the Triton kernel."""

    rows: list[tuple[int, int, int, int, int]]  # (batch index, table row, first token in q, new tokens, seq_len)
    rest_extend_lens: torch.Tensor | None  # extend_lens with the long rows zeroed; None if no row is left


def plan_long_rows(batch: ForwardBatch) -> LongRows | None:
    """None unless the batch holds a long chunk row (first decided from host ints, with no sync)."""
    if batch.is_decode or batch.max_seq_len < BLOCK_KEYS + MIN_CHUNK or batch.max_extend_len < MIN_CHUNK:
        return None
    # NOTE: the one device->host copy (see the module docstring)
    host = torch.stack([batch.req_rows, batch.extend_starts, batch.extend_lens, batch.seq_lens]).tolist()
    rows = [(i, row, start, ext, seq) for i, (row, start, ext, seq) in enumerate(zip(*host))
            if ext >= MIN_CHUNK and seq - ext >= BLOCK_KEYS]
    if not rows:
        return None
    rest = None
    if len(rows) < len(host[0]):
        rest = batch.extend_lens.clone()
        rest[torch.tensor([r[0] for r in rows], device=rest.device)] = 0  # the Triton kernel skips these rows
    return LongRows(rows, rest)


def _cudnn_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [H, E, D], k/v [Hkv, L, D] contiguous -> (out [H, E, D], lse [H, E] natural log), no mask."""
    num_heads, num_q = q.shape[0], q.shape[1]
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q[None], k[None], v[None], None, True, 0.0, False, False, scale=scale)
    out, lse = res[0], res[1]
    if lse.numel() != num_heads * num_q:
        raise RuntimeError(f"cuDNN attention returned a log-sum-exp of shape {tuple(lse.shape)}, expected "
                           f"{num_heads * num_q} values ([1, {num_heads}, {num_q}])")
    return out[0], lse.reshape(num_heads, num_q)


def attend_long_row(q: torch.Tensor, out: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    req_to_token: torch.Tensor, batch: ForwardBatch, index: int, row: int, start: int, ext: int,
                    seq_len: int, scale: float, config: ExtendConfig | None = None) -> None:
    """out[start:start+ext] <- causal attention of batch row `index` (table row `row`; queries
    q[start:start+ext] [E, H, D] at positions seq_len-ext..seq_len-1) over its keys in the pool."""
    prefix = seq_len - ext
    blocks = prefix // BLOCK_KEYS
    num_heads, head_dim = q.shape[1], q.shape[2]
    q_row = q[start:start + ext]  # [E, H, D]
    # pieces 0..blocks-1 from cuDNN, then the Triton kernel's (one: it gets the whole GPU's width
    # from the chunk's query tiles)
    part_out = torch.empty((ext, num_heads, blocks + 1, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((ext, num_heads, blocks + 1), dtype=torch.float32, device=q.device)
    zero = torch.zeros(1, dtype=torch.int64, device=q.device)
    sl = slice(index, index + 1)
    extend_attention(q_row, k_pool, v_pool, req_to_token, batch.req_rows[sl], batch.seq_lens[sl],
                     batch.extend_lens[sl], zero, ext, scale, config=config, num_splits=1,
                     kv_start=blocks * BLOCK_KEYS, partial=(part_out, part_lse, blocks))
    padded = -(-ext // MIN_CHUNK) * MIN_CHUNK
    qh = q.new_zeros((num_heads, padded, head_dim))  # [H, E', D]; rows past E are discarded
    qh[:, :ext] = q_row.transpose(0, 1)
    k_heads, v_heads = k_pool.transpose(0, 1), v_pool.transpose(0, 1)  # [Hkv, S, D] views
    for j in range(blocks):
        slots = req_to_token[row, j * BLOCK_KEYS:(j + 1) * BLOCK_KEYS]
        o, lse = _cudnn_block(qh, k_heads[:, slots], v_heads[:, slots], scale)  # gathers: [Hkv, BLOCK_KEYS, D]
        part_out[:, :, j].copy_(o[:, :ext].transpose(0, 1))
        part_lse[:, :, j].copy_(lse[:, :ext].transpose(0, 1))
    part_lse[:, :, :blocks].mul_(LOG2E)  # cuDNN's natural-log lse -> base 2, as the kernels write it
    merge_states(part_out, part_lse, blocks + 1, out[start:start + ext])


def cudnn_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.backends.cudnn.is_available() and hasattr(
        torch.ops.aten, "_scaled_dot_product_cudnn_attention")
