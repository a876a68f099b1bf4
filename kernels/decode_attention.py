"""Decode attention over the paged KV pool: one query token per row, split-KV.

Stage 1 (grid B x Hkv x S): program (b, kvh, s) reads the s-th of S equal pieces of row b's
context through `req_to_token` and attends all G = H / Hkv query heads of kv head `kvh` at once,
so each K/V block is loaded once per kv head. It writes the piece's normalised partial output and
its log-sum-exp (base 2) to caller-allocated scratch.
Stage 2 (grid B x H): merges the S partials of each head with weights 2^(lse_s - max lse).

A piece is `cdiv(seq_len, S)` tokens, computed on device from `seq_lens`, so any S is correct for
any length (S only changes the parallelism); a fixed S suits CUDA-graph replay.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import (check_index, check_rows, dot_precision, dot_upcast, online_softmax_block,
                                        pow2)

MIN_TOKENS_PER_SPLIT = 128  # below this a split's launch overhead outweighs its parallelism
TARGET_PROGRAMS = 512  # enough stage-1 programs to fill a large GPU a few times over


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, req_to_token_ptr, req_rows_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_rt,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    sm_scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(req_rows_ptr + b)
    seq_len = tl.load(seq_lens_ptr + b)
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_g  # [BLOCK_G]
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n  # [BLOCK_N]
        n_mask = pos < end
        slots = tl.load(req_to_token_ptr + row * stride_rt + pos, mask=n_mask, other=0)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        # NOTE: every block holds >= 1 valid key (n0 < end), so m_i is finite after the first.
        m_i, l_i, acc = online_softmax_block(q, k, v, n_mask[None, :], m_i, l_i, acc, sm_scale_log2,
                                             DOT_PRECISION, DOT_UPCAST)

    if end > start:  # empty pieces (seq_len < S) leave their scratch untouched; stage 2 skips them
        out = acc / l_i[:, None]
        lse = m_i + tl.log2(l_i)
        tl.store(part_out_ptr + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps
                 + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
        tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, seq_lens_ptr, o_ptr,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + b)
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = (offs_s < NUM_SPLITS) & (offs_s * split_len < seq_len)  # non-empty pieces
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(part_lse_ptr + b * stride_lb + h * stride_lh + offs_s, mask=s_mask,
                  other=float("-inf"))  # [BLOCK_S]
    w = tl.exp2(lse - tl.max(lse, 0))  # piece 0 is never empty, so the max is finite
    part = tl.load(part_out_ptr + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps
                   + offs_d[None, :], mask=s_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)  # [BLOCK_D]
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=d_mask)


def choose_num_kv_splits(max_seq_len: int, batch_size: int, num_kv_heads: int, max_splits: int = 16) -> int:
    """A power of two <= max_splits: split long contexts until the grid has ~TARGET_PROGRAMS programs."""
    by_len = math.ceil(max_seq_len / MIN_TOKENS_PER_SPLIT)
    by_occupancy = math.ceil(TARGET_PROGRAMS / max(1, batch_size * num_kv_heads))
    want = max(1, min(by_len, by_occupancy, max_splits))
    return 1 << (want.bit_length() - 1)


def decode_scratch(max_batch: int, num_heads: int, head_dim: int, max_splits: int,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate the (part_out [B, H, S, D], part_lse [B, H, S]) float32 scratch for decode_attention."""
    part_out = torch.empty((max_batch, num_heads, max_splits, head_dim), dtype=torch.float32, device=device)
    part_lse = torch.empty((max_batch, num_heads, max_splits), dtype=torch.float32, device=device)
    return part_out, part_lse


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens: torch.Tensor,
                     scaling: float, num_kv_splits: int, part_out: torch.Tensor, part_lse: torch.Tensor,
                     out: torch.Tensor | None = None, block_n: int = 64) -> torch.Tensor:
    """q [B, H, D] (token b belongs to row b), pools [num_slots, Hkv, D] -> out [B, H, D] in q's dtype.

    `part_out`/`part_lse` come from `decode_scratch` with max_batch >= B and max_splits >=
    num_kv_splits. Every seq_len must be >= 1.
    """
    check_rows("q", q, 3)
    check_rows("k_pool", k_pool, 3)
    check_rows("v_pool", v_pool, 3)
    check_rows("req_to_token", req_to_token, 2)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[1]
    check_index("req_rows", req_rows, batch)
    check_index("seq_lens", seq_lens, batch)
    if k_pool.shape != v_pool.shape or k_pool.shape[2] != head_dim:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must both be "
                         f"[num_slots, Hkv, {head_dim}]")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if q.dtype != k_pool.dtype or v_pool.dtype != k_pool.dtype:
        raise ValueError(f"q ({q.dtype}) and the pools ({k_pool.dtype}, {v_pool.dtype}) must share a dtype")
    if num_kv_splits < 1 or num_kv_splits & (num_kv_splits - 1):
        raise ValueError(f"num_kv_splits must be a power of two >= 1, got {num_kv_splits}")
    if (part_out.dtype != torch.float32 or not part_out.is_contiguous() or part_out.shape[0] < batch
            or part_out.shape[1:] != (num_heads, part_out.shape[2], head_dim) or part_out.shape[2] < num_kv_splits
            or not part_lse.is_contiguous() or part_lse.shape != part_out.shape[:3]):
        raise ValueError("part_out/part_lse must come from decode_scratch(max_batch >= B, num_heads, head_dim, "
                         f"max_splits >= {num_kv_splits}); got {tuple(part_out.shape)}, {tuple(part_lse.shape)}")
    if out is None:
        out = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)
    check_rows("out", out, 3)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    block_d = pow2(head_dim, 16)
    _decode_split_kernel[(batch, num_kv_heads, num_kv_splits)](
        q, k_pool, v_pool, req_to_token, req_rows, seq_lens, part_out, part_lse,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        req_to_token.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        scaling * math.log2(math.e),
        GROUP=group, HEAD_DIM=head_dim, NUM_SPLITS=num_kv_splits,
        BLOCK_G=pow2(group, 16), BLOCK_D=block_d, BLOCK_N=block_n, DOT_PRECISION=dot_precision(q.dtype),
        DOT_UPCAST=dot_upcast(q.dtype),
        num_warps=4, num_stages=2,  # K and V tiles double-buffered: <= 128 KiB of shared memory (fp32, D 128)
    )
    _decode_reduce_kernel[(batch, num_heads)](
        part_out, part_lse, seq_lens, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, NUM_SPLITS=num_kv_splits, BLOCK_S=pow2(num_kv_splits, 2), BLOCK_D=block_d,
    )
    return out


def decode_attention_ref(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                         req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens: torch.Tensor,
                         scaling: float) -> torch.Tensor:
    """Torch reference, float32 softmax, one row at a time: q [B, H, D] -> [B, H, D] in q's dtype."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_pool.shape[1]
    for b in range(q.shape[0]):
        slots = req_to_token[req_rows[b], :seq_lens[b]]  # [L]
        k = k_pool[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_pool[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * scaling  # [H, L]
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out
