"""Matrix-vector product for batch-1 decode: y = x W^T (+ b), optionally with SiLU-and-multiply.

At batch 1 a decode step is a pass over the weights, so each linear layer should stream its weight
at copy bandwidth. cuBLAS reaches 37-68% of it on the small projections of an 8B model on an
H100 (o_proj, qkv, down: benchmarks/results/gpu_attention_h100.md) and splits some into two
launches. Here one program owns BLOCK_N output rows and streams their whole K extent in
BLOCK_K-wide 16-byte loads, accumulating elementwise products in float32 (no tensor cores at
M = 1) and reducing once at the end.

With GATED, W is the fused [2I, K] gate|up projection: program rows j read gate row j and up row
I + j, and write silu(gate) * up ([I] out), so the SiLU-mul kernel and the [2I] intermediate go.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows


class GemvConfig(NamedTuple):
    block_n: int  # output rows per program
    block_k: int  # weight columns per load
    num_warps: int
    num_stages: int


DEFAULT_GEMV = GemvConfig(16, 512, 4, 3)
NARROW_GEMV = GemvConfig(8, 1024, 4, 3)


def choose_gemv_config(n: int, k: int) -> GemvConfig:
    """Per shape, from an H100 sweep of five configs (benchmarks/results/gpu_attention_h100.md):
    few output rows or a long K want more programs with wider loads (o_proj 4096x4096: 14.6 us vs
    16.8; down 4096x14336: 44.1 vs 52.2); wide matrices (qkv, gate|up, lm_head) the default."""
    return NARROW_GEMV if n <= 4096 or k >= 8192 else DEFAULT_GEMV


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output rows
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    rows = w_ptr + offs_n[:, None] * stride_wn  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    if GATED:
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        if EVEN_K:
            x = tl.load(x_ptr + k).to(tl.float32)
            w = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)
        else:
            k_mask = k < K
            x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            w = tl.load(rows + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
        if GATED:
            if EVEN_K:
                u = tl.load(rows + N * stride_wn + k[None, :], mask=n_mask[:, None], other=0.0)
            else:
                u = tl.load(rows + N * stride_wn + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc_up += u.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1)  # [BLOCK_N]
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if GATED:
        up = tl.sum(acc_up, 1)
        if HAS_BIAS:
            up += tl.load(b_ptr + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        # NOTE: rounded to the output dtype first, as the unfused path's projection output is
        gate = y.to(y_ptr.dtype.element_ty).to(tl.float32)
        up = up.to(y_ptr.dtype.element_ty).to(tl.float32)
        y = gate * tl.sigmoid(gate) * up
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False,
         config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K], weight [N, K] (or [2I, K] gate|up with gated) -> [1, N] (or [1, I]) in x's dtype;
    `config` defaults to choose_gemv_config(N, K)."""
    check_rows("x", x, 2)
    check_rows("weight", weight, 2)
    if x.shape[0] != 1 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [1, {weight.shape[1]}] for weight {tuple(weight.shape)}, got {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    n_rows, k = weight.shape
    if gated and n_rows % 2:
        raise ValueError(f"a gated weight must have an even number of rows (gate | up), got {n_rows}")
    n = n_rows // 2 if gated else n_rows
    if bias is not None and bias.shape != (n_rows,):
        raise ValueError(f"bias must be [{n_rows}], got {tuple(bias.shape)}")
    config = config or choose_gemv_config(n_rows, k)
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, GATED=gated, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        EVEN_K=k % config.block_k == 0, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             gated: bool = False) -> torch.Tensor:
    """Torch reference: F.linear in float32 (rounded to x's dtype), then silu(gate) * up if gated."""
    y = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    if not gated:
        return y
    gate, up = y.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
