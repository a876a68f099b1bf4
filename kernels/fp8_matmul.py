"""FP8 W8A8 matmul: per-channel weight scales, dynamic per-token activation scales.

  w [N, K] float8_e4m3fn, w_scale [N] float32: W = w * w_scale[:, None];
  per token t: x_scale[t] = max|x[t]| / 448, xq[t] = fp8(x[t] / x_scale[t]);
  y = (xq * x_scale) (w * w_scale)^T (+ b).

On Hopper/Ada (compute capability >= 8.9) the product is one `torch._scaled_mm` (cuBLASLt FP8
tensor cores, rowwise scales applied in its epilogue); the activation quantization is the Triton
kernel below (one pass over x: amax, scale, cast). Elsewhere (CPU) the torch reference computes
the same thing in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_SCALE = 1e-12 / FP8_MAX  # an all-zero row gets this scale (its quantised values are 0)
# NOTE: Triton's interpreter (TRITON_INTERPRET=1, numpy) converts float32 to fp8 without carrying a
# mantissa round-up into the exponent (126.2 becomes 64, not 128), so there the kernel rounds to the
# e4m3 grid itself first and the cast is exact; the GPU's cvt rounds to nearest even.


@triton.jit
def _round_to_e4m3(v):
    """v (float32, |v| <= 448) rounded to the nearest e4m3 value (ties to even), in float32."""
    e = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # unbiased exponent of |v|
    e = tl.maximum(e, -6)  # subnormals share the smallest normal's step
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-3): 3 mantissa bits
    y = v / step  # exact: a power of two
    r = tl.floor(y + 0.5)
    r = tl.where((r - y == 0.5) & (r.to(tl.int32) % 2 != 0), r - 1.0, r)  # a tie goes to the even neighbour
    return r * step


@triton.jit
def _quant_per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK_K: tl.constexpr,
                            FP8_MAX_C: tl.constexpr, MIN_SCALE: tl.constexpr, EXPLICIT_ROUND: tl.constexpr):
    row = tl.program_id(0)
    amax = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_x + k, mask=k < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, 0) / FP8_MAX_C, MIN_SCALE)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_x + k, mask=k < K, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -FP8_MAX_C, FP8_MAX_C)
        if EXPLICIT_ROUND:
            q = _round_to_e4m3(q)
        tl.store(q_ptr + row * stride_q + k, q.to(q_ptr.dtype.element_ty), mask=k < K)
    tl.store(s_ptr + row, scale)


def quantize_per_token(x: torch.Tensor, block_k: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], float32 scales [M, 1]) (the Triton kernel)."""
    check_rows("x", x, 2)
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        _quant_per_token_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK_K=min(block_k, triton.next_power_of_2(k)),
                                      FP8_MAX_C=FP8_MAX, MIN_SCALE=_MIN_SCALE,
                                      EXPLICIT_ROUND=bool(triton.knobs.runtime.interpret))
    return q, s


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of quantize_per_token."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)  # [M, 1]
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_mm_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _check(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_rows("x", x, 2)
    check_rows("weight", weight, 2)
    n, k = weight.shape
    if weight.dtype != FP8 or x.shape[1] != k:
        raise ValueError(f"weight must be {FP8} [N, {x.shape[1]}], got {weight.dtype} {tuple(weight.shape)}")
    if w_scale.shape != (n,) or w_scale.dtype != torch.float32:
        raise ValueError(f"w_scale must be float32 [{n}], got {w_scale.dtype} {tuple(w_scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16/fp32) -> [M, N] in x's dtype: torch._scaled_mm where the GPU has FP8
    tensor cores, else the torch reference."""
    _check(x, weight, w_scale, bias)
    if not scaled_mm_supported(x.device):
        return fp8_linear_ref(x, weight, w_scale, bias)
    xq, xs = quantize_per_token(x)
    # NOTE: rowwise-scaled _scaled_mm wants b column-major ([K, N] view of the row-major weight) and
    # a bfloat16 output.
    y = torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=w_scale.view(1, -1), out_dtype=torch.bfloat16)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference: quantise x per token, dequantise both, F.linear in float32, round to x's dtype."""
    _check(x, weight, w_scale, bias)
    xq, xs = quantize_per_token_ref(x)
    w = weight.float() * w_scale[:, None]
    y = torch.nn.functional.linear(xq.float() * xs, w, None if bias is None else bias.float())
    return y.to(x.dtype)
