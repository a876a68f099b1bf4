"""Quantized experts (models/moe_quant.py): int4 / fp8 quantize-at-load of Qwen3-MoE and Mixtral and a
GPTQ v1 mixture-of-experts checkpoint, each against transformers' float32 forward on the dequantised
weights (dequantised here from the stored bits, not by radixserve), and the experts' size."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import hf_greedy, make_engine
from model_fixtures import embedded_tokenizer, save_tiny_hf_model, tiny_hf_model
from quant_fixtures import AWQ_ORDER, _save, dequant, fake_quant_per_token, pack_k, pack_n, rtn
from radixserve import SamplingParams
from radixserve.distributed.group import single_rank
from radixserve.models.moe import SparseMoE
from radixserve.models.moe_quant import Fp8Experts, Int4Experts

GREEDY = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
STACKS = ("experts_gate_up", "experts_down")


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(13)
    return [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (4, 19, 33)]


def _int4(qweight, scales, zeros, group: int | None) -> torch.Tensor:
    """[..., N, K/2] nibbles (even k low) with [..., N, groups] scales / zeros -> float32 [..., N, K]."""
    q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1).flatten(-2).float()
    g = torch.arange(q.shape[-1]) // (group or q.shape[-1])
    return (q - zeros.float()[..., g]) * scales.float()[..., g]


def _linear_dense(layer) -> torch.Tensor:
    if layer.method.name == "int4":
        return _int4(layer.qweight, layer.scales, layer.zeros, layer.method.group_size)
    return layer.weight.float() * layer.weight_scale[:, None]


def _experts_dense(moe: SparseMoE, stack: str) -> torch.Tensor:
    """A quantized stack [E, N, K] as float32, from its stored bits."""
    if moe.method.name == "int4":
        return _int4(getattr(moe, f"{stack}_qweight"), getattr(moe, f"{stack}_scales"),
                     getattr(moe, f"{stack}_zeros"), moe.method.group_size)
    return getattr(moe, stack).float() * getattr(moe, f"{stack}_weight_scale")[..., None]


def _oracle(kind: str, model, fp8: bool):
    """transformers' model of `kind` with every projection and expert set to what the engine holds; fp8
    projections also fake-quantize their input per token (the experts are weight-only)."""
    hf = tiny_hf_model(kind)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            hl, att = hf.model.layers[i], layer.self_attn
            q, k, v = _linear_dense(att.qkv_proj).split([att.q_size, att.kv_size, att.kv_size])
            pairs = [(hl.self_attn.q_proj, q), (hl.self_attn.k_proj, k), (hl.self_attn.v_proj, v),
                     (hl.self_attn.o_proj, _linear_dense(att.o_proj))]
            if isinstance(layer.mlp, SparseMoE):
                hl.mlp.experts.gate_up_proj.copy_(_experts_dense(layer.mlp, "experts_gate_up"))
                hl.mlp.experts.down_proj.copy_(_experts_dense(layer.mlp, "experts_down"))
                if hasattr(layer.mlp, "shared_expert"):  # Qwen2-MoE: a dense (quantized) MLP beside the experts
                    mine, theirs = layer.mlp.shared_expert, hl.mlp.shared_expert
                    gate, up = _linear_dense(mine.gate_up_proj).chunk(2)
                    pairs += [(theirs.gate_proj, gate), (theirs.up_proj, up),
                              (theirs.down_proj, _linear_dense(mine.down_proj))]
            else:
                gate, up = _linear_dense(layer.mlp.gate_up_proj).chunk(2)
                pairs += [(hl.mlp.gate_proj, gate), (hl.mlp.up_proj, up),
                          (hl.mlp.down_proj, _linear_dense(layer.mlp.down_proj))]
            for mod, w in pairs:
                mod.weight.copy_(w)
                if fp8:
                    mod.register_forward_pre_hook(lambda m, args: (fake_quant_per_token(args[0]),))
    return hf


@pytest.mark.parametrize("kind", ["qwen3-moe", "mixtral", "qwen2-moe"])
@pytest.mark.parametrize("method", ["int4", "fp8"])
def test_quantized_at_load_experts_match_transformers(method, kind, tmp_path, tokenizer):
    """--quantization int4|fp8 on a MoE checkpoint quantizes the experts too (each within half a step
    of its float weight); greedy output equals transformers on the dequantised weights."""
    path = save_tiny_hf_model(kind, str(tmp_path), tokenizer)
    dense = tiny_hf_model(kind)
    engine = make_engine(model=path, quantization=method, cuda_graph=False)
    try:
        model = engine.runner.model
        layer = next(i for i, l in enumerate(model.layers) if isinstance(l.mlp, SparseMoE))
        moe = model.layers[layer].mlp
        stored = moe.experts_gate_up_qweight if method == "int4" else moe.experts_gate_up
        assert moe.method.name == method and stored.dtype == (torch.uint8 if method == "int4" else torch.float8_e4m3fn)
        for stack, hf_name in zip(STACKS, ("gate_up_proj", "down_proj")):
            w = getattr(dense.model.layers[layer].mlp.experts, hf_name).detach()
            got = _experts_dense(moe, stack)
            if method == "int4":  # K <= 128: one group per row
                step = getattr(moe, f"{stack}_scales").float()
            else:
                step = torch.maximum(w.abs() * 2 ** -3, getattr(moe, f"{stack}_weight_scale")[..., None] * 2 ** -9)
            assert bool(((got - w).abs() <= step / 2 + 1e-6).all()), stack
            assert not torch.equal(got, w)
        assert torch.equal(moe.gate.weight, dense.model.layers[layer].mlp.gate.weight)  # the router stays dense
        hf = _oracle(kind, model, fp8=method == "fp8")
        prompts = _prompts()
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(hf, ids, GREEDY.max_new_tokens, set()), f"{len(ids)} tokens"
        engine.check_integrity()
    finally:
        engine.shutdown()


def _expert_bytes(moe: SparseMoE) -> int:
    return sum(p.numel() * p.element_size() for n, p in moe.named_parameters() if n.startswith("experts_"))


@pytest.mark.parametrize("method", [Int4Experts(128), Fp8Experts()], ids=["int4", "fp8"])
def test_quantized_experts_are_smaller_than_bf16(method):
    """Qwen3-30B-A3B-like proportions (hidden 2048, experts' intermediate 768) scaled down 8x."""
    def block():
        moe = SparseMoE(256, 96, 4, 2, True, torch.bfloat16, "cpu", single_rank())
        with torch.no_grad():
            for p in moe.parameters():
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        return moe
    dense, quant = block(), block()
    method.quantize(quant)
    quant.method = method
    if method.name == "int4":
        assert _expert_bytes(quant) < 0.3 * _expert_bytes(dense)
    else:  # one byte per weight (half of bf16) plus a float32 scale per output row: 4 experts x (192 + 256) rows
        assert _expert_bytes(quant) == _expert_bytes(dense) // 2 + 4 * (192 + 256) * 4  # 0.512x; 0.503x at full size
    x = torch.randn(5, 256, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = quant(x).float(), dense(x).float()
    bound = 0.2 if method.name == "int4" else 0.06  # measured 0.17 / 0.045 on this draw
    assert (got - want).norm() < bound * want.norm()  # the same block, up to quantization error


def test_quantized_dummy_moe_builds():
    from radixserve.models.loader import load_model
    from model_fixtures import PagedRunner, Step
    for method in ("int4", "fp8"):
        model = load_model("dummy:tiny-mixtral", "float32", "cpu", with_tokenizer=False, quantization=method).model
        assert model.layers[0].mlp.method.name == method
        runner = PagedRunner(model)
        runner.seqs[0] = list(range(3, 9))
        logits = runner.step([Step(0, 0, 6)])
        assert logits.shape == (6, 49152) and torch.isfinite(logits).all()


# ---- int4 mixture-of-experts checkpoints: GPTQ v1 (the layout of Qwen3-30B-A3B-GPTQ-Int4), AWQ GEMM
# and compressed-tensors pack-quantized (symmetric W4A16, the routers in `ignore`)


def _int4_pieces(fmt: str, w: torch.Tensor, group: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """w [N, K] -> (its tensors in `fmt`'s on-disk convention, the dequantised weight)."""
    if fmt == "gptq":
        q, zeros, scales = rtn(w, group, sym=False, g_idx=None, zero_min=1)
        pieces = {"qweight": pack_k(q), "qzeros": pack_n(zeros.t() - 1), "scales": scales.t().contiguous(),
                  "g_idx": (torch.arange(w.shape[1]) // group).int()}
    elif fmt == "awq":
        q, zeros, scales = rtn(w, group, sym=False, g_idx=None)
        pieces = {"qweight": pack_n(q.t(), AWQ_ORDER), "qzeros": pack_n(zeros.t(), AWQ_ORDER),
                  "scales": scales.t().contiguous()}
    else:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
        q, zeros, scales = rtn(w, group, sym=True, g_idx=None)
        pieces = {"weight_packed": pack_to_int32((q - 8).to(torch.int8), 4), "weight_scale": scales.float(),
                  "weight_shape": torch.tensor(list(q.shape))}
    return pieces, dequant(q, zeros, scales, None, group)


def _quant_config(fmt: str, group: int) -> dict:
    if fmt == "gptq":
        return dict(quant_method="gptq", bits=4, group_size=group, desc_act=False, sym=False, checkpoint_format="gptq")
    if fmt == "awq":
        return dict(quant_method="awq", bits=4, group_size=group, zero_point=True, version="gemm")
    weights = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group, actorder=None)
    return dict(quant_method="compressed-tensors", format="pack-quantized", ignore=["lm_head", "re:.*mlp.gate$"],
                config_groups={"group_0": dict(targets=["Linear"], weights=weights, input_activations=None)})


def write_int4_moe(fmt: str, out_dir: str, tokenizer, group: int = 32):
    """A tiny Qwen3-MoE in `fmt` (gptq | awq | compressed-tensors): every projection and every expert's
    gate/up/down quantized, the routers dense. Returns the oracle (the float32 model on the dequantised
    weights)."""
    hf = tiny_hf_model("qwen3-moe")
    state = dict(hf.state_dict())
    with torch.no_grad():
        for i, hl in enumerate(hf.model.layers):
            prefix = f"model.layers.{i}"
            linears = {f"self_attn.{p}": getattr(hl.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
            if hasattr(hl.mlp, "experts"):
                ex = hl.mlp.experts
                inter = ex.down_proj.shape[2]
                for e in range(ex.gate_up_proj.shape[0]):
                    parts = {"gate_proj": ex.gate_up_proj[e, :inter], "up_proj": ex.gate_up_proj[e, inter:],
                             "down_proj": ex.down_proj[e]}
                    deq = {}
                    for part, w in parts.items():
                        pieces, deq[part] = _int4_pieces(fmt, w, group)
                        state.update({f"{prefix}.mlp.experts.{e}.{part}.{k}": v for k, v in pieces.items()})
                    ex.gate_up_proj[e].copy_(torch.cat([deq["gate_proj"], deq["up_proj"]]))
                    ex.down_proj[e].copy_(deq["down_proj"])
                del state[f"{prefix}.mlp.experts.gate_up_proj"], state[f"{prefix}.mlp.experts.down_proj"]
            else:
                linears.update({f"mlp.{p}": getattr(hl.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")})
            for name, mod in linears.items():
                pieces, deq = _int4_pieces(fmt, mod.weight.data, group)
                mod.weight.copy_(deq)
                del state[f"{prefix}.{name}.weight"]
                state.update({f"{prefix}.{name}.{k}": v for k, v in pieces.items()})
    config = hf.config.to_dict()
    config["quantization_config"] = _quant_config(fmt, group)
    _save(out_dir, config, state, tokenizer)
    return hf


@pytest.mark.parametrize("fmt", ["gptq", "awq", "compressed-tensors"])
def test_int4_moe_checkpoint_matches_transformers(fmt, tmp_path, tokenizer):
    oracle = write_int4_moe(fmt, str(tmp_path), tokenizer)
    engine = make_engine(model=str(tmp_path), cuda_graph=False)
    try:
        model = engine.runner.model
        assert model.layers[0].mlp.method.name == "int4" and model.layers[0].mlp.method.group_size == 32
        assert model.layers[1].mlp.down_proj.method.name == "int4"  # the dense MLP layer
        prompts = _prompts()
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        for ids, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(oracle, ids, GREEDY.max_new_tokens, set()), f"{len(ids)} tokens"
        engine.check_integrity()
    finally:
        engine.shutdown()


def test_act_order_moe_checkpoint_is_refused(tmp_path, tokenizer):
    """desc_act experts are not supported: refused at load, naming the field."""
    import json
    write_int4_moe("gptq", str(tmp_path), tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["desc_act"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="act-order int4 .* is not supported for mixture-of-experts"):
        make_engine(model=str(tmp_path), cuda_graph=False)


def test_fp8_w8a8_moe_checkpoint_is_refused(tmp_path, tokenizer):
    """Experts are weight-only fp8; a checkpoint asking for per-token fp8 activations is refused by name."""
    import json
    path = save_tiny_hf_model("qwen3-moe", str(tmp_path), tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    weights = dict(num_bits=8, type="float", symmetric=True, strategy="channel", dynamic=False)
    acts = dict(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    config["quantization_config"] = dict(
        quant_method="compressed-tensors", format="float-quantized", ignore=["lm_head", "re:.*mlp.gate$"],
        config_groups={"group_0": dict(targets=["Linear"], weights=weights, input_activations=acts)})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fp8 W8A8 mixture-of-experts checkpoint"):
        make_engine(model=path, cuda_graph=False)


def _fake_tp(rank: int, size: int):
    """A rank's view of tensor parallelism without a process group (loading only)."""
    from radixserve.distributed.group import TensorParallel
    tp = object.__new__(TensorParallel)
    for key, value in (("rank", rank), ("size", size), ("group", None)):
        object.__setattr__(tp, key, value)
    return tp


def _load_rank(path: str, rank: int, size: int):
    """Rank `rank` of `size` of a quantized checkpoint, loaded without a process group."""
    from transformers import AutoConfig

    from radixserve.models.loader import safetensors_weights
    from radixserve.models.quant_config import resolve_quantization
    from radixserve.models.quant_formats import decode_checkpoint
    from radixserve.models.quantize import set_linear_method
    from radixserve.models.registry import model_class

    tp = _fake_tp(rank, size)
    config = AutoConfig.from_pretrained(path)
    plan = resolve_quantization(None, config, torch.float32)
    model = model_class(config)(config, torch.float32, "cpu", **({"tp": tp} if size > 1 else {}))
    set_linear_method(model, plan.method)
    model.load_weights(decode_checkpoint(safetensors_weights(path), plan))
    return model


def test_tp2_takes_each_ranks_slice_of_quantized_experts(tmp_path, tokenizer):
    """Under TP=2 each rank holds its half of every expert's gate|up rows and down columns (nibbles and
    groups cut on group boundaries): dequantised, exactly those parts of the TP=1 experts."""
    write_int4_moe("gptq", str(tmp_path), tokenizer, group=8)
    whole = _load_rank(str(tmp_path), 0, 1).layers[2].mlp
    inter = whole.intermediate // 2
    for rank in (0, 1):
        part = _load_rank(str(tmp_path), rank, 2).layers[2].mlp
        assert part.experts_down_scales.shape[2] == whole.experts_down_scales.shape[2] // 2
        full_gu, full_down = _experts_dense(whole, "experts_gate_up"), _experts_dense(whole, "experts_down")
        rows = torch.cat([torch.arange(rank * inter, (rank + 1) * inter),
                          whole.intermediate + torch.arange(rank * inter, (rank + 1) * inter)])
        assert torch.equal(_experts_dense(part, "experts_gate_up"), full_gu[:, rows])
        assert torch.equal(_experts_dense(part, "experts_down"), full_down[..., rank * inter:(rank + 1) * inter])


def test_tp2_refuses_expert_groups_split_across_ranks():
    moe = SparseMoE(64, 16, 8, 2, True, torch.float32, "cpu", _fake_tp(0, 2))  # 16 of 32 features per rank
    with pytest.raises(ValueError, match="group_size 32 does not divide the experts' 16 intermediate features"):
        Int4Experts(32).create_weights(moe)
    Int4Experts(16).create_weights(moe)
    assert moe.experts_down_scales.shape == (8, 64, 1)


@pytest.mark.parametrize("method", [Int4Experts(16), Int4Experts(None), Fp8Experts()],
                         ids=["int4-g16", "int4-row", "fp8"])
def test_fused_kernel_on_the_methods_stacks_matches_the_torch_loop(method):
    """What CUDA runs (the fused kernel on the method's stacks; here under TRITON_INTERPRET=1 on CPU)
    equals what CPU runs (the torch loop over the dequantised experts)."""
    from radixserve.kernels.fused_moe import MoeConfig
    from radixserve.kernels.fused_moe_quant import fused_moe_quant
    from radixserve.models.moe import route

    moe = SparseMoE(64, 32, 4, 2, True, torch.float32, "cpu", single_rank())
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.15, generator=torch.Generator().manual_seed(2))
    method.quantize(moe)
    moe.method = method
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(3))
    weights, ids = route(moe.gate(x), moe.top_k, moe.renormalize)
    fused = fused_moe_quant(x, method.stack(moe, "experts_gate_up"), method.stack(moe, "experts_down"), weights, ids,
                            config=MoeConfig(16, 16, 16, 4, 1))
    torch.testing.assert_close(fused, method.apply(moe, x, weights, ids), atol=1e-4, rtol=1e-4)
