"""Write the new tokens' K and V into one layer of the paged pool, both in one launch.

Grid (token, block of the Hkv * D row): program (t, j) copies elements j*BLOCK..(j+1)*BLOCK of
token t's K row and V row to pool slot out_slots[t], casting to the pool dtype. k and v may be
strided views (e.g. slices of a fused qkv projection) as long as each token's [Hkv, D] is dense.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_index, check_rows, pow2


@triton.jit
def _kv_store_kernel(k_ptr, v_ptr, k_pool_ptr, v_pool_ptr, slots_ptr,
                     stride_kt, stride_vt, stride_pk, stride_pv, ROW: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] within the token's Hkv * D row
    mask = offs < ROW
    slot = tl.load(slots_ptr + t)
    k = tl.load(k_ptr + t * stride_kt + offs, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + offs, mask=mask)
    tl.store(k_pool_ptr + slot * stride_pk + offs, k.to(k_pool_ptr.dtype.element_ty), mask=mask)
    tl.store(v_pool_ptr + slot * stride_pv + offs, v.to(v_pool_ptr.dtype.element_ty), mask=mask)


def _check_dense_rows(name: str, t: torch.Tensor) -> None:
    check_rows(name, t, 3)
    if t.stride(1) != t.shape[2]:
        raise ValueError(f"{name} must be dense over [Hkv, D] per token (strides {t.stride()}); "
                         f"call .contiguous() first")


def kv_store(k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
             out_slots: torch.Tensor, block: int = 1024) -> None:
    """k/v [T, Hkv, D] -> k_pool/v_pool [num_slots, Hkv, D] at rows out_slots [T] int64, in place."""
    for name, t in (("k", k), ("v", v), ("k_pool", k_pool), ("v_pool", v_pool)):
        _check_dense_rows(name, t)
    if k.shape != v.shape or k.shape[1:] != k_pool.shape[1:] or k_pool.shape != v_pool.shape:
        raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)} must be [T, Hkv, D] matching the pools "
                         f"{tuple(k_pool.shape)}, {tuple(v_pool.shape)}")
    check_index("out_slots", out_slots, k.shape[0])
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    row = k.shape[1] * k.shape[2]
    block = min(block, pow2(row))
    _kv_store_kernel[(num_tokens, triton.cdiv(row, block))](
        k, v, k_pool, v_pool, out_slots, k.stride(0), v.stride(0), k_pool.stride(0), v_pool.stride(0),
        ROW=row, BLOCK=block,
    )


def kv_store_ref(k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                 out_slots: torch.Tensor) -> None:
    """Torch reference: indexed assignment (also the fallback worth timing against the kernel)."""
    k_pool[out_slots] = k.to(k_pool.dtype)
    v_pool[out_slots] = v.to(v_pool.dtype)
