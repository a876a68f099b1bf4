"""Fused mixture-of-experts MLP: every token's top-k experts' down(silu(gate(x)) * up(x)), weighted by
the routing weights and summed over the k.

Layout: w_gate_up [E, 2I, H] (gate rows, then up rows), w_down [E, H, I], weights [T, k] float32,
ids [T, k] int64 (expert of each (token, slot)).

The GPU path (`fused_moe`):
1. `align_by_expert` sorts the T*k (token, slot) pairs by expert and pads each expert's run to a
   multiple of BLOCK_M (pad entries point past the last pair), so every block of BLOCK_M sorted
   entries belongs to one expert (`block_expert`; -1 for the unused blocks of the worst-case
   allocation, which exit at once). All on the device: no host sync, fixed sizes for a given T.
2. `_gate_up_kernel`: one program per (block, BLOCK_N of I): a grouped GEMM of the block's token
   rows with its expert's gate and up rows, SiLU(gate) * up written per pair [T*k, I].
3. `_down_kernel`: one program per (block, BLOCK_N of H): that times its expert's down, times the
   pair's routing weight, written per pair [T*k, H] in float32; the k slots of each token are then
   summed (a fixed order, so the result does not depend on what else is in the batch).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from radixserve.kernels._launch import dot_precision, dot_upcast, mma


class MoeConfig(NamedTuple):
    block_m: int  # sorted (token, slot) pairs per program; every block belongs to one expert
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def choose_moe_config(pairs: int, num_experts: int) -> MoeConfig:
    """Small blocks when the experts get few tokens each (decode), larger tiles for prefill.
    NOTE: not tuned on a GPU yet; the block sizes only follow the usual tensor-core shapes."""
    per_expert = pairs / max(1, num_experts)
    if per_expert <= 16:
        return MoeConfig(16, 64, 64, 4, 3)
    return MoeConfig(64, 64, 64, 4, 3)


def _check(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
           ids: torch.Tensor) -> None:
    if x.dim() != 2 or w_gate_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError(f"x must be [T, H], w_gate_up [E, 2I, H], w_down [E, H, I]; got {tuple(x.shape)}, "
                         f"{tuple(w_gate_up.shape)}, {tuple(w_down.shape)}")
    e, two_i, h = w_gate_up.shape
    if two_i % 2 or h != x.shape[1] or w_down.shape != (e, h, two_i // 2):
        raise ValueError(f"w_gate_up {tuple(w_gate_up.shape)} and w_down {tuple(w_down.shape)} do not fit "
                         f"x {tuple(x.shape)} (want [E, 2I, H] and [E, H, I])")
    if weights.shape != ids.shape or weights.dim() != 2 or weights.shape[0] != x.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be [T, k] "
                         f"with T = {x.shape[0]}")


def fused_moe_ref(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """Torch reference: the (token, slot) pairs sorted by expert, one gated MLP per expert that got
    any, its rows scaled by their routing weight and added into their token's row. -> [T, H] in x's dtype."""
    _check(x, w_gate_up, w_down, weights, ids)
    return moe_ref_loop(x, lambda e: (w_gate_up[e], w_down[e]), w_gate_up.shape[0], weights, ids)


def moe_ref_loop(x: torch.Tensor, expert_weights: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 num_experts: int, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """fused_moe_ref's loop with each expert's (gate_up [2I, H], down [H, I]) asked of `expert_weights`
    only for the experts that got tokens (quantized experts dequantize just those; models/moe_quant.py)."""
    t, k = ids.shape
    out = torch.zeros_like(x)
    flat = ids.reshape(-1)  # [T*k]
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token_of = order // k  # [T*k] token of each sorted pair
    w_sorted = weights.reshape(-1)[order]
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        rows = token_of[start:start + n]
        w_gate_up, w_down = expert_weights(expert)
        gate, up = F.linear(x[rows], w_gate_up).split(w_gate_up.shape[0] // 2, dim=-1)  # [n, I] each
        y = F.linear(F.silu(gate) * up, w_down)  # [n, H]
        out.index_add_(0, rows, (y * w_sorted[start:start + n, None].to(y.dtype)).to(x.dtype))
        start += n
    return out


def align_by_expert(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] -> (sorted_pairs [R] int64: pair index t*k+j grouped by expert, each expert's run
    padded to a multiple of block_m with T*k; block_expert [R / block_m] int64: the expert of each
    block, -1 past the last used one). R = T*k + E*(block_m - 1) rounded up to block_m: the worst case."""
    flat = ids.reshape(-1)
    pairs = flat.numel()
    rows = -(-(pairs + num_experts * (block_m - 1)) // block_m) * block_m
    # NOTE: scatter_add, not bincount: bincount reads the max id back to the host (a sync, and no
    # CUDA graph capture)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device).scatter_add_(
        0, flat, torch.ones_like(flat))  # [E]
    padded = (counts + block_m - 1) // block_m * block_m  # [E]
    ends = torch.cumsum(padded, 0)  # [E]
    order = torch.argsort(flat, stable=True)  # [P]
    expert_sorted = flat[order]
    first = torch.cumsum(counts, 0) - counts  # [E] first sorted position of each expert
    dest = (ends - padded)[expert_sorted] + torch.arange(pairs, device=ids.device) - first[expert_sorted]
    sorted_pairs = torch.full((rows,), pairs, dtype=torch.int64, device=ids.device)
    sorted_pairs[dest] = order
    block_start = torch.arange(0, rows, block_m, device=ids.device)
    block_expert = torch.searchsorted(ends, block_start, right=True)  # [R / block_m]
    block_expert = torch.where(block_expert < num_experts, block_expert, -1)
    return sorted_pairs, block_expert


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, h_ptr, pairs_ptr, block_expert_ptr, P, TOP_K, H, I,
                    stride_xt, stride_we, stride_wn, stride_hp,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0)
    e = tl.load(block_expert_ptr + b)
    if e < 0:
        return
    pair = tl.load(pairs_ptr + b * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM]
    valid = pair < P
    token = tl.where(valid, pair // TOP_K, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] of I
    n_mask = offs_n < I
    w_base = w_ptr + e.to(tl.int64) * stride_we
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < H
        x = tl.load(x_ptr + token[:, None] * stride_xt + k[None, :], mask=valid[:, None] & k_mask[None, :],
                    other=0.0)  # [BM, BK]
        wmask = k_mask[:, None] & n_mask[None, :]
        wg = tl.load(w_base + offs_n[None, :] * stride_wn + k[:, None], mask=wmask, other=0.0)  # [BK, BN]
        wu = tl.load(w_base + (I + offs_n)[None, :] * stride_wn + k[:, None], mask=wmask, other=0.0)
        acc_g += mma(x, wg, PRECISION, UPCAST)
        acc_u += mma(x, wu, PRECISION, UPCAST)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + pair[:, None] * stride_hp + offs_n[None, :], h.to(h_ptr.dtype.element_ty),
             mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _down_kernel(h_ptr, w_ptr, rw_ptr, y_ptr, pairs_ptr, block_expert_ptr, P, H, I,
                 stride_hp, stride_we, stride_wn, stride_yp,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0)
    e = tl.load(block_expert_ptr + b)
    if e < 0:
        return
    pair = tl.load(pairs_ptr + b * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM]
    valid = pair < P
    safe = tl.where(valid, pair, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] of H
    n_mask = offs_n < H
    w_base = w_ptr + e.to(tl.int64) * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < I
        h = tl.load(h_ptr + safe[:, None] * stride_hp + k[None, :], mask=valid[:, None] & k_mask[None, :],
                    other=0.0)  # [BM, BK]
        w = tl.load(w_base + offs_n[None, :] * stride_wn + k[:, None], mask=k_mask[:, None] & n_mask[None, :],
                    other=0.0)  # [BK, BN]
        acc += mma(h, w, PRECISION, UPCAST)
    acc = acc.to(h_ptr.dtype.element_ty).to(tl.float32)  # rounded like the reference's expert output
    rw = tl.load(rw_ptr + safe, mask=valid, other=0.0)  # [BM] float32
    tl.store(y_ptr + safe[:, None] * stride_yp + offs_n[None, :], acc * rw[:, None],
             mask=valid[:, None] & n_mask[None, :])


def fused_moe(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor, config: MoeConfig | None = None) -> torch.Tensor:
    """x [T, H] -> [T, H] in x's dtype (layout in the module docstring); float32 accumulation."""
    _check(x, w_gate_up, w_down, weights, ids)
    if x.stride(1) != 1 or w_gate_up.stride(2) != 1 or w_down.stride(2) != 1:
        raise ValueError("x, w_gate_up and w_down must be contiguous in their last dim")
    t, top_k = ids.shape
    num_experts, two_i, hidden = w_gate_up.shape
    inter, pairs = two_i // 2, t * top_k
    if t == 0:
        return torch.empty_like(x)
    config = config or choose_moe_config(pairs, num_experts)
    sorted_pairs, block_expert = align_by_expert(ids, num_experts, config.block_m)
    rw = weights.reshape(-1).float().contiguous()  # [P]
    h = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    y = torch.empty((pairs, hidden), dtype=torch.float32, device=x.device)
    common = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                  PRECISION=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype), num_warps=config.num_warps,
                  num_stages=config.num_stages)
    blocks = block_expert.shape[0]
    _gate_up_kernel[(blocks, triton.cdiv(inter, config.block_n))](
        x, w_gate_up, h, sorted_pairs, block_expert, pairs, top_k, hidden, inter,
        x.stride(0), w_gate_up.stride(0), w_gate_up.stride(1), h.stride(0), **common)
    _down_kernel[(blocks, triton.cdiv(hidden, config.block_n))](
        h, w_down, rw, y, sorted_pairs, block_expert, pairs, hidden, inter,
        h.stride(0), w_down.stride(0), w_down.stride(1), y.stride(0), **common)
    return y.view(t, top_k, hidden).sum(dim=1).to(x.dtype)
