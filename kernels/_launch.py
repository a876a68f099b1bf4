"""Small checks shared by the kernel launchers."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def check_rows(name: str, t: torch.Tensor, ndim: int) -> None:
    """Raise ValueError unless `t` has `ndim` dims and a unit-stride last dim."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride(-1)}); "
                         f"call .contiguous() first")


def check_index(name: str, t: torch.Tensor, n: int | None = None) -> None:
    """Raise ValueError unless `t` is a 1-D int64 index tensor (of length n when given)."""
    if t.dim() != 1 or t.dtype != torch.int64:
        raise ValueError(f"{name} must be a 1-D int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries, got {t.shape[0]}")


def dot_precision(dtype: torch.dtype) -> str:
    """float32 attention must not silently drop to tf32 on tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pow2(n: int, at_least: int = 1) -> int:
    return max(at_least, triton.next_power_of_2(n))


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether `mma` must widen bf16 operands to float32 first.

    NOTE: Triton's interpreter multiplies bf16 tiles as their raw uint16 bit patterns (it stores
    bf16 as uint16 for numpy), so under TRITON_INTERPRET=1 bf16 dots go through float32. The
    products are the same (bf16 x bf16 is exact in float32, and accumulation is float32 anyway).
    """
    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)


@triton.jit
def mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot(a, b) accumulating in float32; see dot_upcast for UPCAST."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def online_softmax_block(q, k, v, visible, m_i, l_i, acc, sm_scale_log2, MASKED: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Fold one block of keys into a flash-attention running state.

    q [M, D], k/v [N, D], visible [M, N] (read only when MASKED); (m_i [M], l_i [M], acc [M, D])
    hold the running max (log2 units), the running sum of exp2 and the unnormalised output.
    Returns the updated state.
    NOTE: a row that has seen no visible key yet keeps m_i = -inf, l_i = 0 and acc = 0 (the max is
    replaced by 0 where it is still -inf, so no -inf - -inf = NaN); callers turn l_i == 0 into an
    empty result (lse -inf) instead of dividing by it.
    """
    s = mma(q, tl.trans(k), PRECISION, UPCAST) * sm_scale_log2  # [M, N]
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


@triton.jit
def finish_softmax(m_i, l_i, acc):
    """-> (normalised output [M, D], log-sum-exp [M] in log2 units); rows with no key: (0, -inf)."""
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    return out, lse
