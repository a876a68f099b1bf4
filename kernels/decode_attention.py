"""Decode attention over the paged KV pool: one query token per row, split-KV.

Stage 1 (grid B x Hkv x S): program (b, kvh, s) reads the s-th of S equal pieces of row b's
keys through `req_to_token` and attends all G = H / Hkv query heads of kv head `kvh` at once,
so each K/V block is loaded once per kv head. It writes the piece's normalised partial output and
its log-sum-exp (base 2) to caller-allocated scratch (an empty piece writes lse -inf).
Stage 2 (merge_states, grid B x H): merges the S partials of each head by their log-sum-exp.
With S == 1 (and no cascade), stage 1 writes the output itself and stage 2 is skipped.

A piece is `cdiv(len, S)` keys, computed on device from the lengths, so any S is correct for any
length (S only changes the parallelism); a fixed S suits CUDA-graph replay. S is a run-time
argument, so the graphs of different batch sizes share compiled kernels.

Row b attends keys [row_starts[b], seq_lens[b]) (row_starts defaults to 0): cascade attention
(cascade_attention.py) attends the shared prefix [0, row_starts[b]) separately and merges it in
stage 2.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import (check_index, check_rows, dot_precision, dot_upcast, finish_softmax,
                                        online_softmax_block, pow2)
from radixserve.kernels.merge_states import merge_states

MIN_TOKENS_PER_SPLIT = 128  # below this a split's launch overhead outweighs its parallelism
TARGET_PROGRAMS = 512  # enough stage-1 programs to fill a large GPU a few times over


@triton.jit(do_not_specialize=["num_splits"])  # NOTE: no recompile per value
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, req_to_token_ptr, req_rows_ptr, seq_lens_ptr, row_starts_ptr, part_out_ptr, part_lse_ptr,
    o_ptr,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_rt,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    sm_scale_log2, num_splits,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_STARTS: tl.constexpr,
    DIRECT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(req_rows_ptr + b)
    seq_len = tl.load(seq_lens_ptr + b)
    if HAS_STARTS:
        first = tl.load(row_starts_ptr + b)
    else:
        first = 0
    split_len = tl.cdiv(seq_len - first, num_splits)
    start = first + split * split_len
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
        m_i, l_i, acc = online_softmax_block(q, k, v, n_mask[None, :], m_i, l_i, acc, sm_scale_log2, True,
                                             DOT_PRECISION, DOT_UPCAST)

    out, lse = finish_softmax(m_i, l_i, acc)
    out_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:  # one piece covering the whole row: it is the result
        tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_out_ptr + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + offs_d[None, :],
                 out, mask=out_mask)
        tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


def choose_num_kv_splits(max_seq_len: int, batch_size: int, num_kv_heads: int, max_splits: int = 16) -> int:
    """A power of two <= max_splits: split long contexts until the grid has ~TARGET_PROGRAMS programs."""
    by_len = math.ceil(max_seq_len / MIN_TOKENS_PER_SPLIT)
    by_occupancy = math.ceil(TARGET_PROGRAMS / max(1, batch_size * num_kv_heads))
    want = max(1, min(by_len, by_occupancy, max_splits))
    return 1 << (want.bit_length() - 1)


def decode_scratch(max_batch: int, num_heads: int, head_dim: int, max_splits: int,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate the (part_out [B, H, S, D], part_lse [B, H, S]) float32 scratch for decode_attention
    (S = max tail splits + max prefix splits for cascade attention)."""
    part_out = torch.empty((max_batch, num_heads, max_splits, head_dim), dtype=torch.float32, device=device)
    part_lse = torch.empty((max_batch, num_heads, max_splits), dtype=torch.float32, device=device)
    return part_out, part_lse


def check_decode_inputs(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, req_to_token: torch.Tensor,
                        part_out: torch.Tensor, part_lse: torch.Tensor, num_pieces: int) -> None:
    """The shape, dtype and scratch checks shared by decode and cascade attention."""
    check_rows("q", q, 3)
    check_rows("k_pool", k_pool, 3)
    check_rows("v_pool", v_pool, 3)
    check_rows("req_to_token", req_to_token, 2)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[1]
    if k_pool.shape != v_pool.shape or k_pool.shape[2] != head_dim:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must both be "
                         f"[num_slots, Hkv, {head_dim}]")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if q.dtype != k_pool.dtype or v_pool.dtype != k_pool.dtype:
        raise ValueError(f"q ({q.dtype}) and the pools ({k_pool.dtype}, {v_pool.dtype}) must share a dtype")
    if (part_out.dtype != torch.float32 or not part_out.is_contiguous() or part_out.shape[0] < batch
            or part_out.shape[1:] != (num_heads, part_out.shape[2], head_dim) or part_out.shape[2] < num_pieces
            or not part_lse.is_contiguous() or part_lse.shape != part_out.shape[:3]):
        raise ValueError("part_out/part_lse must come from decode_scratch(max_batch >= B, num_heads, head_dim, "
                         f"max_splits >= {num_pieces}); got {tuple(part_out.shape)}, {tuple(part_lse.shape)}")


def decode_split_launch(q, k_pool, v_pool, req_to_token, req_rows, seq_lens, row_starts, scaling: float,
                        num_kv_splits: int, part_out, part_lse, out, direct: bool, block_n: int) -> None:
    """Stage 1 only (no checks): the launcher shared with cascade attention."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[1]
    group = num_heads // num_kv_heads
    _decode_split_kernel[(batch, num_kv_heads, num_kv_splits)](
        q, k_pool, v_pool, req_to_token, req_rows, seq_lens, row_starts if row_starts is not None else seq_lens,
        part_out, part_lse, out,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        req_to_token.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        scaling * math.log2(math.e), num_kv_splits,
        GROUP=group, HEAD_DIM=head_dim, HAS_STARTS=row_starts is not None,
        DIRECT=direct, BLOCK_G=pow2(group, 16), BLOCK_D=pow2(head_dim, 16), BLOCK_N=block_n,
        DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=dot_upcast(q.dtype),
        num_warps=4, num_stages=2,  # K and V tiles double-buffered: <= 128 KiB of shared memory (fp32, D 128)
    )


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens: torch.Tensor,
                     scaling: float, num_kv_splits: int, part_out: torch.Tensor, part_lse: torch.Tensor,
                     out: torch.Tensor | None = None, block_n: int = 64) -> torch.Tensor:
    """q [B, H, D] (token b belongs to row b), pools [num_slots, Hkv, D] -> out [B, H, D] in q's dtype.

    `part_out`/`part_lse` come from `decode_scratch` with max_batch >= B and max_splits >=
    num_kv_splits. Every seq_len must be >= 1.
    """
    check_decode_inputs(q, k_pool, v_pool, req_to_token, part_out, part_lse, num_kv_splits)
    batch = q.shape[0]
    check_index("req_rows", req_rows, batch)
    check_index("seq_lens", seq_lens, batch)
    if num_kv_splits < 1 or num_kv_splits & (num_kv_splits - 1):
        raise ValueError(f"num_kv_splits must be a power of two >= 1, got {num_kv_splits}")
    if out is None:
        out = torch.empty_like(q)
    check_rows("out", out, 3)
    if batch == 0:
        return out
    direct = num_kv_splits == 1
    decode_split_launch(q, k_pool, v_pool, req_to_token, req_rows, seq_lens, None, scaling, num_kv_splits,
                        part_out, part_lse, out, direct, block_n)
    if not direct:
        merge_states(part_out, part_lse, num_kv_splits, out)
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
