"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): the Qwen2 attention block (q/k/v bias) with a
mixture-of-experts MLP plus a shared expert that every token goes through, scaled by
sigmoid(shared_expert_gate(x)).

Router as Qwen3-MoE's (softmax, top-k, renormalised when `norm_topk_prob`, off by default here);
`mlp_only_layers` / `decoder_sparse_step` layers keep a dense MLP of `intermediate_size`.
"""
from __future__ import annotations

import torch
from torch import nn

from radixserve.distributed.group import TensorParallel
from radixserve.models.llama import AttentionFlags, LlamaForCausalLM, dense_mlp
from radixserve.models.moe import Router, SparseMoE
from radixserve.models.parallel import ParallelGatedMLP, split_evenly
from radixserve.models.qwen3_moe import is_sparse_layer


class SharedExpertMoE(SparseMoE):
    """SparseMoE + sigmoid(shared_expert_gate(x)) * shared_expert(x)."""

    def __init__(self, config, dtype: torch.dtype, device, tp: TensorParallel) -> None:
        inter = split_evenly(config.moe_intermediate_size, tp, "moe_intermediate_size")
        super().__init__(config.hidden_size, inter, config.num_experts, config.num_experts_per_tok,
                         bool(config.norm_topk_prob), dtype, device, tp)
        shared = split_evenly(config.shared_expert_intermediate_size, tp, "shared_expert_intermediate_size")
        self.shared_expert = ParallelGatedMLP(config.hidden_size, shared, False, dtype, device, tp)
        self.shared_expert_gate = Router(config.hidden_size, 1, dtype, device)  # [1, hidden], replicated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; NOTE: two all-reduces under TP (the routed and the shared expert)."""
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)  # [T, 1] * [T, hidden]
        return super().forward(x) + shared


class Qwen2MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, config, dtype: torch.dtype, device, tp: TensorParallel | None = None) -> None:
        bias = bool(getattr(config, "qkv_bias", True))
        super().__init__(config, dtype, device, flags=AttentionFlags(qkv_bias=bias, o_bias=False, qk_norm=False),
                         tp=tp)

    def make_mlp(self, config, layer_id: int, dtype: torch.dtype, device, tp: TensorParallel) -> nn.Module:
        if not is_sparse_layer(config, layer_id):
            return dense_mlp(config, dtype, device, tp)
        return SharedExpertMoE(config, dtype, device, tp)
