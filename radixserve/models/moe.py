"""Mixture-of-experts MLP: a softmax top-k router over E gated experts, stacked into [E, ...] tensors.

Each token goes to its top-k experts; their outputs, weighted by the routing weights, are summed.
Under tensor parallelism every rank holds all experts' slice of the intermediate dimension (gate|up
rows, down columns) and the router whole; the partial outputs meet in one all-reduce, as in the
dense ParallelGatedMLP. On CUDA with fused ops dense experts run in the fused Triton kernel
(kernels/fused_moe.py), elsewhere its torch reference (a loop over the experts that got tokens).
How the experts are stored (dense, int4, fp8) and run is the block's expert method (moe_quant.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.distributed.group import TensorParallel
from radixserve.models.moe_quant import UNQUANTIZED_EXPERTS, expert_param

# HF expert projection name -> (our stacked parameter, shard within it)
EXPERT_PARTS = {"gate_proj": ("experts_gate_up", 0), "up_proj": ("experts_gate_up", 1),
                "down_proj": ("experts_down", None)}


def num_experts_of(config) -> int:
    """Experts per MoE layer of an HF config (Qwen3-MoE `num_experts`, Mixtral `num_local_experts`); 0: dense."""
    return int(getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None) or 0)


def route(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int64): softmax over all
    experts in float32, the k largest, renormalised to sum to 1 when asked (Mixtral always,
    Qwen3-MoE when norm_topk_prob)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class Router(nn.Module):
    """The gate: logits = x W^T, W [E, hidden]. Not a Linear, so it stays dense under quantization."""

    def __init__(self, hidden: int, num_experts: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class SparseMoE(nn.Module):
    """top-k of `num_experts` experts down(silu(gate(x)) * up(x)) per token, over this rank's
    `intermediate` features of each expert."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int, renormalize: bool,
                 dtype: torch.dtype, device, tp: TensorParallel) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok ({top_k}) must be in 1..num_experts ({num_experts})")
        self.hidden, self.intermediate, self.num_experts = hidden, intermediate, num_experts
        self.top_k, self.renormalize, self.tp = top_k, renormalize, tp
        self.gate = Router(hidden, num_experts, dtype, device)
        empty = dict(dtype=dtype, device=device)
        self.experts_gate_up = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden, **empty),
                                            requires_grad=False)  # [E, 2I, hidden]: gate rows, then up rows
        self.experts_down = nn.Parameter(torch.empty(num_experts, hidden, intermediate, **empty),
                                         requires_grad=False)  # [E, hidden, I]
        self.fused_ops = True
        self.method = UNQUANTIZED_EXPERTS  # how the stacks are stored and run (models/moe_quant.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden] (summed over ranks)."""
        weights, ids = route(self.gate(x), self.top_k, self.renormalize)  # [T, k] each
        return self.tp.all_reduce(self.method.apply(self, x, weights, ids))

    # ---- loading: one checkpoint tensor per expert, projection and leaf (see weights.py)

    def expert_keys(self, leaf: str) -> list[tuple[int, int | None]]:
        """The (expert, shard) pieces parameter `leaf` is loaded from."""
        shards = (0, 1) if leaf.startswith("experts_gate_up") else (None,)
        return [(e, s) for e in range(self.num_experts) for s in shards]

    def expert_target(self, expert: int, part: str, tensor: torch.Tensor, leaf: str = "weight"
                      ) -> tuple[str, int | None, torch.Tensor, torch.Tensor] | None:
        """Leaf `leaf` (weight; or the expert method's qweight / scales / zeros / weight_scale) of HF
        expert `expert`'s projection `part` (gate_proj / up_proj / down_proj) -> (our parameter, shard,
        the view of it to fill, this rank's slice of `tensor`); None for an unknown part, leaf or
        expert. A tensor of the wrong full size is left whole for the loader's shape check."""
        if part not in EXPERT_PARTS or leaf not in self.method.leaves or not 0 <= expert < self.num_experts:
            return None
        stack, shard = EXPERT_PARTS[part]
        name = expert_param(stack, leaf)
        param = getattr(self, name).data[expert]
        i, full, start = self.intermediate, self.intermediate * self.tp.size, self.tp.rank * self.intermediate
        if shard is None:  # down [hidden, I]: this rank's input columns (packed nibbles / groups per index)
            per = self.method.cols_per_index(leaf)
            if per is not None and tensor.dim() == 2 and tensor.shape[1] == -(-full // per):
                tensor = tensor.narrow(1, start // per, -(-i // per))
            return name, None, param, tensor
        if tensor.dim() >= 1 and tensor.shape[0] == full:
            tensor = tensor.narrow(0, start, i)
        return name, shard, param[shard * i:(shard + 1) * i], tensor
