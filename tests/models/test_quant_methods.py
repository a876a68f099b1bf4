"""Linear methods end to end: on-the-fly fp8 / int4 quantization of a float checkpoint and of dummy
weights, tensor parallelism over quantized shards (split on group boundaries, act-order g_idx), the
engine option and CLI flag, and errors at load that name the field."""
from __future__ import annotations

import json
import os

import pytest
import torch

from engine_fixtures import hf_greedy, make_engine
from model_fixtures import embedded_tokenizer
from quant_fixtures import _save, fake_quant_per_token, tiny_llama, write_int4_checkpoint
from radixserve import SamplingParams
from radixserve.config import QUANTIZATIONS, EngineConfig
from radixserve.kernels.int4_matmul import int4_dequantize
from radixserve.models.linear_methods import pack_int4, rtn_int4, unpack_int4
from radixserve.models.quant_config import QUANTIZATIONS as LOADER_QUANTIZATIONS

GREEDY = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory, tokenizer):
    out = str(tmp_path_factory.mktemp("float"))
    model = tiny_llama(seed=3)
    _save(out, model.config.to_dict(), dict(model.state_dict()), tokenizer)
    return out


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (4, 21)]


def _dense_weights(layer) -> torch.Tensor:
    """A loaded projection's weight as the engine computes with it, float32 [N, K]."""
    m = layer.method
    if m.name == "int4":
        return int4_dequantize(layer.qweight, layer.scales, layer.zeros, m.group(layer),
                               layer.g_idx if m.act_order else None)
    return layer.weight.float() * layer.weight_scale[:, None]


def _oracle_from_engine(engine, seed: int, fp8: bool):
    """transformers' tiny Llama with each projection set to what the engine quantized it to."""
    hf = tiny_llama(seed)
    model = engine.runner.model
    q, kv = model.layers[0].self_attn.q_size, model.layers[0].self_attn.kv_size
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            hl = hf.model.layers[i]
            qw, kw, vw = _dense_weights(layer.self_attn.qkv_proj).split([q, kv, kv])
            gw, uw = _dense_weights(layer.mlp.gate_up_proj).chunk(2)
            for mod, w in ((hl.self_attn.q_proj, qw), (hl.self_attn.k_proj, kw), (hl.self_attn.v_proj, vw),
                           (hl.self_attn.o_proj, _dense_weights(layer.self_attn.o_proj)), (hl.mlp.gate_proj, gw),
                           (hl.mlp.up_proj, uw), (hl.mlp.down_proj, _dense_weights(layer.mlp.down_proj))):
                mod.weight.copy_(w)
                if fp8:
                    mod.register_forward_pre_hook(lambda m, args: (fake_quant_per_token(args[0]),))
    return hf


@pytest.mark.parametrize("method", ["fp8", "int4"])
def test_on_the_fly_quantization_greedy_matches_transformers(method, float_dir):
    engine = make_engine(model=float_dir, quantization=method, cuda_graph=False)
    try:
        model = engine.runner.model
        assert model.layers[1].mlp.down_proj.method.name == method
        assert not hasattr(model.layers[0].self_attn.qkv_proj, "weight") or method == "fp8"
        assert model.lm_head.method.name == "none"  # the LM head stays dense
        hf = _oracle_from_engine(engine, 3, fp8=method == "fp8")
        prompts = _prompts()
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(hf, ids, 10, set())
    finally:
        engine.shutdown()


