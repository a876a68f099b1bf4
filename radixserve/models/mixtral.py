"""Mixtral (8x7B, 8x22B): the Llama/Mistral attention block with a mixture-of-experts MLP.

Router: softmax over `num_local_experts`, top `num_experts_per_tok` (2), renormalised over the
selected ones. Checkpoint names `block_sparse_moe.experts.E.w1/w3/w2.<leaf>` (gate/up/down; leaf: weight, or a
quantized checkpoint's qweight / scales / ...) are read as our `mlp.experts.E.gate_proj/up_proj/down_proj`.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from radixserve.distributed.group import TensorParallel
from radixserve.models.llama import LlamaForCausalLM
from radixserve.models.moe import SparseMoE
from radixserve.models.parallel import split_evenly
from radixserve.models.weights import load_stacked_weights

_RENAMES = ((".block_sparse_moe.", ".mlp."), (".w1.", ".gate_proj."), (".w3.", ".up_proj."), (".w2.", ".down_proj."))


def hf_to_ours(name: str) -> str:
    if ".block_sparse_moe." not in name:
        return name
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


class MixtralForCausalLM(LlamaForCausalLM):
    def make_mlp(self, config, layer_id: int, dtype: torch.dtype, device, tp: TensorParallel) -> nn.Module:
        inter = split_evenly(config.intermediate_size, tp, "intermediate_size")
        return SparseMoE(config.hidden_size, inter, config.num_local_experts, config.num_experts_per_tok, True,
                         dtype, device, tp)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_stacked_weights(self, ((hf_to_ours(name), tensor) for name, tensor in weights))
