"""Llama family (Llama 2/3/3.1/3.2, Mistral, SmolLM2) over the paged KV cache.

Qwen2 and Qwen3 reuse these blocks through `AttentionFlags` (qkv bias, per-head q/k RMSNorm).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import nn

from radixserve.models.layers import (Embedding, GatedMLP, Linear, RMSNorm, RotaryEmbedding, rope_params,
                                     single_row)
from radixserve.models.weights import load_stacked_weights
from radixserve.runtime.attention.base import AttentionBackend, RopeTables
from radixserve.runtime.forward_batch import ForwardBatch


class AttentionFlags(NamedTuple):
    qkv_bias: bool  # bias on q/k/v projections
    o_bias: bool  # bias on the output projection
    qk_norm: bool  # RMSNorm over each head of q and k before rope (Qwen3)


def llama_flags(config) -> AttentionFlags:
    bias = bool(getattr(config, "attention_bias", False))
    return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=False)


class Attention(nn.Module):
    def __init__(self, config, layer_id: int, flags: AttentionFlags, rotary: RotaryEmbedding,
                 dtype: torch.dtype, device) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scaling = self.head_dim ** -0.5
        self.layer_id = layer_id
        self.qkv_proj = Linear(hidden, self.q_size + 2 * self.kv_size, flags.qkv_bias, dtype, device)
        self.o_proj = Linear(self.q_size, hidden, flags.o_bias, dtype, device)
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


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_id: int, flags: AttentionFlags, rotary: RotaryEmbedding,
                 dtype: torch.dtype, device) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.self_attn = Attention(config, layer_id, flags, rotary, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, bool(getattr(config, "mlp_bias", False)),
                            dtype, device)

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
    """Decoder-only transformer; HF parameter names are mapped onto fused qkv / gate_up weights."""

    def __init__(self, config, dtype: torch.dtype, device, flags: AttentionFlags | None = None) -> None:
        super().__init__()
        flags = flags or llama_flags(config)
        self.config = config
        self.dtype = dtype
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        factors = getattr(config, "rope_freq_factors", None)  # set by the GGUF loader only
        self.rotary = RotaryEmbedding(self.head_dim, config.max_position_embeddings, rope_params(config), device,
                                      freq_factors=torch.tensor(factors) if factors is not None else None)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype, device)
        self.layers = nn.ModuleList(DecoderLayer(config, i, flags, self.rotary, dtype, device)
                                    for i in range(self.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        if self.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, dtype, device)

    def forward(self, batch: ForwardBatch, attn: AttentionBackend) -> torch.Tensor:
        """-> hidden states [T, hidden] after the final norm."""
        x = self.embed_tokens(batch.input_ids)  # [T, hidden]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, batch, attn)
        return self.norm.add_forward(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        if single_row(hidden, self.norm.fused_ops):
            from radixserve.kernels.gemv import gemv
            return gemv(hidden, self.lm_head.weight).float()
        return torch.nn.functional.linear(hidden, self.lm_head.weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF names (model.layers.N.self_attn.q_proj.weight, ...) -> our fused parameters."""
        load_stacked_weights(self, weights)
