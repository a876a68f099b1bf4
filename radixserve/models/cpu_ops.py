"""Elementwise ops of the decoder on CPU with fewer ops and allocations: RMSNorm (+ residual),
rotary on q and k in one pass, SiLU*mul.

At decode batch sizes these tensors are tiny ([B, hidden]) and each torch op costs mostly its
dispatch and its output allocation, so the savings come from doing the same arithmetic in
fewer, in-place ops. The arithmetic and its order are those of the plain torch path in layers.py
(which follows the transformers implementations), so results are bitwise equal to it
(tests/models/test_cpu_ops.py). torch.compile was measured as the alternative and not taken: see
benchmarks/results/cpu_elementwise.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, N] -> weight * x / rms(x), computed in float32."""
    x32 = x.float()
    scale = x32.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()  # [T, 1]
    if x.dtype == torch.float32:
        return torch.mul(x32, scale).mul_(weight)
    return weight * (x32 * scale).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(x + residual), x + residual); the sum is written into `residual` in place."""
    residual.add_(x)
    return rms_norm(residual, weight, eps), residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate then up) -> silu(gate) * up [T, I], contiguous."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> None:
    """Rotate-half rope on q [T, H, D] and k [T, Hkv, D] in place; cos/sin [P, D/2] float32.

    When k follows q in memory (both views of one qkv projection output), both rotate as one
    [T, H + Hkv, D] tensor.
    """
    c = cos[positions].unsqueeze(1).to(q.dtype)  # [T, 1, D/2]
    s = sin[positions].unsqueeze(1).to(q.dtype)
    both = _adjacent(q, k)
    for x in ((both,) if both is not None else (q, k)):
        _rotate_(x, c, s)


def _rotate_(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> None:
    """x [T, N, D] <- (x1 * c - x2 * s, x2 * c + x1 * s), the halves x1, x2 of its last dim."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    x1_s = x1 * s
    x1.mul_(c).sub_(x2 * s)
    x2.mul_(c).add_(x1_s)


def _adjacent(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """q and k as one [T, H + Hkv, D] view when k's heads directly follow q's in every row."""
    t, h, d = q.shape
    if (k.shape[0] != t or k.shape[2] != d or q.dtype != k.dtype or q.stride() != k.stride()
            or q.stride(2) != 1 or q.stride(1) != d
            or k.data_ptr() != q.data_ptr() + h * d * q.element_size()):
        return None
    return q.as_strided((t, h + k.shape[1], d), q.stride())
