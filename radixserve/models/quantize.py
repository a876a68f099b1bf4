"""Giving a built model's projections a linear method (and its mixture-of-experts blocks the matching
expert method, models/moe_quant.py): empty quantized parameters for a checkpoint's tensors, or the
loaded dense weights quantized in place (on the fly). The LM head and the routers stay dense."""
from __future__ import annotations

import torch
from torch import nn

from radixserve.models.layers import Linear
from radixserve.models.linear_methods import warn_if_reference
from radixserve.models.moe import SparseMoE
from radixserve.models.moe_quant import experts_method
from radixserve.models.parallel import RowParallelLinear


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear layers that take a quantized method: every projection, never the LM head."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Linear) and name != "lm_head"]


def _in_total(layer: nn.Module) -> int:
    return layer.in_features * (layer.tp.size if isinstance(layer, RowParallelLinear) else 1)


def set_linear_method(model: nn.Module, method) -> None:
    """Give every projection of a freshly built model `method`, with empty parameters for a checkpoint's
    quantized tensors (the dense weights are dropped)."""
    for _, layer in quantized_linears(model):
        method.create_weights(layer, _in_total(layer))
        layer.method = method
    for moe in _moe_blocks(model):
        moe.method = experts_method(method)
        moe.method.create_weights(moe)


def _moe_blocks(model: nn.Module) -> list[SparseMoE]:
    return [m for m in model.modules() if isinstance(m, SparseMoE)]


@torch.no_grad()
def quantize_model(model: nn.Module, method) -> None:
    """Quantize every projection's loaded dense weight in place, one layer at a time (on-the-fly)."""
    warn_if_reference(model, method)
    for _, layer in quantized_linears(model):
        dense = layer.weight.data
        method.create_weights(layer, _in_total(layer))
        method.quantize(layer, dense)
        layer.method = method
        del dense
    for moe in _moe_blocks(model):  # every expert, one at a time
        moe.method = experts_method(method)
        moe.method.quantize(moe)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the dense weights' memory back before the KV pool is sized from what is free
