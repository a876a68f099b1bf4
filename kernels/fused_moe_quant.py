"""The fused mixture-of-experts MLP (kernels/fused_moe.py) over quantized experts, dequantising each
expert's weight tile in registers.

Expert layouts (radixserve/models/moe_quant.py), per stack (gate_up: N = 2I, K = H; down: N = H, K = I):
  int4: qweight [E, N, K/2] uint8 (even k in the low nibble), scales [E, N, ceil(K/G)] float,
        zeros [E, N, ceil(K/G)] uint8; w[e, n, k] = (q - zeros[e, n, k // G]) * scales[e, n, k // G].
  fp8:  weight [E, N, K] float8_e4m3fn, scale [E, N] float32; w[e, n, k] = weight * scale[e, n].
Each dequantised tile is rounded to x's dtype, as the torch loop's weights are (kernels/fused_moe.py
moe_ref_loop on the expert method's `dense`), and the routing, pair sorting, SiLU·mul and fixed-order top-k sum are the
dense kernel's.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import dot_precision, dot_upcast, mma
from radixserve.kernels.fused_moe import MoeConfig, align_by_expert, choose_moe_config

INT4, FP8 = 1, 2


class QuantStack(NamedTuple):
    """One stack of quantized experts: int4 (weight = qweight, scales, zeros) or fp8 (weight, scales = the
    per-row scale [E, N], zeros None)."""
    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    group: int  # int4: input columns per scale (K for one per row); fp8: unused


@triton.jit
def _w_tile(w_ptr, s_ptr, z_ptr, e, rows, n_mask, k0, K, stride_we, stride_wn, stride_se, stride_sn,
            QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Expert e's rows `rows` [BN], columns k0..k0+BK, dequantised -> [BK, BN] float32."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_mask = k < K
    wmask = n_mask[:, None] & k_mask[None, :]  # [BN, BK]
    w_base = w_ptr + e.to(tl.int64) * stride_we
    s_base = s_ptr + e.to(tl.int64) * stride_se
    if QUANT == 1:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(w_base + rows[:, None] * stride_wn + kb[None, :],
                       mask=n_mask[:, None] & (kb < K // 2)[None, :], other=0).to(tl.int32)  # [BN, BK/2]
        nib = tl.reshape(tl.join(byte & 0xF, byte >> 4), (BLOCK_N, BLOCK_K)).to(tl.float32)
        sz = rows[:, None] * stride_sn + (k // GROUP)[None, :]  # [BN, BK]
        s = tl.load(s_base + sz, mask=wmask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + e.to(tl.int64) * stride_se + sz, mask=wmask, other=0).to(tl.float32)
        w = (nib - z) * s
    else:
        w = tl.load(w_base + rows[:, None] * stride_wn + k[None, :], mask=wmask, other=0.0).to(tl.float32)
        w = w * tl.load(s_base + rows * stride_sn, mask=n_mask, other=0.0)[:, None]
    return tl.trans(w)


@triton.jit
def _qgate_up_kernel(x_ptr, w_ptr, s_ptr, z_ptr, h_ptr, pairs_ptr, block_expert_ptr, P, TOP_K, H, I,
                     stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_hp,
                     QUANT: tl.constexpr, GROUP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0)
    e = tl.load(block_expert_ptr + b)
    if e < 0:
        return
    pair = tl.load(pairs_ptr + b * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = pair < P
    token = tl.where(valid, pair // TOP_K, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < I
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + token[:, None] * stride_xt + k[None, :], mask=valid[:, None] & (k < H)[None, :],
                    other=0.0)
        wg = _w_tile(w_ptr, s_ptr, z_ptr, e, offs_n, n_mask, k0, H, stride_we, stride_wn, stride_se, stride_sn,
                     QUANT, GROUP, BLOCK_N, BLOCK_K).to(x_ptr.dtype.element_ty)
        wu = _w_tile(w_ptr, s_ptr, z_ptr, e, I + offs_n, n_mask, k0, H, stride_we, stride_wn, stride_se,
                     stride_sn, QUANT, GROUP, BLOCK_N, BLOCK_K).to(x_ptr.dtype.element_ty)
        acc_g += mma(x, wg, PRECISION, UPCAST)
        acc_u += mma(x, wu, PRECISION, UPCAST)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + pair[:, None] * stride_hp + offs_n[None, :], h.to(h_ptr.dtype.element_ty),
             mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _qdown_kernel(h_ptr, w_ptr, s_ptr, z_ptr, rw_ptr, y_ptr, pairs_ptr, block_expert_ptr, P, H, I,
                  stride_hp, stride_we, stride_wn, stride_se, stride_sn, stride_yp,
                  QUANT: tl.constexpr, GROUP: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0)
    e = tl.load(block_expert_ptr + b)
    if e < 0:
        return
    pair = tl.load(pairs_ptr + b * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = pair < P
    safe = tl.where(valid, pair, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < H
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        h = tl.load(h_ptr + safe[:, None] * stride_hp + k[None, :], mask=valid[:, None] & (k < I)[None, :],
                    other=0.0)
        w = _w_tile(w_ptr, s_ptr, z_ptr, e, offs_n, n_mask, k0, I, stride_we, stride_wn, stride_se, stride_sn,
                    QUANT, GROUP, BLOCK_N, BLOCK_K).to(h_ptr.dtype.element_ty)
        acc += mma(h, w, PRECISION, UPCAST)
    acc = acc.to(h_ptr.dtype.element_ty).to(tl.float32)  # rounded like the reference's expert output
    rw = tl.load(rw_ptr + safe, mask=valid, other=0.0)
    tl.store(y_ptr + safe[:, None] * stride_yp + offs_n[None, :], acc * rw[:, None],
             mask=valid[:, None] & n_mask[None, :])


def _kind(stack: QuantStack) -> int:
    if stack.weight.dtype == torch.uint8:
        zeros = stack.zeros
        if zeros is None or zeros.shape != stack.scales.shape or stack.scales.stride() != zeros.stride():
            raise ValueError("int4 experts need zeros of the scales' shape and strides")
        return INT4
    if stack.weight.dtype == torch.float8_e4m3fn:
        if stack.scales.dim() != 2 or stack.scales.dtype != torch.float32:
            raise ValueError(f"fp8 experts need a float32 [E, N] scale, got {stack.scales.dtype} "
                             f"{tuple(stack.scales.shape)}")
        return FP8
    raise ValueError(f"quantized experts must be uint8 (int4) or float8_e4m3fn, got {stack.weight.dtype}")


def fused_moe_quant(x: torch.Tensor, gate_up: QuantStack, down: QuantStack, weights: torch.Tensor,
                    ids: torch.Tensor, config: MoeConfig | None = None) -> torch.Tensor:
    """x [T, H] -> [T, H] in x's dtype over quantized experts (layouts in the module docstring)."""
    quant = _kind(gate_up)
    if _kind(down) != quant:
        raise ValueError("gate_up and down experts must be quantized alike")
    t, top_k = ids.shape
    hidden = x.shape[1]
    num_experts, two_i = gate_up.weight.shape[:2]
    inter, pairs = two_i // 2, t * top_k
    if t == 0:
        return torch.empty_like(x)
    config = config or choose_moe_config(pairs, num_experts)
    if config.block_k % 2:
        raise ValueError(f"block_k must be even for packed int4 columns, got {config.block_k}")
    sorted_pairs, block_expert = align_by_expert(ids, num_experts, config.block_m)
    rw = weights.reshape(-1).float().contiguous()
    h = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    y = torch.empty((pairs, hidden), dtype=torch.float32, device=x.device)
    common = dict(QUANT=quant, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                  PRECISION=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype), num_warps=config.num_warps,
                  num_stages=config.num_stages)
    blocks = block_expert.shape[0]

    def args(s: QuantStack):
        zeros = s.zeros if s.zeros is not None else s.scales
        return (s.weight, s.scales, zeros), (s.weight.stride(0), s.weight.stride(1), s.scales.stride(0),
                                             s.scales.stride(1))
    (w, s, z), strides = args(gate_up)
    _qgate_up_kernel[(blocks, triton.cdiv(inter, config.block_n))](
        x, w, s, z, h, sorted_pairs, block_expert, pairs, top_k, hidden, inter, x.stride(0), *strides,
        h.stride(0), GROUP=gate_up.group, **common)
    (w, s, z), strides = args(down)
    _qdown_kernel[(blocks, triton.cdiv(hidden, config.block_n))](
        h, w, s, z, rw, y, sorted_pairs, block_expert, pairs, hidden, inter, h.stride(0), *strides, y.stride(0),
        GROUP=down.group, **common)
    return y.view(t, top_k, hidden).sum(dim=1).to(x.dtype)
