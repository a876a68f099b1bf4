"""Tensor-parallel layers: column- and row-parallel linears, the vocabulary-parallel embedding and
LM head, and the head split of attention.

Each rank holds one slice of a weight; `shard_checkpoint` cuts that slice out of a full
checkpoint tensor at load time, so no rank keeps the whole model. With one rank every layer is
its plain counterpart (no communication, identity slicing).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from radixserve.distributed.group import TensorParallel
from radixserve.models.layers import GatedMLP, Linear
from radixserve.models.linear_methods import single_row


def split_evenly(total: int, tp: TensorParallel, what: str) -> int:
    """total / tp.size, or a ValueError saying which sizes would work."""
    if total % tp.size:
        ok = [n for n in range(1, total + 1) if total % n == 0]
        raise ValueError(f"{what} ({total}) is not divisible by tp={tp.size}; use tp in {ok}")
    return total // tp.size


def take_rows(tensor: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """tensor.narrow(dim, start, length), zero-padded where it runs past the end (vocab padding)."""
    have = max(0, min(length, tensor.shape[dim] - start))
    part = tensor.narrow(dim, start, have) if have else tensor.narrow(dim, 0, 0)
    if have == length:
        return part
    pad_shape = list(tensor.shape)
    pad_shape[dim] = length - have
    return torch.cat([part, tensor.new_zeros(pad_shape)], dim=dim)


class HeadSplit(NamedTuple):
    """This rank's attention heads: q heads [q_start, q_start + num_heads), KV heads
    [kv_start, kv_start + num_kv_heads) of the model's."""

    num_heads: int
    num_kv_heads: int
    q_start: int
    kv_start: int

    @staticmethod
    def of(total_heads: int, total_kv_heads: int, tp: TensorParallel) -> "HeadSplit":
        """Query heads split evenly; KV heads split evenly too, or, when there are fewer KV heads
        than ranks, each replicated on tp / num_kv_heads consecutive ranks (each rank's query heads
        then all read one KV head)."""
        heads = split_evenly(total_heads, tp, "num_attention_heads")
        if total_kv_heads >= tp.size:
            kv = split_evenly(total_kv_heads, tp, "num_key_value_heads")
        elif tp.size % total_kv_heads:
            raise ValueError(f"num_key_value_heads ({total_kv_heads}) < tp={tp.size} and does not divide it, so "
                             "the KV heads cannot be replicated evenly; use a tp that divides or is divisible by "
                             f"{total_kv_heads}")
        else:
            kv = 1
        # NOTE: rank r's query heads start at r*H/tp; with group size H/Hkv their KV heads start at
        # floor(r*Hkv/tp), which also names the replicated head when Hkv < tp.
        return HeadSplit(heads, kv, tp.rank * heads, tp.rank * total_kv_heads // tp.size)


def check_split(config, tp_size: int) -> None:
    """ValueError unless a model with this HF config splits over tp_size ranks (checked before
    any rank starts)."""
    for rank in (0, tp_size - 1):
        view = TensorParallel(rank, tp_size, group=object() if tp_size > 1 else None)
        heads = config.num_attention_heads
        HeadSplit.of(heads, getattr(config, "num_key_value_heads", None) or heads, view)
        split_evenly(config.intermediate_size, view, "intermediate_size")
        if getattr(config, "moe_intermediate_size", None):  # the experts' own size (Qwen3-MoE)
            split_evenly(config.moe_intermediate_size, view, "moe_intermediate_size")
        if getattr(config, "shared_expert_intermediate_size", None):  # Qwen2-MoE's shared expert
            split_evenly(config.shared_expert_intermediate_size, view, "shared_expert_intermediate_size")


class ColumnParallelLinear(Linear):
    """y_local = x W_local^T: the output features are split across ranks; no communication.

    `out_features` is this rank's count. Non-fused users (the LM head) cut rows
    [rank * out_features, ...) of the checkpoint tensor; fused users (qkv, gate_up) place each
    component themselves (see weights.py)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device,
                 tp: TensorParallel) -> None:
        super().__init__(in_features, out_features, bias, dtype, device)
        self.tp = tp

    def shard_checkpoint(self, leaf: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows; the padded vocabulary of an LM head may leave the last rank short."""
        rows, dim = self.out_features, self.method.layout(leaf).row_dim
        if self.tp.size == 1 or dim is None or not (rows * (self.tp.size - 1) < tensor.shape[dim] <= rows * self.tp.size):
            return tensor  # one rank, or a wrong size that the loader's shape check reports
        return take_rows(tensor, dim, self.tp.rank * rows, rows)


class RowParallelLinear(Linear):
    """y = sum over ranks of x_local W_local^T (+ b): the input features are split; one all-reduce.

    `in_features` is this rank's count; the bias is added by rank 0 only, before the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device,
                 tp: TensorParallel) -> None:
        super().__init__(in_features, out_features, bias, dtype, device)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.tp.rank == 0 else None
        y = self.method.apply(self, x, bias)  # [T, out] partial sums (the GEMV at batch 1 when dense)
        return self.tp.all_reduce(y)

    def shard_checkpoint(self, leaf: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's input columns; quantized parameters are cut in their own units (packed pairs,
        groups), and what is indexed by no input column (bias, act-order scales) stays whole."""
        layout = self.method.layout(leaf)
        if layout.col_dim is None or tensor.dim() <= layout.col_dim:
            return tensor  # the bias is whole on every rank; a wrong size is reported by the loader
        per = self.in_features // layout.cols_per_index
        if tensor.shape[layout.col_dim] != per * self.tp.size:
            return tensor
        return take_rows(tensor, layout.col_dim, self.tp.rank * per, per)


class ParallelGatedMLP(GatedMLP):
    """GatedMLP over this rank's `intermediate` features: gate_up column-parallel (this rank's gate
    rows, then its up rows), down row-parallel (one all-reduce)."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, dtype: torch.dtype, device,
                 tp: TensorParallel) -> None:
        self._tp = tp  # NOTE: plain attribute set before nn.Module.__init__ is fine for non-modules
        super().__init__(hidden, intermediate, bias, dtype, device)

    def _projections(self, hidden, intermediate, bias, dtype, device) -> tuple[Linear, Linear]:
        return (ColumnParallelLinear(hidden, 2 * intermediate, bias, dtype, device, self._tp),
                RowParallelLinear(intermediate, hidden, bias, dtype, device, self._tp))

    def checkpoint_rows(self, shard: int) -> tuple[int, int]:
        """(first row of this rank's part, rows in all) of the checkpoint's gate (0) or up (1) projection."""
        return self._tp.rank * self.intermediate, self._tp.size * self.intermediate


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding whose vocabulary rows are split across ranks (padded to a multiple of tp).

    A rank looks up the ids in its range, writes zeros for the others, and the all-reduce sums
    the one non-zero row per token. Also the LM head when embeddings are tied."""

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, device, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.rows = -(-vocab_size // tp.size)  # rows per rank, the last rank's padded with zeros
        self.start = tp.rank * self.rows
        self.weight = torch.nn.Parameter(torch.empty(self.rows, hidden, dtype=dtype, device=device),
                                         requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)  # [T] -> [T, hidden]
        local = ids - self.start  # [T]
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # [T, hidden]
        out.masked_fill_(outside.unsqueeze(1), 0.0)
        return self.tp.all_reduce(out)

    def shard_checkpoint(self, leaf: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1 or tensor.shape[0] != self.vocab_size:
            return tensor  # one rank, or a wrong size that the loader's shape check reports
        return take_rows(tensor, 0, self.start, self.rows)


def parallel_logits(hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int, tp: TensorParallel,
                    fused_ops: bool) -> torch.Tensor:
    """[N, hidden] x this rank's vocabulary rows [V/tp, hidden] -> [N, vocab] float32 on every rank
    (one all-gather; rank 0 samples from it)."""
    if single_row(hidden, fused_ops):
        from radixserve.kernels.gemv import gemv
        local = gemv(hidden, weight)  # [1, V/tp]
    else:
        local = F.linear(hidden, weight)  # [N, V/tp]
    full = tp.all_gather_last(local)  # [N, tp * V/tp]
    if full.shape[1] != vocab_size:
        full = full[:, :vocab_size]  # drop the padding rows of the last rank
    return full.float()
