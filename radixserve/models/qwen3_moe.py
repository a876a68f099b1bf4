"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): the Qwen3 attention block with a mixture-of-experts MLP.

Router: softmax over `num_experts`, top `num_experts_per_tok`, renormalised when `norm_topk_prob`.
Layers listed in `mlp_only_layers`, or off the `decoder_sparse_step` stride, keep a dense MLP of
`intermediate_size`; the experts' size is `moe_intermediate_size`.
"""
from __future__ import annotations

import torch
from torch import nn

from radixserve.distributed.group import TensorParallel
from radixserve.models.llama import LlamaForCausalLM, dense_mlp
from radixserve.models.moe import SparseMoE
from radixserve.models.parallel import split_evenly
from radixserve.models.qwen3 import qwen3_flags


def is_sparse_layer(config, layer_id: int) -> bool:
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    return (layer_id not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0 and (layer_id + 1) % step == 0)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, config, dtype: torch.dtype, device, tp: TensorParallel | None = None) -> None:
        super().__init__(config, dtype, device, flags=qwen3_flags(config), tp=tp)

    def make_mlp(self, config, layer_id: int, dtype: torch.dtype, device, tp: TensorParallel) -> nn.Module:
        if not is_sparse_layer(config, layer_id):
            return dense_mlp(config, dtype, device, tp)
        inter = split_evenly(config.moe_intermediate_size, tp, "moe_intermediate_size")
        return SparseMoE(config.hidden_size, inter, config.num_experts, config.num_experts_per_tok,
                         bool(config.norm_topk_prob), dtype, device, tp)
