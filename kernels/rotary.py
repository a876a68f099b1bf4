"""Rotary position embedding applied in place to q and k (neox / HF "rotate_half" layout).

For a head x = [x1 | x2] (halves of D) at position p, with c = cos[p], s = sin[p] of length D/2:
    x1' = x1 * c - x2 * s,    x2' = x2 * c + x1 * s
computed in float32 and rounded once. One program per token rotates all its q and k heads,
loading cos/sin once. Rope scaling (llama3, linear, ...) lives in the inv_freq the model passes to
`rope_cos_sin`; the kernel only reads the table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_index, check_rows, pow2


@triton.jit
def _rotate_heads(base_ptr, stride_h, num_heads, cos, sin, offs_d, d_mask,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate heads 0..num_heads-1 of one token in place; cos/sin [BLOCK_HALF] float32."""
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h < num_heads)[:, None] & d_mask[None, :]
    ptr1 = base_ptr + offs_h[:, None] * stride_h + offs_d[None, :]  # [BLOCK_H, BLOCK_HALF]
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    tl.store(ptr1, (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype), mask=mask)
    tl.store(ptr1 + HALF, (x2f * cos[None, :] + x1f * sin[None, :]).to(x2.dtype), mask=mask)


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
    _rotate_heads(q_ptr + t * stride_qt, stride_qh, num_q_heads, cos, sin, offs_d, d_mask, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr + t * stride_kt, stride_kh, num_k_heads, cos, sin, offs_d, d_mask, HALF, BLOCK_HK)


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
