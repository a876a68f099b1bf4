"""Int4 weight-only matmul: y = x dequant(W)^T (+ b), dequantising in registers.

Weight layout (radixserve's own, decoded from GPTQ / AWQ / compressed-tensors at load,
radixserve/models/quant_formats.py):
  qweight [N, K/2] uint8: two 4-bit unsigned values per byte along K, the even k in the low nibble;
  scales  [N, ceil(K/G)] float (any float dtype), zeros [N, ceil(K/G)] uint8 (unsigned zero point);
  g_idx   [K] int32 or None: the group of each input column (act-order checkpoints); None: k // G.
  dequant(W)[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], rounded to x's dtype.

One program owns a BLOCK_M x BLOCK_N tile of y and streams K in BLOCK_K steps (BLOCK_K even), reading
each packed byte once and interleaving its two nibbles; when a K block lies inside one group (no
g_idx, BLOCK_K divides G) it reads one scale and zero per row, else one per element. BLOCK_M == 1 (batch-1 decode) multiplies
elementwise and reduces (no tensor cores at M = 1); BLOCK_M >= 16 dequantises a [BLOCK_N, BLOCK_K]
tile and feeds tl.dot.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows, dot_precision, dot_upcast, mma


class Int4Config(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def choose_int4_config(m: int, n: int, k: int) -> Int4Config:
    """Batch 1: the GEMV shape (many programs, wide K loads); otherwise a tensor-core tile."""
    if m == 1:
        return Int4Config(1, 16, 128, 4, 3)
    if m <= 16:
        return Int4Config(16, 64, 64, 4, 3)
    return Int4Config(64, 64, 64, 4, 3)


@triton.jit
def _int4_matmul_kernel(x_ptr, q_ptr, s_ptr, z_ptr, g_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_qn, stride_sn,
                        stride_ym, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr, GROUP_ALIGNED: tl.constexpr,
                        HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    m_mask, n_mask = offs_m < M, offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # [BK]
        k_mask = k < K
        wmask = n_mask[:, None] & k_mask[None, :]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0)  # [BM, BK]
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # [BK/2] bytes
        byte = tl.load(q_ptr + offs_n[:, None] * stride_qn + kb[None, :],
                       mask=n_mask[:, None] & (kb < K // 2)[None, :], other=0).to(tl.int32)  # [BN, BK/2]
        nib = tl.reshape(tl.join(byte & 0xF, byte >> 4), (BLOCK_N, BLOCK_K)).to(tl.float32)  # [BN, BK], k = 2j, 2j+1
        if GROUP_ALIGNED:  # the block lies in one group: one scale and zero per row
            s = tl.load(s_ptr + offs_n * stride_sn + k0 // GROUP, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            z = tl.load(z_ptr + offs_n * stride_sn + k0 // GROUP, mask=n_mask, other=0).to(tl.float32)[:, None]
        else:
            if HAS_GIDX:
                g = tl.load(g_ptr + k, mask=k_mask, other=0)
            else:
                g = k // GROUP
            sz = offs_n[:, None] * stride_sn + g[None, :]  # [BN, BK]
            s = tl.load(s_ptr + sz, mask=wmask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz, mask=wmask, other=0).to(tl.float32)
        w = ((nib - z) * s).to(x_ptr.dtype.element_ty)  # [BN, BK], rounded like the reference's weight
        if BLOCK_M == 1:
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), 1)[None, :]
        else:
            acc += mma(x, tl.trans(w), PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _check(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           g_idx: torch.Tensor | None, group_size: int, bias: torch.Tensor | None) -> tuple[int, int, int]:
    check_rows("x", x, 2)
    for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros)):
        check_rows(name, t, 2)
    m, k = x.shape
    n = qweight.shape[0]
    if qweight.dtype != torch.uint8 or zeros.dtype != torch.uint8:
        raise ValueError(f"qweight and zeros must be uint8, got {qweight.dtype} and {zeros.dtype}")
    if k % 2 or qweight.shape[1] != k // 2:
        raise ValueError(f"qweight must be [N, K/2] = [{n}, {k // 2}] for x {tuple(x.shape)} (K even), "
                         f"got {tuple(qweight.shape)}")
    groups = -(-k // group_size) if g_idx is None else scales.shape[1]
    if scales.shape != (n, groups) or zeros.shape != (n, groups) or scales.stride() != zeros.stride():
        raise ValueError(f"scales and zeros must both be [{n}, {groups}] with equal strides, got "
                         f"{tuple(scales.shape)} and {tuple(zeros.shape)}")
    if g_idx is not None and (g_idx.shape != (k,) or g_idx.dtype != torch.int32):
        raise ValueError(f"g_idx must be int32 [{k}], got {g_idx.dtype} {tuple(g_idx.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    return m, n, k


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int, g_idx: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                config: Int4Config | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x's dtype (layout in the module docstring)."""
    m, n, k = _check(x, qweight, scales, zeros, g_idx, group_size, bias)
    config = config or choose_int4_config(m, n, k)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n))
    _int4_matmul_kernel[grid](
        x, qweight, scales, zeros, g_idx if g_idx is not None else qweight, bias if bias is not None else scales, y,
        m, n, k, x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0),
        GROUP=group_size, HAS_GIDX=g_idx is not None, GROUP_ALIGNED=g_idx is None and group_size % config.block_k == 0,
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, PRECISION=dot_precision(x.dtype),
        UPCAST=dot_upcast(x.dtype), num_warps=config.num_warps, num_stages=config.num_stages)
    return y


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                    g_idx: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Torch reference: the dense weight [N, K] in `dtype`."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1).reshape(n, k).float()  # [N, K], even k = low nibble
    if g_idx is None and k % group_size == 0:  # contiguous groups: broadcast, no gather
        q = q.view(n, k // group_size, group_size)
        return ((q - zeros.float()[..., None]) * scales.float()[..., None]).view(n, k).to(dtype)
    g = (torch.arange(k, device=qweight.device) // group_size) if g_idx is None else g_idx.long()
    return ((q - zeros.float()[:, g]) * scales.float()[:, g]).to(dtype)


def int4_matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, g_idx: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference (and the CPU path): dequantise, then F.linear in float32, rounded to x's dtype."""
    _check(x, qweight, scales, zeros, g_idx, group_size, bias)
    w = int4_dequantize(qweight, scales, zeros, group_size, g_idx, x.dtype).float()
    y = torch.nn.functional.linear(x.float(), w, None if bias is None else bias.float())
    return y.to(x.dtype)
