"""The compressed-tensors decoder against the compressed-tensors library itself: its packing
(pack_to_int32) in, its dequantisation (quantization.lifecycle.forward.dequantize) as the truth."""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.int4_matmul import int4_dequantize
from radixserve.models.quant_config import resolve_quantization
from radixserve.models.quant_formats import decode_checkpoint

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize  # noqa: E402


class _Config:
    def __init__(self, qc: dict) -> None:
        self.quantization_config = qc


@pytest.mark.parametrize("n,k,group,sym", [(16, 64, 32, True), (24, 128, 64, False), (8, 96, 32, False)])
def test_pack_quantized_decodes_to_the_librarys_dequantisation(n, k, group, sym):
    gen = torch.Generator().manual_seed(n + k)
    groups = k // group
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=gen) * 0.1 + 0.01
    zp = torch.zeros(n, groups, dtype=torch.int8) if sym else torch.randint(-8, 8, (n, groups), generator=gen,
                                                                             dtype=torch.int8)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=sym, strategy="group", group_size=group)
    truth = dequantize(q, scale, zp, args=args, dtype=torch.float32)  # [N, K]

    weights = dict(num_bits=4, type="int", symmetric=sym, strategy="group", group_size=group)
    qc = dict(quant_method="compressed-tensors", format="pack-quantized",
              config_groups={"group_0": dict(targets=["Linear"], weights=weights, input_activations=None)})
    plan = resolve_quantization(None, _Config(qc), torch.float32)
    stored = {"m.weight_packed": pack_to_int32(q, 4), "m.weight_scale": scale,
              "m.weight_shape": torch.tensor([n, k])}
    if not sym:
        stored["m.weight_zero_point"] = pack_to_int32(zp, 4, packed_dim=0)
    out = dict(decode_checkpoint(stored.items(), plan))
    assert set(out) == {"m.qweight", "m.scales", "m.zeros"}
    got = int4_dequantize(out["m.qweight"], out["m.scales"], out["m.zeros"], group)
    torch.testing.assert_close(got, truth, atol=0, rtol=0)


def test_float_quantized_per_tensor_scale_becomes_per_channel():
    w = (torch.randn(6, 32) * 50).to(torch.float8_e4m3fn)
    qc = dict(quant_method="compressed-tensors", format="float-quantized", config_groups={"g": dict(
        targets=["Linear"], weights=dict(num_bits=8, type="float", strategy="tensor", symmetric=True),
        input_activations=dict(num_bits=8, type="float", strategy="token", dynamic=True))})
    plan = resolve_quantization(None, _Config(qc), torch.float32)
    out = dict(decode_checkpoint([("m.weight", w), ("m.weight_scale", torch.tensor([0.5]))], plan))
    assert torch.equal(out["m.weight_scale"], torch.full((6,), 0.5)) and out["m.weight"] is w
