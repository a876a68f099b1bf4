"""Qwen3: the Llama block with per-head RMSNorm on q and k before rope.

head_dim is explicit in the config and may differ from hidden_size / num_attention_heads.
"""
from __future__ import annotations

import torch

from radixserve.distributed.group import TensorParallel
from radixserve.models.llama import AttentionFlags, LlamaForCausalLM


def qwen3_flags(config) -> AttentionFlags:
    bias = bool(getattr(config, "attention_bias", False))
    return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=True)


class Qwen3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config, dtype: torch.dtype, device, tp: TensorParallel | None = None) -> None:
        super().__init__(config, dtype, device, flags=qwen3_flags(config), tp=tp)
