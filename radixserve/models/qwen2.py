"""Qwen2 / Qwen2.5: the Llama block with bias on the q/k/v projections (none on o_proj)."""
from __future__ import annotations

import torch

from radixserve.distributed.group import TensorParallel
from radixserve.models.llama import AttentionFlags, LlamaForCausalLM

QWEN2_FLAGS = AttentionFlags(qkv_bias=True, o_bias=False, qk_norm=False)


class Qwen2ForCausalLM(LlamaForCausalLM):
    def __init__(self, config, dtype: torch.dtype, device, tp: TensorParallel | None = None) -> None:
        super().__init__(config, dtype, device, flags=QWEN2_FLAGS, tp=tp)
