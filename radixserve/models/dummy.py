"""Random ("dummy") weights of real model shapes, for benchmarks and tests without downloads."""
from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# NOTE: tiny configs keep SmolLM2's vocabulary (49152) so the embedded tokenizer fits them.
BUILTIN_CONFIGS: dict[str, dict] = {
    "llama-3.1-8b": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256,
                         hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=False, bos_token_id=128000,
                         eos_token_id=128009),
    "qwen2.5-7b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=152064,
                       hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
    "qwen3-8b": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=4096,
                     intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
    "smollm2-135m": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2),
    "tiny-llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=4096, rms_norm_eps=1e-5,
                       rope_parameters={**_LLAMA3_ROPE, "original_max_position_embeddings": 256},
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "tiny-qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=49152, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=4096, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2),
    "tiny-qwen3": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=49152, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2),
    # mixture of experts: the real shapes, and tiny ones for tests
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], vocab_size=151936,
                          hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                          num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960,
                          rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                          tie_word_embeddings=False),
    "mixtral-8x7b": dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=32000,
                         hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2),
    "qwen1.5-moe-a2.7b": dict(model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"], vocab_size=151936,
                              hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
                              shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                              num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
                              max_position_embeddings=8192, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                              tie_word_embeddings=False),
    "tiny-qwen3-moe": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], vocab_size=49152,
                           hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8,
                           num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=4096,
                           rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "tiny-mixtral": dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=49152, hidden_size=64,
                         intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2),
}


def dummy_config(spec: str) -> PretrainedConfig:
    """Config for `dummy:<spec>`: a built-in name, a config.json file, or a directory holding one."""
    if spec in BUILTIN_CONFIGS:
        params = dict(BUILTIN_CONFIGS[spec])
        return AutoConfig.for_model(params.pop("model_type"), **params)
    if os.path.isdir(spec) or spec.endswith(".json") and os.path.isfile(spec):
        try:
            return AutoConfig.from_pretrained(spec, local_files_only=True)
        except Exception as exc:  # OSError, ValueError, transformers' strict-dataclass validation errors
            raise ValueError(f"could not read a model config from {spec} ({type(exc).__name__}: {exc})") from exc
    raise ValueError(f"dummy model {spec!r} is neither a built-in ({', '.join(BUILTIN_CONFIGS)}) "
                     "nor an existing config.json / model directory")


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Fill every parameter in place on its device: norms at 1, everything else N(0, 0.02)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=gen)
