"""Extend (prefill) attention over the paged KV pool, ragged batch.

Row b has `extend_lens[b]` new query tokens at q[extend_starts[b] + i] (positions
prefix + i, prefix = seq_lens[b] - extend_lens[b]). Query i sees the row's keys 0..prefix + i.

NOTE: every key, cached prefix and new token alike, is read from the pool through `req_to_token`,
so the new tokens' K/V must be stored first (the backend does: kv_store, then this). One loop
then covers prefix and new tokens, and attention sees exactly the pool-dtype keys that later
decode steps will see.

Grid (query block, q head, row): a program attends BLOCK_M new tokens of one head, streaming
keys in BLOCK_N blocks with an online softmax, stopping at the block's last visible key.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import (check_index, check_rows, dot_precision, dot_upcast, online_softmax_block,
                                        pow2)


@triton.jit
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, req_to_token_ptr, req_rows_ptr, seq_lens_ptr, extend_lens_ptr, extend_starts_ptr,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh, stride_rt,
    sm_scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    m_block = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // GROUP
    ext_len = tl.load(extend_lens_ptr + b)
    seq_len = tl.load(seq_lens_ptr + b)
    ext_start = tl.load(extend_starts_ptr + b)
    row = tl.load(req_rows_ptr + b)
    prefix = seq_len - ext_len

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] index among the row's new tokens
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < ext_len
    d_mask = offs_d < HEAD_DIM
    q_pos = prefix + offs_m  # [BLOCK_M]
    q = tl.load(q_ptr + (ext_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

    # Blocks past the row's new tokens do no work (their loop is empty, their store masked off).
    kv_end = tl.where(m_block * BLOCK_M < ext_len, tl.minimum(seq_len, prefix + (m_block + 1) * BLOCK_M), 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, kv_end, BLOCK_N):
        pos = n0 + offs_n  # [BLOCK_N]
        n_mask = pos < kv_end
        slots = tl.load(req_to_token_ptr + row * stride_rt + pos, mask=n_mask, other=0)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        # NOTE: key 0 is visible to every query row, so the first block makes m_i finite; a later
        # block fully masked for a row leaves m_i unchanged (alpha 1, p 0): no NaN.
        visible = (pos[None, :] <= q_pos[:, None]) & n_mask[None, :]
        m_i, l_i, acc = online_softmax_block(q, k, v, visible, m_i, l_i, acc, sm_scale_log2,
                                             DOT_PRECISION, DOT_UPCAST)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l_i is 0 only on rows masked off below
    tl.store(o_ptr + (ext_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def extend_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, req_to_token: torch.Tensor,
                     req_rows: torch.Tensor, seq_lens: torch.Tensor, extend_lens: torch.Tensor,
                     extend_starts: torch.Tensor, max_extend_len: int, scaling: float,
                     out: torch.Tensor | None = None, block_m: int | None = None,
                     block_n: int | None = None) -> torch.Tensor:
    """q [T, H, D] of the new tokens, pools [num_slots, Hkv, D] -> out [T, H, D] in q's dtype.

    The new tokens' K/V must already be in the pool. `max_extend_len` is a host int >=
    max(extend_lens) (it sizes the grid; no device sync). Blocks default to 64 (32 for float32,
    whose tiles are twice the bytes); both must be powers of two >= 16.
    """
    check_rows("q", q, 3)
    check_rows("k_pool", k_pool, 3)
    check_rows("v_pool", v_pool, 3)
    check_rows("req_to_token", req_to_token, 2)
    num_tokens, num_heads, head_dim = q.shape
    batch = req_rows.shape[0]
    for name, t in (("req_rows", req_rows), ("seq_lens", seq_lens), ("extend_lens", extend_lens),
                    ("extend_starts", extend_starts)):
        check_index(name, t, batch)
    num_kv_heads = k_pool.shape[1]
    if k_pool.shape != v_pool.shape or k_pool.shape[2] != head_dim:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must both be "
                         f"[num_slots, Hkv, {head_dim}]")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if q.dtype != k_pool.dtype or v_pool.dtype != k_pool.dtype:
        raise ValueError(f"q ({q.dtype}) and the pools ({k_pool.dtype}, {v_pool.dtype}) must share a dtype")
    if out is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    check_rows("out", out, 3)
    if batch == 0 or max_extend_len <= 0:
        return out
    default_block = 32 if q.dtype == torch.float32 else 64
    block_m, block_n = block_m or default_block, block_n or default_block
    if min(block_m, block_n) < 16 or block_m & (block_m - 1) or block_n & (block_n - 1):
        raise ValueError(f"block_m and block_n must be powers of two >= 16, got {block_m}, {block_n}")
    grid = (triton.cdiv(max_extend_len, block_m), num_heads, batch)
    _extend_kernel[grid](
        q, k_pool, v_pool, out, req_to_token, req_rows, seq_lens, extend_lens, extend_starts,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        out.stride(0), out.stride(1), req_to_token.stride(0),
        scaling * math.log2(math.e),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=pow2(head_dim, 16), DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=dot_upcast(q.dtype),
        num_warps=4, num_stages=2,  # K and V tiles double-buffered: <= 64 KiB of shared memory
    )
    return out


def extend_attention_ref(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, req_to_token: torch.Tensor,
                         req_rows: torch.Tensor, seq_lens: torch.Tensor, extend_lens: torch.Tensor,
                         extend_starts: torch.Tensor, scaling: float) -> torch.Tensor:
    """Torch reference, float32 softmax with an explicit causal mask, one row at a time."""
    out = torch.zeros_like(q)
    group = q.shape[1] // k_pool.shape[1]
    for b in range(req_rows.shape[0]):
        seq_len, ext_len, start = int(seq_lens[b]), int(extend_lens[b]), int(extend_starts[b])
        slots = req_to_token[req_rows[b], :seq_len]  # [L]
        k = k_pool[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_pool[slots].float().repeat_interleave(group, dim=1)
        qb = q[start:start + ext_len].float()  # [E, H, D]
        scores = torch.einsum("ehd,lhd->hel", qb, k) * scaling  # [H, E, L]
        q_pos = torch.arange(seq_len - ext_len, seq_len, device=q.device)  # [E]
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]  # [E, L]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[start:start + ext_len] = torch.einsum("hel,lhd->ehd", scores.softmax(-1), v).to(q.dtype)
    return out
