"""GGUF files: an HF config from the metadata and dequantised tensors under HF names.

llama.cpp's converter permutes the rows of the Llama q/k projections (it uses interleaved rope
pairs, HF uses rotate-half); `_unpermute` undoes that so the weights equal the HF checkpoint's.
Qwen2/Qwen3 GGUFs use the NeoX rope layout and are not permuted.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch
import transformers

ARCHITECTURES = {  # GGUF general.architecture -> (HF architecture, config class name)
    "llama": ("LlamaForCausalLM", "LlamaConfig"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"),
}
PERMUTED_ARCHS = ("llama",)
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def open_gguf(path: str):
    """A gguf.GGUFReader; ValueError if the file is not readable GGUF."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/struct/IndexError/... on bad files
        raise ValueError(f"{path} is corrupt or not a GGUF file ({type(exc).__name__}: {exc}); "
                         "re-download it or pass a HF model directory") from exc


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf_config(reader, path: str) -> transformers.PretrainedConfig:
    """Build the HF config (LlamaConfig / Qwen2Config / Qwen3Config) from GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    hf_arch, config_cls = ARCHITECTURES[arch]

    def meta(key: str, default=None):
        return _field(reader, f"{arch}.{key}", default)

    if meta("expert_count"):  # llama.cpp writes Mixtral as "llama" with stacked ffn_*_exps tensors
        raise ValueError(f"{path}: mixture-of-experts GGUF files ({meta('expert_count')} experts) are not supported "
                         "yet; serve the model's HF safetensors directory instead")

    heads = meta("attention.head_count")
    hidden = meta("embedding_length")
    tensor_names = {t.name for t in reader.tensors}
    vocab = meta("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    rope = {"rope_type": "default", "rope_theta": float(meta("rope.freq_base", 10000.0))}
    scaling = meta("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ValueError(f"{path}: GGUF rope scaling {scaling!r} is not supported (only linear)")
        rope.update(rope_type="linear", factor=float(meta("rope.scaling.factor")))
    kwargs = dict(
        architectures=[hf_arch],
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=int(heads),
        num_key_value_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=int(meta("attention.key_length") or meta("rope.dimension_count") or hidden // heads),
        max_position_embeddings=int(meta("context_length", 4096)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_parameters=rope,
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        attention_bias="blk.0.attn_output.bias" in tensor_names,
    )
    config = getattr(transformers, config_cls)(**kwargs)
    if "rope_freqs.weight" in tensor_names:  # llama3-style scaling baked into per-frequency factors
        config.rope_freq_factors = _dequantize(_tensor(reader, "rope_freqs.weight")).tolist()
    return config


def _tensor(reader, name: str):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise KeyError(name)


def _dequantize(t) -> np.ndarray:
    import gguf

    out = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    return out if out.flags.writeable else out.copy()  # unquantised tensors come back as read-only memmaps


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's rope row permutation: rows (head, pair, 2) -> (head, 2, pair)."""
    rest = w.shape[1:]
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor, None for tensors without one (rope_freqs)."""
    match = _BLOCK_RE.match(gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part not in BLOCK_TENSORS:
            raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
        return f"model.layers.{layer}.{BLOCK_TENSORS[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base == "rope_freqs":
        return None
    if base not in TOP_TENSORS:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"{TOP_TENSORS[base]}.{kind}"


def gguf_weights(reader, config) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) for every tensor, dequantised one at a time."""
    permute = _field(reader, "general.architecture") in PERMUTED_ARCHS
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        w = torch.from_numpy(_dequantize(t))
        if permute and ".self_attn.q_proj." in name:
            w = _unpermute(w, config.num_attention_heads)
        elif permute and ".self_attn.k_proj." in name:
            w = _unpermute(w, config.num_key_value_heads)
        yield name, w
