"""The fused MoE kernel over quantized experts (kernels/fused_moe_quant.py) vs the torch loop over
dense experts equal to the quantized ones dequantised (here, from the stored bits). Small shapes:
under TRITON_INTERPRET=1 on CPU."""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.fused_moe import MoeConfig, fused_moe_ref
from radixserve.kernels.fused_moe_quant import QuantStack, fused_moe_quant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = MoeConfig(16, 16, 16, 4, 1)
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def _int4(e: int, n: int, k: int, group: int, gen) -> tuple[QuantStack, torch.Tensor]:
    groups = -(-k // group)
    q = torch.randint(0, 16, (e, n, k), generator=gen, dtype=torch.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()
    scales = torch.rand(e, n, groups, generator=gen) * 0.01 + 0.005  # |w| <= 0.23, as the dense tests
    zeros = torch.randint(0, 16, (e, n, groups), generator=gen, dtype=torch.uint8)
    g = torch.arange(k) // group
    dense = (q.float() - zeros.float()[..., g]) * scales[..., g]
    return QuantStack(packed.to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE), group), dense


def _fp8(e: int, n: int, k: int, gen) -> tuple[QuantStack, torch.Tensor]:
    w8 = (torch.randn(e, n, k, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.rand(e, n, generator=gen) * 0.002 + 0.0005
    return QuantStack(w8.to(DEVICE), scale.to(DEVICE), None, 0), w8.float() * scale[..., None]


def _routing(t: int, e: int, k: int, gen, used: int | None = None):
    ids = torch.stack([torch.randperm(used or e, generator=gen)[:k] for _ in range(t)])
    return torch.softmax(torch.randn(t, k, generator=gen), -1).to(DEVICE), ids.long().to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["int4-g16", "int4-g32", "int4-row", "fp8"])
@pytest.mark.parametrize("t,e,k,hidden,inter,used", [
    (1, 8, 2, 32, 16, None),  # one token: six experts empty
    (5, 8, 2, 64, 48, 3),  # five experts never routed to; several K blocks per group
    (40, 4, 2, 32, 32, None),  # more than one block of 16 pairs per expert
])
def test_quantized_kernel_matches_the_dequantised_reference(dtype, method, t, e, k, hidden, inter, used):
    gen = torch.Generator().manual_seed(t + e)
    if method == "fp8":
        (gu, gu_dense), (dn, dn_dense) = _fp8(e, 2 * inter, hidden, gen), _fp8(e, hidden, inter, gen)
    else:
        group = {"int4-g16": 16, "int4-g32": 32, "int4-row": None}[method]
        gu, gu_dense = _int4(e, 2 * inter, hidden, group or hidden, gen)
        dn, dn_dense = _int4(e, hidden, inter, group or inter, gen)
    x = torch.randn(t, hidden, generator=gen).to(DEVICE, dtype)
    weights, ids = _routing(t, e, k, gen, used)
    out = fused_moe_quant(x, gu, dn, weights, ids, config=SMALL)
    ref = fused_moe_ref(x, gu_dense.to(DEVICE, dtype), dn_dense.to(DEVICE, dtype), weights, ids)
    assert out.shape == x.shape and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_rejects_mixed_or_unknown_experts():
    gen = torch.Generator().manual_seed(0)
    gu, _ = _int4(2, 32, 16, 16, gen)
    dn, _ = _fp8(2, 16, 16, gen)
    x = torch.randn(3, 16).to(DEVICE)
    weights, ids = _routing(3, 2, 1, gen)
    with pytest.raises(ValueError, match="quantized alike"):
        fused_moe_quant(x, gu, dn, weights, ids, config=SMALL)
    with pytest.raises(ValueError, match="uint8 .int4. or float8_e4m3fn"):
        fused_moe_quant(x, gu._replace(weight=gu.weight.float()), dn, weights, ids, config=SMALL)
