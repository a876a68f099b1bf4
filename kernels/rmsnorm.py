"""RMSNorm, and fused residual add + RMSNorm, one program per row.

Numerics follow HF Llama/Qwen: statistics in float32; the normalised row is rounded to the input
dtype before the weight multiply; with a residual the sum is rounded to the input dtype (it is the
new residual) before it is normalised.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows, pow2


class AddRMSNormResult(NamedTuple):
    out: torch.Tensor  # [..., N] rmsnorm(x + residual) * weight
    residual: torch.Tensor  # [..., N] x + residual (the caller's residual tensor, updated in place)


@triton.jit
def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, o_ptr, stride_x, stride_r, stride_o, N, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)  # [BLOCK_N] input dtype
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_ptr + row * stride_r + offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, 0) / N + eps)
    normed = (xf * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * stride_o + offs, (normed * w).to(o_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    n = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != n:
        raise ValueError(f"weight must be [{n}] to match x's last dim, got {tuple(weight.shape)}")
    if x.stride(-1) != 1:
        raise ValueError("x must be contiguous in its last dim; call .contiguous() first")
    x2 = x.reshape(-1, n)  # [R, N]
    out = torch.empty_like(x2)
    res2 = x2
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match x "
                             f"{tuple(x.shape)} {x.dtype}")
        res2 = residual.view(-1, n)  # a view, so the in-place update reaches the caller
        check_rows("residual", res2, 2)
    if x2.shape[0]:
        _rmsnorm_kernel[(x2.shape[0],)](
            x2, res2, weight, out, x2.stride(0), res2.stride(0), out.stride(0), n, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_N=pow2(n),
        )
    return out.view(x.shape)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N], weight [N] -> [..., N] in x's dtype."""
    return _launch(x, None, weight, eps)


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> AddRMSNormResult:
    """residual <- x + residual (in place); returns (rmsnorm(residual) * weight, residual)."""
    return AddRMSNormResult(_launch(x, residual, weight, eps), residual)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm.forward."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed


def fused_add_rmsnorm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                          eps: float) -> AddRMSNormResult:
    """Out of place: (rmsnorm(x + residual) * weight, x + residual)."""
    new_residual = x + residual
    return AddRMSNormResult(rmsnorm_ref(new_residual, weight, eps), new_residual)