def test_rtn_int4_is_within_half_a_step():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    q, scales, zeros = rtn_int4(w, 128)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scales.shape == zeros.shape == (8, 2)
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    deq = int4_dequantize(pack_int4(q), scales, zeros, 128)
    step = scales.repeat_interleave(128, dim=1)
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
@pytest.mark.parametrize("method", ["fp8", "int4"])
def test_dummy_weights_quantize_at_load(method, model):
    """Each quantized projection of a dummy model is its dense draw (same seed) within half a step;
    K = 64 < 128 is one partial group. Biases, norms and the (tied) embedding stay as drawn."""
    from radixserve.models.loader import load_model
    dense = load_model(f"dummy:{model}", "float32", "cpu", with_tokenizer=False).model
    quant = load_model(f"dummy:{model}", "float32", "cpu", with_tokenizer=False, quantization=method).model
    kept = {n: p for n, p in dense.named_parameters() if "proj.weight" not in n}
    for name, p in quant.named_parameters():
        if name in kept:
            assert torch.equal(p, kept[name]), name
    for i in range(len(dense.layers)):
        for path in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            w = dense.layers[i].get_submodule(path).weight
            layer = quant.layers[i].get_submodule(path)
            got = _dense_weights(layer)
            if method == "int4":
                assert layer.scales.shape[1] == -(-w.shape[1] // 128)
                step = layer.scales.float().repeat_interleave(128, dim=1)[:, :w.shape[1]]
            else:  # e4m3: 3 mantissa bits, so half a step is at most 2^-4 of the value (normal range)
                step = torch.maximum(w.abs() * 2 ** -3, layer.weight_scale[:, None] * 2 ** -9)
            assert bool(((got - w).abs() <= step / 2 + 1e-7).all()), f"layer {i} {path}"


@pytest.mark.parametrize("act_order", [False, True])
def test_tp2_quantized_shards_match_the_oracle(tmp_path, tokenizer, act_order):
    """GPTQ with group 32: o_proj (K 128) and down_proj (K 256) are cut on group boundaries (their
    scales and zeros by group); with act-order (q/k/v and gate/up sharing one g_idx) each rank keeps
    every group's scales and its columns' g_idx."""
    oracle = write_int4_checkpoint("gptq", str(tmp_path), tokenizer, group=32, act_order=act_order, seed=4)
    engine = make_engine(model=str(tmp_path), tp=2, cuda_graph=False, max_total_tokens=2048)
    try:
        prompts = _prompts()
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(oracle, ids, 10, set())
    finally:
        engine.shutdown()


def test_tp2_refuses_int4_shards_off_group_boundaries(float_dir):
    # int4 at load uses groups of 128; o_proj's 128 input features split over 2 ranks are 64 each
    with pytest.raises(Exception, match="group_size 128 does not divide"):
        make_engine(model=float_dir, quantization="int4", tp=2, cuda_graph=False)


def _with_quant_config(src: str, dst: str, qc: dict | None) -> str:
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "config.json":
            os.link(os.path.join(src, f), os.path.join(dst, f))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = qc
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


@pytest.mark.parametrize("qc,match", [
    (dict(quant_method="gptq", bits=8, group_size=128), r"quantization_config.bits = 8; supported: 4"),
    (dict(quant_method="gptq", bits=4, group_size=128, checkpoint_format="gptq_v2"), "checkpoint_format"),
    (dict(quant_method="awq", bits=4, group_size=128, version="gemv"), r"version = 'gemv'; supported: 'gemm'"),
    (dict(quant_method="bitsandbytes"), r"quant_method = 'bitsandbytes'; supported: gptq, awq, compressed-tensors"),
    (dict(quant_method="compressed-tensors", format="float-quantized", config_groups={"g": dict(
        targets=["Linear"], weights=dict(num_bits=8, type="float", strategy="channel"),
        input_activations=dict(num_bits=8, type="float", strategy="tensor", dynamic=False))}),
     "input_activations.*supported: dynamic per-token"),
    (dict(quant_method="compressed-tensors", format="pack-quantized", config_groups={"g": dict(
        targets=["Linear"], weights=dict(num_bits=2, type="int", strategy="group", group_size=32))}),
     r"weights.num_bits = 2; supported: 4"),
])
def test_unsupported_quantization_is_refused_at_load(float_dir, tmp_path, qc, match):
    path = _with_quant_config(float_dir, str(tmp_path / "q"), qc)
    with pytest.raises(ValueError, match=match):
        make_engine(model=path, cuda_graph=False)


def test_option_and_checkpoint_must_agree(float_dir, tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no quantization_config"):
        make_engine(model=float_dir, quantization="gptq", cuda_graph=False)
    write_int4_checkpoint("awq", str(tmp_path), tokenizer, group=32)
    with pytest.raises(ValueError, match="already quantized"):
        make_engine(model=str(tmp_path), quantization="int4", cuda_graph=False)
    with pytest.raises(ValueError, match="quant_method is 'awq'"):
        make_engine(model=str(tmp_path), quantization="gptq", cuda_graph=False)


def test_incomplete_checkpoint_names_the_missing_tensor(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file
    write_int4_checkpoint("gptq", str(tmp_path), tokenizer, group=32)
    path = os.path.join(str(tmp_path), "model.safetensors")
    state = load_file(path)
    del state["model.layers.1.mlp.down_proj.qzeros"]
    save_file(state, path)
    with pytest.raises(ValueError, match=r"layers.1.mlp.down_proj: missing \['qzeros'\]"):
        make_engine(model=str(tmp_path), cuda_graph=False)


def test_engine_option_is_validated_and_a_cli_flag():
    assert QUANTIZATIONS == LOADER_QUANTIZATIONS
    with pytest.raises(ValueError, match="quantization must be one of"):
        EngineConfig(quantization="int3")
    from radixserve.cli import build_parser
    args = build_parser().parse_args(["generate", "--quantization", "fp8", "hi"])
    assert args.quantization == "fp8"
