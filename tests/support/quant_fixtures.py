"""Tiny random Llama checkpoints written in quantized formats' exact on-disk conventions (imported,
not collected), each with the float32 transformers model on its dequantised weights: the oracle.

The packing here is written from each format's own definition, independently of radixserve's
decoders (radixserve/models/quant_formats.py); compressed-tensors checkpoints are packed by the
compressed-tensors library itself.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from model_fixtures import VOCAB

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")
SHARED_INPUT = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
                "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up"}
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def tiny_llama(seed: int = 0) -> transformers.PreTrainedModel:
    """hidden 128, intermediate 256 (group 128 fits every projection), 2 layers, float32."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.12)
    return model


def rtn(w: torch.Tensor, group: int, sym: bool, g_idx: torch.Tensor | None, zero_min: int = 0):
    """Round-to-nearest 4-bit of w [N, K] over groups (columns of group g: g_idx == g, or k // group).
    -> q [N, K] int64 in 0..15, zeros [N, groups] int64, scales [N, groups] float16 (as the formats store)."""
    n, k = w.shape
    g = torch.arange(k) // group if g_idx is None else g_idx.long()
    groups = int(g.max()) + 1
    scales, zeros = torch.empty(n, groups), torch.empty(n, groups, dtype=torch.long)
    for j in range(groups):
        cols = w[:, g == j]
        if sym:
            s = cols.abs().amax(1) / 7.5
            z = torch.full((n,), 8)
        else:
            lo, hi = cols.amin(1).clamp(max=0), cols.amax(1).clamp(min=0)
            s = (hi - lo) / 15
            z = torch.round(-lo / s).long().clamp(zero_min, 15)
        scales[:, j], zeros[:, j] = s, z
    scales = scales.half()
    q = (torch.round(w / scales.float()[:, g]) + zeros[:, g]).clamp(0, 15).long()
    return q, zeros, scales


def dequant(q, zeros, scales, g_idx, group):
    g = torch.arange(q.shape[1]) // group if g_idx is None else g_idx.long()
    return (q - zeros[:, g]).float() * scales.float()[:, g]


