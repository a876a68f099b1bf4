"""SiLU-and-multiply for gated MLPs: out = silu(gate) * up from the fused [T, 2I] projection."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows, pow2


@triton.jit
def _silu_mul_kernel(x_ptr, o_ptr, stride_x, stride_o, I, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] within I
    mask = offs < I
    gate = tl.load(x_ptr + t * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + t * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(o_ptr + t * stride_o + offs, out.to(o_ptr.dtype.element_ty), mask=mask)


def silu_mul(x: torch.Tensor, out: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """x [T, 2I] (gate first, then up) -> out [T, I] in x's dtype; float32 math."""
    check_rows("x", x, 2)
    if x.shape[1] % 2:
        raise ValueError(f"x must be [T, 2I] (gate | up), got odd last dim {x.shape[1]}")
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty((num_tokens, inter), dtype=x.dtype, device=x.device)
    check_rows("out", out, 2)
    if out.shape != (num_tokens, inter):
        raise ValueError(f"out must be [{num_tokens}, {inter}], got {tuple(out.shape)}")
    if num_tokens:
        block = min(block, pow2(inter))
        _silu_mul_kernel[(num_tokens, triton.cdiv(inter, block))](
            x, out, x.stride(0), out.stride(0), inter, BLOCK=block)
    return out


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Torch reference in float32, rounded once to x's dtype."""
    gate, up = x.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
