"""The batch-1 GEMV kernel (plain and with fused SiLU-mul) vs its torch reference."""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.gemv import DEFAULT_GEMV, GemvConfig, gemv, gemv_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2 * 2**-7, 2 * 2**-7), torch.float16: (2e-3, 2e-3)}


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,bias,gated", [(48, 96, False, False), (40, 100, True, False), (64, 64, False, True),
                                            (34, 70, True, True)])
def test_gemv_matches_reference(dtype, n, k, bias, gated):
    # 40 rows over blocks of 16 and K = 100 over blocks of 32: both edges masked
    x = randn(1, k, dtype=dtype, seed=1)
    w = randn(n, k, dtype=dtype, seed=2) / k ** 0.5
    b = randn(n, dtype=dtype, seed=3) if bias else None
    out = gemv(x, w, b, gated=gated, config=GemvConfig(16, 32, 4, 2))
    ref = gemv_ref(x, w, b, gated=gated)
    assert out.shape == ref.shape == (1, n // 2 if gated else n) and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_gemv_ref_matches_linear_and_mlp():
    x, w = randn(1, 32, seed=4), randn(24, 32, seed=5)
    torch.testing.assert_close(gemv_ref(x, w), torch.nn.functional.linear(x, w))
    gate, up = torch.nn.functional.linear(x, w).chunk(2, -1)
    torch.testing.assert_close(gemv_ref(x, w, gated=True), torch.nn.functional.silu(gate) * up)


def test_gemv_rejects_bad_input():
    w = randn(8, 16)
    with pytest.raises(ValueError, match=r"x must be \[1, 16\]"):
        gemv(randn(2, 16), w)
    with pytest.raises(ValueError, match="even number of rows"):
        gemv(randn(1, 16), randn(7, 16), gated=True)
    with pytest.raises(ValueError, match="share a dtype"):
        gemv(randn(1, 16, dtype=torch.bfloat16), w)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,k,gated", [(6144, 4096, False), (4096, 14336, False), (28672, 4096, True)])
def test_gemv_serving_sizes_gpu(n, k, gated):
    x = randn(1, k, dtype=torch.bfloat16, seed=6)
    w = randn(n, k, dtype=torch.bfloat16, seed=7) / k ** 0.5
    out = gemv(x, w, gated=gated, config=DEFAULT_GEMV)
    torch.testing.assert_close(out.float(), gemv_ref(x, w, gated=gated).float(), atol=2 * 2**-7, rtol=2 * 2**-7)
