"""Extend (prefill) attention over the paged KV pool, ragged batch.

Row b has `extend_lens[b]` new query tokens at q[extend_starts[b] + i] (positions
prefix + i, prefix = seq_lens[b] - extend_lens[b]). Query i sees the row's keys 0..prefix + i.

NOTE: every key, cached prefix and new token alike, is read from the pool through `req_to_token`,
so the new tokens' K/V must be stored first (the backend does: kv_store, then this). One loop
then covers prefix and new tokens, and attention sees exactly the pool-dtype keys that later
decode steps will see.

Grid (query tile, kv head x piece, row). A program attends BLOCK_T new tokens of one row times
the G = H / Hkv query heads of one kv head, packed as BLOCK_T * G tile rows (GQA packing: each
K/V block is loaded once for all G heads). The tile's keys split in two ranges:
- [0, full_end): visible to every token of the tile (the cached prefix and the new tokens before
  the tile); streamed in BLOCK_N blocks with no mask at all;
- [full_end, tile_end): the diagonal, masked causally; blocks past the tile's last token are
  never visited (causal block skipping).
With NUM_SPLITS > 1 the key range is cut into NUM_SPLITS block-aligned pieces (split-KV, for rows
with few new tokens over a long prefix, where query tiles alone cannot fill the GPU); each piece
writes its partial output and log-sum-exp and merge_states combines them.

`kv_start` (a multiple of the key block) skips every row's first keys, and `partial` hands the
pieces to the caller instead of merging them: the long-prompt path attends the skipped keys
elsewhere and merges everything itself (runtime/attention/long_prefill.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import (check_index, check_rows, dot_precision, dot_upcast, finish_softmax,
                                        online_softmax_block, pow2)
from radixserve.kernels.merge_states import merge_states

TARGET_PROGRAMS = 264  # two programs per SM of an H100: below this, long key ranges are split
MAX_SCRATCH_BYTES = 256 << 20  # split-KV partials are float32 [T, H, S, D]: cap their size


class ExtendConfig(NamedTuple):
    """Tile shape and launch options of the extend kernel (chosen by measurement, see
    benchmarks/gpu_attention.py)."""

    tile_rows: int  # BLOCK_T * G rows of one program (a power of two >= 16)
    block_n: int  # keys per block (a power of two >= 16)
    num_warps: int
    num_stages: int


# NOTE: float32 tiles are twice the bytes of 16-bit ones. The 16-bit tile was the fastest of those
# measured on an H100 (410 TFLOP/s at 32k tokens; benchmarks/results/gpu_attention_h100.md); its
# three K/V stages fill 224 KiB of shared memory at D <= 128, so larger heads take a smaller tile.
DEFAULT_CONFIG = {torch.float32: ExtendConfig(64, 32, 4, 2), torch.bfloat16: ExtendConfig(128, 128, 8, 3),
                  torch.float16: ExtendConfig(128, 128, 8, 3)}
LARGE_HEAD_CONFIG = ExtendConfig(64, 64, 4, 2)  # head_dim > 128


def default_config(dtype: torch.dtype, head_dim: int) -> ExtendConfig:
    return DEFAULT_CONFIG[dtype] if head_dim <= 128 else LARGE_HEAD_CONFIG


@triton.jit
def _load_kv(k_ptr, v_ptr, slots, kvh, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask,
             MASKED: tl.constexpr):
    k_ptrs = k_ptr + slots[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :]
    v_ptrs = v_ptr + slots[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=mask, other=0.0)
        v = tl.load(v_ptrs, mask=mask, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v  # [BLOCK_N, BLOCK_D] each


@triton.jit(do_not_specialize=["kv_start", "first_piece"])  # NOTE: no recompile per value
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_out_ptr, part_lse_ptr,
    req_to_token_ptr, req_rows_ptr, seq_lens_ptr, extend_lens_ptr, extend_starts_ptr,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh, stride_rt,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh,
    sm_scale_log2, kv_start, first_piece,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, PARTIAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    m_block = tl.program_id(0)
    kvh = tl.program_id(1) // NUM_SPLITS
    split = tl.program_id(1) % NUM_SPLITS
    b = tl.program_id(2)
    ext_len = tl.load(extend_lens_ptr + b)
    m0 = m_block * BLOCK_T  # first new token of the tile
    if m0 >= ext_len:  # tiles past the row's new tokens have nothing to do
        return
    seq_len = tl.load(seq_lens_ptr + b)
    ext_start = tl.load(extend_starts_ptr + b)
    row = tl.load(req_rows_ptr + b)
    prefix = seq_len - ext_len

    # Tile row r: new token m0 + r // GROUP_PAD, query head kvh * GROUP + r % GROUP_PAD.
    offs_r = tl.arange(0, BLOCK_T * GROUP_PAD)
    tok = m0 + offs_r // GROUP_PAD  # [R] index among the row's new tokens
    head = kvh * GROUP + offs_r % GROUP_PAD  # [R]
    r_mask = (tok < ext_len) & (offs_r % GROUP_PAD < GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + (ext_start + tok)[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=r_mask[:, None] & d_mask[None, :], other=0.0)  # [R, BLOCK_D]
    q_pos = prefix + tok  # [R] absolute positions

    tile_end = prefix + tl.minimum(m0 + BLOCK_T, ext_len)  # keys past the tile's last token: never
    full_end = (prefix + m0 + 1) // BLOCK_N * BLOCK_N  # keys before this: visible to every tile row
    piece = tl.cdiv(tl.cdiv(tile_end - kv_start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = kv_start + split * piece
    hi = tl.minimum(lo + piece, tile_end)
    mid = tl.maximum(lo, tl.minimum(hi, full_end))

    m_i = tl.full([BLOCK_T * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_T * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_T * GROUP_PAD, BLOCK_D], tl.float32)
    for n0 in range(lo, mid, BLOCK_N):  # whole blocks, all visible, all < seq_len: no mask
        slots = tl.load(req_to_token_ptr + row * stride_rt + n0 + offs_n)
        k, v = _load_kv(k_ptr, v_ptr, slots, kvh, stride_ks, stride_kh, stride_vs, stride_vh, offs_d,
                        d_mask[None, :], HEAD_DIM != BLOCK_D)
        m_i, l_i, acc = online_softmax_block(q, k, v, None, m_i, l_i, acc, sm_scale_log2, False,
                                             DOT_PRECISION, DOT_UPCAST)
    for n0 in range(mid, hi, BLOCK_N):  # the diagonal
        pos = n0 + offs_n  # [BLOCK_N]
        n_mask = pos < hi
        slots = tl.load(req_to_token_ptr + row * stride_rt + pos, mask=n_mask, other=0)
        k, v = _load_kv(k_ptr, v_ptr, slots, kvh, stride_ks, stride_kh, stride_vs, stride_vh, offs_d,
                        n_mask[:, None] & d_mask[None, :], True)
        visible = (pos[None, :] <= q_pos[:, None]) & n_mask[None, :]
        m_i, l_i, acc = online_softmax_block(q, k, v, visible, m_i, l_i, acc, sm_scale_log2, True,
                                             DOT_PRECISION, DOT_UPCAST)

    out, lse = finish_softmax(m_i, l_i, acc)
    out_mask = r_mask[:, None] & d_mask[None, :]
    t = ext_start + tok  # [R] token index into q / out
    if NUM_SPLITS == 1 and not PARTIAL:
        tl.store(o_ptr + t[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=out_mask)
    else:
        slot = first_piece + split
        tl.store(part_out_ptr + t[:, None] * stride_pt + head[:, None] * stride_ph + slot * stride_ps
                 + offs_d[None, :], out, mask=out_mask)
        tl.store(part_lse_ptr + t * stride_lt + head * stride_lh + slot, lse, mask=r_mask)


def tokens_per_tile(config: ExtendConfig, group: int) -> int:
    return max(1, config.tile_rows // pow2(group))


def choose_extend_splits(config: ExtendConfig, batch: int, max_extend_len: int, max_seq_len: int,
                         num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
                         max_splits: int = 16) -> int:
    """A power of two: split the key range while the grid has fewer than TARGET_PROGRAMS programs
    and every piece keeps >= 4 blocks of keys, within MAX_SCRATCH_BYTES of partials."""
    tiles = math.ceil(max_extend_len / tokens_per_tile(config, num_heads // num_kv_heads))
    by_occupancy = math.ceil(TARGET_PROGRAMS / max(1, tiles * num_kv_heads * batch))
    by_len = max_seq_len // (4 * config.block_n)
    by_scratch = MAX_SCRATCH_BYTES // max(1, num_tokens * num_heads * head_dim * 4)
    want = max(1, min(by_occupancy, by_len, by_scratch, max_splits))
    return 1 << (want.bit_length() - 1)


def extend_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, req_to_token: torch.Tensor,
                     req_rows: torch.Tensor, seq_lens: torch.Tensor, extend_lens: torch.Tensor,
                     extend_starts: torch.Tensor, max_extend_len: int, scaling: float,
                     out: torch.Tensor | None = None, config: ExtendConfig | None = None,
                     max_seq_len: int | None = None, num_splits: int | None = None, kv_start: int = 0,
                     partial: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor | None:
    """q [T, H, D] of the new tokens, pools [num_slots, Hkv, D] -> out [T, H, D] in q's dtype.

    The new tokens' K/V must already be in the pool. `max_extend_len` is a host int >=
    max(extend_lens) (it sizes the grid; no device sync); `max_seq_len` (a host int >=
    max(seq_lens)) lets the launcher split long key ranges over more programs, or `num_splits`
    (a power of two) fixes the split count. `config` defaults to default_config(q's dtype, D).
    Every row attends keys [kv_start, its causal limit) (kv_start: a multiple of config.block_n,
    below every row's first new position). With `partial` = (part_out [T, H, >=P+S, D],
    part_lse [T, H, >=P+S] float32, P), the S pieces are written to slots P.. and not merged
    (returns None).
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
    config = config or default_config(q.dtype, head_dim)
    for name in ("tile_rows", "block_n"):
        n = getattr(config, name)
        if n < 16 or n & (n - 1):
            raise ValueError(f"config.{name} must be a power of two >= 16, got {n}")
    if kv_start < 0 or kv_start % config.block_n:
        raise ValueError(f"kv_start must be a multiple of the key block {config.block_n}, got {kv_start}")
    if out is None and partial is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if out is not None:
        check_rows("out", out, 3)
    if batch == 0 or max_extend_len <= 0:
        return out
    group = num_heads // num_kv_heads
    block_t = tokens_per_tile(config, group)
    if num_splits is None:
        num_splits = 1 if max_seq_len is None else choose_extend_splits(
            config, batch, max_extend_len, max_seq_len, num_tokens, num_heads, num_kv_heads, head_dim)
    if num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two >= 1, got {num_splits}")
    first_piece = 0
    if partial is not None:
        part_out, part_lse, first_piece = partial
        if (part_out.dtype != torch.float32 or part_out.dim() != 4 or part_out.shape[0] < num_tokens
                or part_out.shape[2] < first_piece + num_splits or part_lse.shape[:3] != part_out.shape[:3]):
            raise ValueError(f"partial buffers {tuple(part_out.shape)}, {tuple(part_lse.shape)} must be float32 "
                             f"[>={num_tokens}, {num_heads}, >={first_piece + num_splits}, {head_dim}] and [.., .., ..]")
    elif num_splits > 1:
        part_out = torch.empty((num_tokens, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_tokens, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out, part_lse = out, out  # unused
    o_arg = out if out is not None else part_out  # unused with partial
    grid = (triton.cdiv(max_extend_len, block_t), num_kv_heads * num_splits, batch)
    _extend_kernel[grid](
        q, k_pool, v_pool, o_arg, part_out, part_lse, req_to_token, req_rows, seq_lens, extend_lens, extend_starts,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        o_arg.stride(0), o_arg.stride(1), req_to_token.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        scaling * math.log2(math.e), kv_start, first_piece,
        GROUP=group, GROUP_PAD=pow2(group), HEAD_DIM=head_dim, BLOCK_T=block_t, BLOCK_N=config.block_n,
        BLOCK_D=pow2(head_dim, 16), NUM_SPLITS=num_splits, PARTIAL=partial is not None,
        DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=dot_upcast(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if partial is not None:
        return None
    if num_splits > 1:
        merge_states(part_out, part_lse, num_splits, out)
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