def _int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> int32 with the same bits."""
    return torch.from_numpy(words.numpy().astype(np.uint32).view(np.int32))


def pack_k(q: torch.Tensor) -> torch.Tensor:
    """GPTQ qweight: q [N, K] -> int32 [K/8, N], k % 8 at bits 4 (k % 8)."""
    qt = q.t()  # [K, N]
    words = torch.zeros(qt.shape[0] // 8, qt.shape[1], dtype=torch.long)
    for i in range(8):
        words |= qt[i::8] << (4 * i)
    return _int32(words)


def pack_n(v: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """v [R, C] -> int32 [R, C/8] packed along C; nibble i of word j holds column 8j + order[i]."""
    words = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.long)
    for i in range(8):
        words |= v[:, order[i]::8] << (4 * i)
    return _int32(words)


def _act_orders(model, group: int, seed: int) -> dict[str, torch.Tensor]:
    """One act-order g_idx per layer input (q/k/v and gate/up share theirs: same input, same Hessian)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(model.config.num_hidden_layers):
        for proj in PROJ:
            key = f"{i}.{SHARED_INPUT.get(proj, proj)}"
            if key not in out:
                k = model.get_submodule(f"model.layers.{i}.{proj}").in_features
                out[key] = (torch.argsort(torch.randperm(k, generator=gen)) // group).to(torch.int32)
    return out


def write_int4_checkpoint(fmt: str, out_dir: str, tokenizer, group: int = 32, sym: bool = False,
                          act_order: bool = False, seed: int = 0) -> transformers.PreTrainedModel:
    """fmt gptq | awq | compressed-tensors: write a 4-bit checkpoint of a tiny Llama; returns the oracle
    (the float32 model with every projection replaced by its dequantised weight)."""
    model = tiny_llama(seed)
    orders = _act_orders(model, group, seed) if act_order else {}
    state = {k: v for k, v in model.state_dict().items()}
    for i in range(model.config.num_hidden_layers):
        for proj in PROJ:
            name = f"model.layers.{i}.{proj}"
            layer = model.get_submodule(name)
            g_idx = orders.get(f"{i}.{SHARED_INPUT.get(proj, proj)}")
            g_idx = g_idx.clone() if g_idx is not None else None  # one tensor per module on disk
            # GPTQ v1 stores zero - 1 in a nibble: keep zeros >= 1 so no stored value wraps
            q, zeros, scales = rtn(layer.weight.data, group, sym, g_idx, zero_min=1 if fmt == "gptq" else 0)
            with torch.no_grad():
                layer.weight.copy_(dequant(q, zeros, scales, g_idx, group))
            del state[name + ".weight"]
            if fmt == "gptq":
                state[name + ".qweight"] = pack_k(q)
                state[name + ".qzeros"] = pack_n(zeros.t() - 1)  # [groups, N/8], stored zero - 1
                state[name + ".scales"] = scales.t().contiguous()  # [groups, N]
                state[name + ".g_idx"] = g_idx if g_idx is not None else (torch.arange(q.shape[1]) // group).int()
            elif fmt == "awq":
                state[name + ".qweight"] = pack_n(q.t(), AWQ_ORDER)  # [K, N/8]
                state[name + ".qzeros"] = pack_n(zeros.t(), AWQ_ORDER)  # [groups, N/8]
                state[name + ".scales"] = scales.t().contiguous()
            else:
                from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
                state[name + ".weight_packed"] = pack_to_int32((q - 8).to(torch.int8), 4)
                state[name + ".weight_scale"] = scales.float()
                state[name + ".weight_shape"] = torch.tensor(list(q.shape))
                if not sym:
                    state[name + ".weight_zero_point"] = pack_to_int32((zeros - 8).to(torch.int8), 4, packed_dim=0)
                if g_idx is not None:
                    state[name + ".weight_g_idx"] = g_idx
    config = model.config.to_dict()
    config["quantization_config"] = _quant_config(fmt, group, sym, act_order)
    _save(out_dir, config, state, tokenizer)
    return model


def _quant_config(fmt: str, group: int, sym: bool, act_order: bool) -> dict:
    if fmt == "gptq":
        return dict(quant_method="gptq", bits=4, group_size=group, desc_act=act_order, sym=sym,
                    checkpoint_format="gptq")
    if fmt == "awq":
        return dict(quant_method="awq", bits=4, group_size=group, zero_point=True, version="gemm")
    weights = dict(num_bits=4, type="int", symmetric=sym, strategy="group", group_size=group,
                   actorder="group" if act_order else None)
    return dict(quant_method="compressed-tensors", format="pack-quantized", ignore=["lm_head"],
                config_groups={"group_0": dict(targets=["Linear"], weights=weights, input_activations=None)})


def write_fp8_checkpoint(out_dir: str, tokenizer, seed: int = 0) -> transformers.PreTrainedModel:
    """compressed-tensors float-quantized FP8 (per-channel weights, dynamic per-token activations);
    returns the oracle: dequantised weights, and every projection's input fake-quantised per token."""
    model = tiny_llama(seed)
    state = dict(model.state_dict())
    for i in range(model.config.num_hidden_layers):
        for proj in PROJ:
            name = f"model.layers.{i}.{proj}"
            layer = model.get_submodule(name)
            w = layer.weight.data
            scale = w.abs().amax(1, keepdim=True) / 448  # [N, 1]
            w8 = (w / scale).to(torch.float8_e4m3fn)
            with torch.no_grad():
                layer.weight.copy_(w8.float() * scale)
            state[name + ".weight"], state[name + ".weight_scale"] = w8, scale
            layer.register_forward_pre_hook(lambda mod, args: (fake_quant_per_token(args[0]),))
    weights = dict(num_bits=8, type="float", symmetric=True, strategy="channel", dynamic=False)
    acts = dict(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    config = model.config.to_dict()
    config["quantization_config"] = dict(
        quant_method="compressed-tensors", format="float-quantized", ignore=["lm_head"],
        config_groups={"group_0": dict(targets=["Linear"], weights=weights, input_activations=acts)})
    _save(out_dir, config, state, tokenizer)
    return model


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Each token's row through fp8 e4m3 with scale max|row| / 448, back to float32."""
    scale = (x.abs().amax(-1, keepdim=True) / 448).clamp(min=1e-12 / 448)
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale


def _save(out_dir: str, config: dict, state: dict, tokenizer) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"))
    tokenizer.save_pretrained(out_dir)
