"""Rotary position embedding applied in place to q and k (neox / HF "rotate_half" layout).

For a head x = [x1 | x2] (halves of D) at position p, with c = cos[p], s = sin[p] of length D/2:
    x1' = x1 * c - x2 * s,    x2' = x2 * c + x1 * s
computed in float32 and rounded once. One program per token rotates all its q and k heads,
loading cos/sin once. Rope scaling (llama3, linear, ...) lives in the inv_freq the model passes to
`rope_cos_sin`; the kernel only reads the table.

`apply_rotary_store` fuses the KV store of the attention backend into the same program: q is
rotated in place, the rotated k and the unchanged v go straight to their pool slot (k itself is
left as it was). One launch per layer instead of two, and k makes one trip through memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_index, check_rows, pow2


@triton.jit
def _rotate_heads(src_ptr, dst_ptr, stride_src_h, stride_dst_h, num_heads, cos, sin, offs_d, d_mask,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate heads 0..num_heads-1 of one token from src to dst (may be the same memory), rounding
    to dst's dtype; cos/sin [BLOCK_HALF] float32."""
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h < num_heads)[:, None] & d_mask[None, :]
    src1 = src_ptr + offs_h[:, None] * stride_src_h + offs_d[None, :]  # [BLOCK_H, BLOCK_HALF]
    dst1 = dst_ptr + offs_h[:, None] * stride_dst_h + offs_d[None, :]
    x1 = tl.load(src1, mask=mask, other=0.0)
    x2 = tl.load(src1 + HALF, mask=mask, other=0.0)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    # NOTE: rounded to the source dtype first (what the unfused path stores in k), then to the
    # destination's, so the pool holds the same values either way.
    y1 = (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype)
    y2 = (x2f * cos[None, :] + x1f * sin[None, :]).to(x2.dtype)
    tl.store(dst1, y1.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst1 + HALF, y2.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_cos, stride_sin, num_q_heads, num_k_heads,
                   HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr):
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    cos = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + t * stride_qt, q_ptr + t * stride_qt, stride_qh, stride_qh, num_q_heads, cos, sin,
                  offs_d, d_mask, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr + t * stride_kt, k_ptr + t * stride_kt, stride_kh, stride_kh, num_k_heads, cos, sin,
                  offs_d, d_mask, HALF, BLOCK_HK)


@triton.jit
def _rotary_store_kernel(q_ptr, k_ptr, v_ptr, k_pool_ptr, v_pool_ptr, slots_ptr, pos_ptr, cos_ptr, sin_ptr,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_pk, stride_pkh, stride_pv, stride_pvh, stride_cos, stride_sin,
                         num_q_heads, num_k_heads,
                         HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                         BLOCK_HK: tl.constexpr):
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    slot = tl.load(slots_ptr + t)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    cos = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + t * stride_qt, q_ptr + t * stride_qt, stride_qh, stride_qh, num_q_heads, cos, sin,
                  offs_d, d_mask, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr + t * stride_kt, k_pool_ptr + slot * stride_pk, stride_kh, stride_pkh, num_k_heads,
                  cos, sin, offs_d, d_mask, HALF, BLOCK_HK)
    offs_h = tl.arange(0, BLOCK_HK)
    mask = (offs_h < num_k_heads)[:, None] & d_mask[None, :]
    for half in tl.static_range(2):  # v: a plain copy, in the two halves the offsets describe
        src = v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + half * HALF + offs_d[None, :]
        dst = v_pool_ptr + slot * stride_pv + offs_h[:, None] * stride_pvh + half * HALF + offs_d[None, :]
        tl.store(dst, tl.load(src, mask=mask, other=0.0).to(v_pool_ptr.dtype.element_ty), mask=mask)


def rope_cos_sin(inv_freq: torch.Tensor, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """inv_freq [D/2] -> (cos, sin), each [max_positions, D/2] float32 on inv_freq's device."""
    pos = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(pos, inv_freq.float())  # [P, D/2]
    return freqs.cos(), freqs.sin()


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor) -> None:
    """q [T, H, D], k [T, Hkv, D] rotated in place; positions [T] int64; cos/sin [P, D/2]."""
    check_rows("q", q, 3)
    check_rows("k", k, 3)
    check_rows("cos", cos, 2)
    check_rows("sin", sin, 2)
    num_tokens, num_q_heads, head_dim = q.shape
    check_index("positions", positions, num_tokens)
    if k.shape[0] != num_tokens or k.shape[2] != head_dim or head_dim % 2:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [T, H, D] with the same T "
                         f"and an even D")
    half = head_dim // 2
    if cos.shape != sin.shape or cos.shape[1] != half:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must be [max_positions, {half}]")
    if num_tokens == 0:
        return
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos.stride(0), sin.stride(0), num_q_heads, k.shape[1],
        HALF=half, BLOCK_HALF=pow2(half), BLOCK_HQ=pow2(num_q_heads), BLOCK_HK=pow2(k.shape[1]),
    )


def apply_rotary_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                       out_slots: torch.Tensor) -> None:
    """Rotate q [T, H, D] in place; write rotated k and v ([T, Hkv, D]) to k_pool/v_pool [S, Hkv, D]
    at rows out_slots [T] int64. k/v may be strided views (slices of a fused qkv projection)."""
    check_rows("q", q, 3)
    for name, t in (("k", k), ("v", v), ("k_pool", k_pool), ("v_pool", v_pool)):
        check_rows(name, t, 3)
    check_rows("cos", cos, 2)
    check_rows("sin", sin, 2)
    num_tokens, num_q_heads, head_dim = q.shape
    check_index("positions", positions, num_tokens)
    check_index("out_slots", out_slots, num_tokens)
    if k.shape != v.shape or k.shape[0] != num_tokens or k.shape[2] != head_dim or head_dim % 2:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must be [T, H, D] / "
                         f"[T, Hkv, D] with the same T and an even D")
    if k_pool.shape != v_pool.shape or k_pool.shape[1:] != k.shape[1:]:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must be "
                         f"[num_slots, {k.shape[1]}, {head_dim}]")
    half = head_dim // 2
    if cos.shape != sin.shape or cos.shape[1] != half:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must be [max_positions, {half}]")
    if num_tokens == 0:
        return
    _rotary_store_kernel[(num_tokens,)](
        q, k, v, k_pool, v_pool, out_slots, positions, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1), cos.stride(0), sin.stride(0),
        num_q_heads, k.shape[1],
        HALF=half, BLOCK_HALF=pow2(half), BLOCK_HQ=pow2(num_q_heads), BLOCK_HK=pow2(k.shape[1]),
    )


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place, HF style: x * cos + rotate_half(x) * sin in float32, rounded once."""
    c = torch.cat([cos[positions], cos[positions]], dim=-1)[:, None, :].float()  # [T, 1, D]
    s = torch.cat([sin[positions], sin[positions]], dim=-1)[:, None, :].float()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x1, x2 = x.chunk(2, dim=-1)
        return x * c + torch.cat([-x2, x1], dim=-1) * s

    return rotate(q).to(q.dtype), rotate(k).to(k.dtype)
