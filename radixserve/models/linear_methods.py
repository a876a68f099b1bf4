"""Linear methods: how a Linear layer stores its weight and computes x W^T (+ b).

- `UnquantizedMethod`: `weight` [N, K] in the model dtype (the default of every Linear).
- `Fp8Method`: `weight` [N, K] float8_e4m3fn + `weight_scale` [N] float32 (per output channel);
  activations are quantised per token at run time (kernels/fp8_matmul.py).
- `Int4Method`: `qweight` [N, K/2] uint8 (two nibbles per byte along K), `scales` and `zeros`
  [N, groups] (group of `group_size` input columns, or one per row), and with act-order `g_idx`
  [K] int32 (kernels/int4_matmul.py).

A method owns the parameter names of its layer (the loader copies checkpoint tensors into them by
name) and says, per parameter, which dims are indexed by output rows and by input columns
(`layout`), so stacked projections (qkv, gate|up) and tensor-parallel shards cut every parameter
the same way. `quantize` fills the parameters from a dense weight (on-the-fly quantization).
Checkpoint formats are decoded into these layouts by quant_formats.py.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

class LeafLayout(NamedTuple):
    row_dim: int | None  # dim indexed by output features (split by stacking / column parallelism), or None
    col_dim: int | None  # dim indexed by input features (split by row parallelism), or None: replicated
    cols_per_index: int = 1  # input features per index along col_dim (2 for packed nibbles, G for group scales)


def single_row(x: torch.Tensor, fused_ops: bool) -> bool:
    """Batch-1 decode on CUDA with fused ops: linear layers go through the Triton GEMV
    (kernels/gemv.py), which streams the weights faster than cuBLAS does at M = 1 on the
    projections of an 8B model."""
    return fused_ops and x.is_cuda and x.dim() == 2 and x.shape[0] == 1


def warn_if_reference(model: nn.Module, method) -> None:
    """Say once per load when a quantized method runs its torch reference instead of a kernel."""
    device = next(model.parameters()).device
    if method.name == "int4" and device.type == "cuda":
        return
    if method.name == "fp8":
        from radixserve.kernels.fp8_matmul import scaled_mm_supported
        if scaled_mm_supported(device):
            return
    logger.warning("%s weights on %s run through the torch reference (dequantised at every forward): correct, "
                   "but slower than unquantized weights there; the %s kernels need %s", method.name, device,
                   method.name, "CUDA" if method.name == "int4" else "a GPU of compute capability >= 8.9")


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class UnquantizedMethod:
    """weight [N, K] in the model dtype; batch-1 decode on CUDA through the Triton GEMV."""

    name = "none"
    dense = True  # `layer.weight` is a plain dense matrix (the fused gate|up GEMV may read it)

    def create_weights(self, layer: nn.Module, in_total: int) -> None:
        pass  # Linear allocates its dense weight itself

    def layout(self, leaf: str) -> LeafLayout:
        return LeafLayout(0, 1 if leaf == "weight" else None)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if single_row(x, layer.fused_ops):
            from radixserve.kernels.gemv import gemv
            return gemv(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)

    def quantize(self, layer: nn.Module, weight: torch.Tensor) -> None:
        layer.weight.data.copy_(weight)


UNQUANTIZED = UnquantizedMethod()


def _drop_dense_weight(layer: nn.Module) -> None:
    if "weight" in layer._parameters:
        del layer._parameters["weight"]


class Fp8Method:
    """W8A8: fp8 e4m3 weight with a float32 scale per output channel, per-token dynamic activations."""

    name = "fp8"
    dense = False

    def create_weights(self, layer: nn.Module, in_total: int) -> None:
        device = layer.bias.device if layer.bias is not None else layer.weight.device
        _drop_dense_weight(layer)
        n, k = layer.out_features, layer.in_features
        layer.weight = _param(torch.empty(n, k, dtype=torch.float8_e4m3fn, device=device))
        layer.weight_scale = _param(torch.empty(n, dtype=torch.float32, device=device))

    def layout(self, leaf: str) -> LeafLayout:
        return LeafLayout(0, 1 if leaf == "weight" else None)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from radixserve.kernels.fp8_matmul import fp8_linear
        return fp8_linear(x, layer.weight, layer.weight_scale, bias)

    @torch.no_grad()
    def quantize(self, layer: nn.Module, weight: torch.Tensor) -> None:
        """Per-channel symmetric: scale = max |row| / 448."""
        w8, scale = fp8_quantize(weight)
        layer.weight.data.copy_(w8)
        layer.weight_scale.data.copy_(scale)


def fp8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [N, K] -> (float8_e4m3fn [N, K], scale [N] float32): per output channel, max |row| / 448."""
    from radixserve.kernels.fp8_matmul import FP8_MAX
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)  # [N]
    return (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


class Int4Method:
    """4-bit unsigned weights with a scale and zero point per group of input columns (or per row)."""

    name = "int4"
    dense = False

    def __init__(self, group_size: int | None, act_order: bool = False, scale_dtype: torch.dtype | None = None):
        if group_size is not None and (group_size < 2 or group_size % 2):
            raise ValueError(f"int4 group_size must be an even number >= 2 (or None: one per row), got {group_size}")
        if act_order and group_size is None:
            raise ValueError("act-order (g_idx) needs a group_size")
        self.group_size, self.act_order, self.scale_dtype = group_size, act_order, scale_dtype

    def group(self, layer: nn.Module) -> int:
        """Input columns per scale of this layer (a per-row scale is one group of all its columns)."""
        return self.group_size or layer.in_features

    def create_weights(self, layer: nn.Module, in_total: int) -> None:
        device = layer.bias.device if layer.bias is not None else layer.weight.device
        dtype = layer.bias.dtype if layer.bias is not None else layer.weight.dtype
        n, k, g = layer.out_features, layer.in_features, self.group(layer)
        if k % 2:
            raise ValueError(f"int4 needs an even number of input features, this layer has {k}")
        if not self.act_order and k % g and k != in_total:
            raise ValueError(f"int4 group_size {g} does not divide this layer's {k} input features per rank "
                             f"(of {in_total}); use a tp whose shards end on group boundaries")
        # NOTE: the last group may be partial (K not a multiple of G), as GPTQ writes it; act-order: every
        # rank keeps every group's scales
        groups = -(-(in_total if self.act_order else k) // g)
        _drop_dense_weight(layer)
        layer.qweight = _param(torch.empty(n, k // 2, dtype=torch.uint8, device=device))
        layer.scales = _param(torch.empty(n, groups, dtype=self.scale_dtype or dtype, device=device))
        layer.zeros = _param(torch.empty(n, groups, dtype=torch.uint8, device=device))
        if self.act_order:
            layer.g_idx = _param(torch.empty(k, dtype=torch.int32, device=device))

    def layout(self, leaf: str) -> LeafLayout:
        if leaf == "qweight":
            return LeafLayout(0, 1, 2)
        if leaf in ("scales", "zeros"):
            grouped = self.group_size is not None and not self.act_order
            return LeafLayout(0, 1, self.group_size) if grouped else LeafLayout(0, None)
        if leaf == "g_idx":
            return LeafLayout(None, 0, 1)
        return LeafLayout(0, None)  # bias

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        g_idx = layer.g_idx if self.act_order else None
        if x.is_cuda:
            from radixserve.kernels.int4_matmul import int4_matmul
            return int4_matmul(x, layer.qweight, layer.scales, layer.zeros, self.group(layer), g_idx, bias)
        from radixserve.kernels.int4_matmul import int4_matmul_ref
        return int4_matmul_ref(x, layer.qweight, layer.scales, layer.zeros, self.group(layer), g_idx, bias)

    @torch.no_grad()
    def quantize(self, layer: nn.Module, weight: torch.Tensor) -> None:
        """Round to nearest, asymmetric: per group, scale = (max - min) / 15, zero = round(-min / scale)."""
        if self.act_order:
            raise ValueError("on-the-fly int4 quantization writes no act-order g_idx; use act_order=False")
        q, scales, zeros = rtn_int4(weight, self.group(layer))
        layer.qweight.data.copy_(pack_int4(q))
        layer.scales.data.copy_(scales)
        layer.zeros.data.copy_(zeros)


def rtn_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense [N, K] -> (q [N, K] uint8 in 0..15, scales [N, K/G] float32, zeros [N, K/G] uint8)."""
    n, k = weight.shape
    pad = -k % group  # a partial last group: padded with zeros, which every group's range holds anyway
    w = F.pad(weight.float(), (0, pad)).reshape(n, (k + pad) // group, group)  # [N, groups, G]
    lo = w.amin(dim=-1).clamp(max=0.0)  # the range always holds 0, so 0 stays exact
    hi = w.amax(dim=-1).clamp(min=0.0)
    scales = ((hi - lo) / 15).clamp(min=1e-10)  # [N, groups]
    zeros = torch.round(-lo / scales).clamp(0, 15)
    q = (torch.round(w / scales[..., None]) + zeros[..., None]).clamp(0, 15)
    return q.reshape(n, k + pad)[:, :k].to(torch.uint8), scales, zeros.to(torch.uint8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 -> [N, K/2] uint8, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: [N, K/2] uint8 -> [N, K] uint8."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def make_method(kind: str, group_size: int | None = 128, act_order: bool = False,
                scale_dtype: torch.dtype | None = None):
    """'none' | 'fp8' | 'int4' -> a linear method."""
    if kind == "none":
        return UNQUANTIZED
    if kind == "fp8":
        return Fp8Method()
    if kind == "int4":
        return Int4Method(group_size, act_order, scale_dtype)
    raise ValueError(f"linear method {kind!r} is unknown; supported: none, fp8, int4")
