"""Quantized matmul kernels vs their torch references: int4 weight-only (group scales / zeros,
act-order g_idx) and FP8 per-token activation quantization; the references vs plain dense math."""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.fp8_matmul import (FP8, fp8_linear, fp8_linear_ref, quantize_per_token,
                                           quantize_per_token_ref)
from radixserve.kernels.int4_matmul import Int4Config, int4_dequantize, int4_matmul, int4_matmul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 2e-2), torch.float16: (3e-3, 3e-3)}


def _int4_weight(n: int, k: int, group: int, act_order: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    scales = torch.rand(n, groups, generator=gen) * 0.05 + 0.01
    zeros = torch.randint(0, 16, (n, groups), generator=gen, dtype=torch.uint8)
    g_idx = None
    if act_order:  # columns of a group scattered over K, as a desc_act checkpoint writes them
        g_idx = (torch.randperm(k, generator=gen) // group).to(torch.int32)
    dense = torch.empty(n, k)
    for col in range(k):  # the format's definition, column by column
        g = col // group if g_idx is None else int(g_idx[col])
        dense[:, col] = (q[:, col].float() - zeros[:, g].float()) * scales[:, g]
    return packed, scales, zeros, g_idx, dense


def _to(device, *ts):
    return [t.to(device) if t is not None else None for t in ts]


@pytest.mark.parametrize("n,k,group,act_order", [(24, 64, 32, False), (40, 96, 32, True), (16, 128, 64, False),
                                                 (33, 80, 16, True)])
def test_int4_dequantize_is_the_definition(n, k, group, act_order):
    packed, scales, zeros, g_idx, dense = _int4_weight(n, k, group, act_order)
    torch.testing.assert_close(int4_dequantize(packed, scales, zeros, group, g_idx), dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,group,act_order,bias", [
    (1, 40, 96, 32, False, False),  # GEMV, N over blocks of 16 masked, K over blocks of 64 masked
    (3, 24, 64, 32, True, True),  # odd batch, act-order
    (17, 48, 128, 64, False, True),  # M over a tile of 16 masked
    (5, 20, 80, 16, True, False),
    (2, 24, 192, 64, False, False),  # BLOCK_K 64 divides the group: one scale per row per block
    (1, 16, 160, 64, False, True)])  # K = 160: the last group partial
def test_int4_matmul_matches_reference(dtype, m, n, k, group, act_order, bias):
    packed, scales, zeros, g_idx, dense = _to(DEVICE, *_int4_weight(n, k, group, act_order, seed=m))
    gen = torch.Generator().manual_seed(m + 1)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    block_m = 1 if m == 1 else 16
    out = int4_matmul(x, packed, scales, zeros, group, g_idx, b, config=Int4Config(block_m, 16, 64, 4, 1))
    ref = int4_matmul_ref(x, packed, scales, zeros, group, g_idx, b)
    assert out.shape == (m, n) and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    if dtype == torch.float32:  # the reference is the dense product on the dequantised weight
        dense_y = x @ dense.T + (b if bias else 0)
        torch.testing.assert_close(ref, dense_y, atol=1e-4, rtol=1e-4)


def test_int4_matmul_rejects_bad_shapes():
    packed, scales, zeros, _, _ = _int4_weight(8, 32, 16, False)
    with pytest.raises(ValueError, match=r"qweight must be \[N, K/2\]"):
        int4_matmul_ref(torch.randn(2, 30), packed, scales, zeros, 16)
    with pytest.raises(ValueError, match="scales and zeros"):
        int4_matmul_ref(torch.randn(2, 32), packed, scales[:, :1], zeros[:, :1], 16)


@pytest.mark.parametrize("m,k", [(1, 64), (7, 100), (4, 2048)])
def test_quantize_per_token_matches_reference(m, k):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(DEVICE) * 3
    x[0, :] = 0.0  # an all-zero row
    q, s = quantize_per_token(x, block_k=64)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert q.dtype == FP8 and s.shape == (m, 1)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(q.float(), q_ref.float())
    # dequantised within half an e4m3 step of x: 2^-4 relative for normals, s * 2^-10 for subnormals
    err = (q.float() * s - x).abs()
    assert bool((err <= torch.maximum(x.abs() * 2 ** -4, s * 2 ** -10) * (1 + 1e-6)).all())


@pytest.mark.parametrize("m,n,k,bias", [(1, 32, 64, False), (5, 48, 96, True)])
def test_fp8_linear_reference_is_the_definition(m, n, k, bias):
    gen = torch.Generator().manual_seed(n)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(FP8)
    w_scale = torch.rand(n, generator=gen) * 0.01 + 1e-3
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    y = fp8_linear_ref(x, w, w_scale, b)
    xs = x.abs().amax(-1, keepdim=True) / 448
    xq = (x / xs).to(FP8).float() * xs
    torch.testing.assert_close(y, xq @ (w.float() * w_scale[:, None]).T + (b if bias else 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fp8_linear(x, w, w_scale, b), y)  # CPU: the reference itself


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (64, 6144, 4096), (256, 4096, 14336)])
def test_quantized_kernels_serving_sizes_gpu(m, n, k):
    group = 128
    packed, scales, zeros, _, _ = _to("cuda", *_int4_weight(n, k, group, False)[:4], None)
    scales = scales.half()
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(int4_matmul(x, packed, scales, zeros, group).float(),
                               int4_matmul_ref(x, packed, scales, zeros, group).float(), atol=5e-2, rtol=2e-2)
    w = (torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(FP8)
    w_scale = torch.rand(n, device="cuda") * 1e-3 + 1e-4
    torch.testing.assert_close(fp8_linear(x, w, w_scale).float(), fp8_linear_ref(x, w, w_scale).float(),
                               atol=2e-2, rtol=2e-2)
