"""Llama family (Llama 2/3/3.1/3.2, Mistral, SmolLM2) over the paged KV cache.

Qwen2 and Qwen3 reuse these blocks through `AttentionFlags` (qkv bias, per-head q/k RMSNorm).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import nn

from radixserve.core.attention import AttentionBackend, RopeTables
from radixserve.core.forward_batch import ForwardBatch
from radixserve.distributed.group import TensorParallel, single_rank
from radixserve.models.layers import RMSNorm, RotaryEmbedding, rope_params
from radixserve.models.parallel import (ColumnParallelLinear, HeadSplit, ParallelGatedMLP, RowParallelLinear,
                                        VocabParallelEmbedding, parallel_logits, split_evenly)
from radixserve.models.weights import load_stacked_weights


class AttentionFlags(NamedTuple):
    qkv_bias: bool  # bias on q/k/v projections
    o_bias: bool  # bias on the output projection
    qk_norm: bool  # RMSNorm over each head of q and k before rope (Qwen3)


def llama_flags(config) -> AttentionFlags:
    bias = bool(getattr(config, "attention_bias", False))
    return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=False)


class Attention(nn.Module):
    """Self-attention over this rank's heads (all of them with one rank): qkv column-parallel,
    o row-parallel (one all-reduce)."""

    def __init__(self, config, layer_id: int, flags: AttentionFlags, rotary: RotaryEmbedding,
                 dtype: torch.dtype, device, tp: TensorParallel) -> None:
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // total_heads
        self.total_heads = total_heads
        self.total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.split = HeadSplit.of(total_heads, self.total_kv_heads, tp)
        self.num_heads, self.num_kv_heads = self.split.num_heads, self.split.num_kv_heads  # this rank's
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scaling = self.head_dim ** -0.5
        self.layer_id = layer_id
        self.qkv_proj = ColumnParallelLinear(hidden, self.q_size + 2 * self.kv_size, flags.qkv_bias, dtype, device, tp)
        self.o_proj = RowParallelLinear(self.q_size, hidden, flags.o_bias, dtype, device, tp)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype, device) if flags.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype, device) if flags.qk_norm else None
        self.rotary = rotary  # shared by all layers

    def forward(self, x: torch.Tensor, batch: ForwardBatch, attn: AttentionBackend) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary.fused_ops and q.is_cuda and getattr(attn, "fuses_rope", False):
            # NOTE: on CUDA the backend rotates q and k in its KV-store kernel (one launch for both).
            rope = RopeTables(batch.positions, self.rotary.cos, self.rotary.sin)
            out = attn.forward(q, k, v, self.layer_id, batch, self.scaling, rope=rope)  # [T, H, D]
        else:
            q, k = self.rotary(batch.positions, q, k)
            out = attn.forward(q, k, v, self.layer_id, batch, self.scaling)  # [T, H, D]
        return self.o_proj(out.reshape(t, self.q_size))

    def checkpoint_rows(self, shard: int) -> tuple[int, int]:
        """(first row of this rank's part, rows in all) of the checkpoint's q (0), k (1) or v (2)
        projection."""
        if shard == 0:
            return self.split.q_start * self.head_dim, self.total_heads * self.head_dim
        return self.split.kv_start * self.head_dim, self.total_kv_heads * self.head_dim


def dense_mlp(config, dtype: torch.dtype, device, tp: TensorParallel) -> ParallelGatedMLP:
    intermediate = split_evenly(config.intermediate_size, tp, "intermediate_size")
    return ParallelGatedMLP(config.hidden_size, intermediate, bool(getattr(config, "mlp_bias", False)), dtype, device,
                            tp)


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_id: int, flags: AttentionFlags, rotary: RotaryEmbedding,
                 dtype: torch.dtype, device, tp: TensorParallel, mlp: nn.Module | None = None) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.self_attn = Attention(config, layer_id, flags, rotary, dtype, device, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.mlp = mlp if mlp is not None else dense_mlp(config, dtype, device, tp)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch,
                attn: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) -> (mlp output, residual): the layer's output is their sum, which the next
        norm forms in its add+norm kernel (no separate add per layer). residual None: x is the
        embedding. NOTE: `residual` may be updated in place."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, batch, attn)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    """Decoder-only transformer; HF parameter names are mapped onto fused qkv / gate_up weights.

    With `tp` of several ranks this is one rank's shard: `num_heads` / `num_kv_heads` are the
    rank's own (its KV pool holds those), and `compute_logits` gathers the whole vocabulary."""

    def __init__(self, config, dtype: torch.dtype, device, flags: AttentionFlags | None = None,
                 tp: TensorParallel | None = None) -> None:
        super().__init__()
        flags = flags or llama_flags(config)
        tp = tp or single_rank()
        self.tp = tp
        self.config = config
        self.dtype = dtype
        self.num_layers = config.num_hidden_layers
        total_heads = config.num_attention_heads
        split = HeadSplit.of(total_heads, getattr(config, "num_key_value_heads", None) or total_heads, tp)
        self.num_heads, self.num_kv_heads = split.num_heads, split.num_kv_heads  # this rank's
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.vocab_size = config.vocab_size
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        factors = getattr(config, "rope_freq_factors", None)  # set by the GGUF loader only
        self.rotary = RotaryEmbedding(self.head_dim, config.max_position_embeddings, rope_params(config), device,
                                      freq_factors=torch.tensor(factors) if factors is not None else None)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype, device, tp)
        self.layers = nn.ModuleList(DecoderLayer(config, i, flags, self.rotary, dtype, device, tp,
                                                 self.make_mlp(config, i, dtype, device, tp))
                                    for i in range(self.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        if self.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        else:  # vocabulary rows split like the embedding's (padded to a multiple of tp)
            self.lm_head = ColumnParallelLinear(config.hidden_size, self.embed_tokens.rows, False, dtype, device, tp)

    def make_mlp(self, config, layer_id: int, dtype: torch.dtype, device, tp: TensorParallel) -> nn.Module:
        """The MLP of layer `layer_id`: dense here; mixture-of-experts families override it."""
        return dense_mlp(config, dtype, device, tp)

    def forward(self, batch: ForwardBatch, attn: AttentionBackend) -> torch.Tensor:
        """-> hidden states [T, hidden] after the final norm."""
        x = self.embed_tokens(batch.input_ids)  # [T, hidden]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, batch, attn)
        return self.norm.add_forward(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32 (on every rank; a collective under tensor parallelism)."""
        return parallel_logits(hidden, self.lm_head.weight, self.vocab_size, self.tp, self.norm.fused_ops)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF names (model.layers.N.self_attn.q_proj.weight, ...) -> our fused parameters."""
        load_stacked_weights(self, weights)
