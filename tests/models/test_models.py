"""radixserve models vs transformers' own forward on the same weights, through the paged KV cache."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import (PagedRunner, Step, embedded_tokenizer, save_tiny_hf_model, tiny_hf_model,
                            transformers_gguf_model)
from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.models.loader import embedded_model_path, load_model
from radixserve.models.registry import model_class
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend

KINDS = ["llama", "qwen2", "qwen3", "qwen3-tied"]


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {kind: save_tiny_hf_model(kind, str(root / kind), tokenizer) for kind in KINDS}
    dirs["llama-sharded"] = save_tiny_hf_model("llama", str(root / "llama-sharded"), tokenizer,
                                               max_shard_size="2MB")
    return dirs


def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    """transformers' logits [L, vocab] for one whole sequence (the oracle)."""
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()


def random_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---------------------------------------------------------------- torch attention backend


def test_torch_backend_matches_sdpa_per_row():
    """Scattered slots, GQA, cached prefixes: each row equals SDPA over its contiguous sequence."""
    torch.manual_seed(0)
    heads, kv_heads, dim, scale = 6, 2, 8, 0.3
    pool = KVPool(1, 64, kv_heads, dim, torch.float32, "cpu")
    table = ReqToTokenTable(4, 32, "cpu")
    backend = TorchAttentionBackend(pool, table)
    seq_lens, ext_lens, rows = [5, 9, 1], [5, 3, 1], [2, 0, 3]
    perm = (torch.randperm(63) + 1).tolist()
    full_k = [torch.randn(n, kv_heads, dim) for n in seq_lens]
    full_v = [torch.randn(n, kv_heads, dim) for n in seq_lens]
    full_q = [torch.randn(n, heads, dim) for n in seq_lens]
    q, k, v, out_slots, starts = [], [], [], [], []
    for b, (row, n, e) in enumerate(zip(rows, seq_lens, ext_lens)):
        slots = torch.tensor([perm.pop() for _ in range(n)])
        table.table[row, :n] = slots
        pool.k[0][slots[:n - e]], pool.v[0][slots[:n - e]] = full_k[b][:n - e], full_v[b][:n - e]  # cached prefix
        starts.append(sum(ext_lens[:b]))
        q.append(full_q[b][n - e:]), k.append(full_k[b][n - e:]), v.append(full_v[b][n - e:])
        out_slots.append(slots[n - e:])
    batch = ForwardBatch(torch.zeros(sum(ext_lens), dtype=torch.int64), torch.zeros(sum(ext_lens), dtype=torch.int64),
                         torch.cat(out_slots), torch.tensor(rows), torch.tensor(seq_lens), torch.tensor(ext_lens),
                         torch.tensor(starts), torch.arange(sum(ext_lens)), max(seq_lens), max(ext_lens), False)
    out = backend.forward(torch.cat(q), torch.cat(k), torch.cat(v), 0, batch, scale)
    for b, (n, e) in enumerate(zip(seq_lens, ext_lens)):
        ref = F.scaled_dot_product_attention(full_q[b].transpose(0, 1), full_k[b].transpose(0, 1),
                                             full_v[b].transpose(0, 1), is_causal=True, scale=scale,
                                             enable_gqa=True).transpose(0, 1)  # [n, H, D]
        torch.testing.assert_close(out[starts[b]:starts[b] + e], ref[n - e:], atol=1e-5, rtol=1e-5)
        # the new keys/values landed in the pool
        torch.testing.assert_close(pool.k[0][out_slots[b]], full_k[b][n - e:])


# ---------------------------------------------------------------- tiny models vs transformers


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_prefill_decode_extend_match_transformers(kind, hf_dirs):
    hf_model = tiny_hf_model(kind)  # same seed as the saved checkpoint
    loaded = load_model(hf_dirs[kind], torch.float32, "cpu")
    assert type(loaded.model) is model_class(hf_model.config)
    runner = PagedRunner(loaded.model)
    lengths = {0: 5, 1: 11, 2: 1}
    for row, n in lengths.items():
        runner.seqs[row] = random_tokens(n + 12, seed=row)
    runner.seqs[3] = runner.seqs[0][:7] + random_tokens(9, seed=3)  # shares row 0's first 7 tokens
    oracle = {row: hf_logits(hf_model, seq) for row, seq in runner.seqs.items()}

    def check(steps: list[Step]) -> None:
        logits = runner.step(steps)
        want = torch.cat([oracle[s.row][s.start:s.end] for s in steps])
        assert logits.shape == want.shape and logits.dtype == torch.float32
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)

    check([Step(row, 0, n) for row, n in lengths.items()])  # ragged prefill in one batch
    pos = dict(lengths)
    for _ in range(3):  # decode steps
        check([Step(row, pos[row], pos[row] + 1) for row in pos])
        pos = {row: p + 1 for row, p in pos.items()}
    # extend: multi-token rows on top of cached tokens, a decode row, and a prefix-cache hit
    runner.share_prefix(0, 3, 7)
    check([Step(0, pos[0], pos[0] + 4), Step(1, pos[1], pos[1] + 1), Step(2, pos[2], pos[2] + 6), Step(3, 7, 16)])


def test_sharded_checkpoint_loads_same_weights(hf_dirs):
    files = os.listdir(hf_dirs["llama-sharded"])
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    single = load_model(hf_dirs["llama"], torch.float32, "cpu").model.state_dict()
    sharded = load_model(hf_dirs["llama-sharded"], torch.float32, "cpu").model.state_dict()
    assert single.keys() == sharded.keys()
    for name in single:
        assert torch.equal(single[name], sharded[name]), name


def test_bfloat16_runs_about_as_close_as_transformers_bf16(hf_dirs):
    """bf16 error of ours vs fp32 oracle is on the order of transformers' own bf16 error."""
    hf32 = tiny_hf_model("qwen3")
    hf16 = tiny_hf_model("qwen3").to(torch.bfloat16)
    loaded = load_model(hf_dirs["qwen3"], torch.bfloat16, "cpu")
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    runner = PagedRunner(loaded.model)
    runner.seqs[0] = random_tokens(20, seed=7)
    ours = runner.step([Step(0, 0, 20)])
    ref = hf_logits(hf32, runner.seqs[0])
    hf_err = (hf_logits(hf16, runner.seqs[0]) - ref).abs().max()
    our_err = (ours - ref).abs().max()
    assert torch.isfinite(ours).all()
    assert our_err <= 3 * hf_err + 1e-3, (our_err, hf_err)


# ---------------------------------------------------------------- embedded GGUF vs transformers' GGUF loading


@pytest.fixture(scope="module")
def gguf_pair():
    ours = load_model(None, torch.float32, "cpu")
    return ours, transformers_gguf_model(embedded_model_path())


def test_gguf_weights_equal_transformers(gguf_pair):
    ours, theirs = gguf_pair
    ref = theirs.state_dict()
    model = ours.model
    assert model.tie_word_embeddings and ours.config.tie_word_embeddings
    assert torch.equal(model.embed_tokens.weight, ref["model.embed_tokens.weight"])
    assert torch.equal(model.norm.weight, ref["model.norm.weight"])
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([ref[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        assert torch.equal(layer.self_attn.qkv_proj.weight, qkv), i  # q/k un-permuted like transformers
        assert torch.equal(layer.self_attn.o_proj.weight, ref[p + "self_attn.o_proj.weight"])
        gate_up = torch.cat([ref[p + "mlp.gate_proj.weight"], ref[p + "mlp.up_proj.weight"]])
        assert torch.equal(layer.mlp.gate_up_proj.weight, gate_up)
        assert torch.equal(layer.mlp.down_proj.weight, ref[p + "mlp.down_proj.weight"])
        assert torch.equal(layer.input_layernorm.weight, ref[p + "input_layernorm.weight"])
        assert torch.equal(layer.post_attention_layernorm.weight, ref[p + "post_attention_layernorm.weight"])


def test_gguf_logits_match_transformers(gguf_pair):
    ours, theirs = gguf_pair
    tokens = ours.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
    runner = PagedRunner(ours.model)
    runner.seqs[0] = list(tokens)
    n = len(tokens)
    ours_logits = torch.cat([runner.step([Step(0, 0, n - 2)]), runner.step([Step(0, n - 2, n - 1)]),
                             runner.step([Step(0, n - 1, n)])])  # prefill, then two decode steps
    ref = hf_logits(theirs, tokens)
    torch.testing.assert_close(ours_logits.log_softmax(-1), ref.log_softmax(-1), atol=2e-4, rtol=0)
    assert ours.max_context_len == 8192


def test_dummy_models_build_on_device_in_dtype():
    for name in ("tiny-llama", "tiny-qwen2", "tiny-qwen3"):
        loaded = load_model(f"dummy:{name}", torch.bfloat16, "cpu", seed=3)
        params = dict(loaded.model.named_parameters())
        assert all(p.dtype == torch.bfloat16 for p in params.values())
        assert all(torch.all(p == 1) for n, p in params.items() if n.endswith("norm.weight"))
        embed = params["embed_tokens.weight"].float()
        assert 0.015 < embed.std() < 0.025
        runner = PagedRunner(loaded.model)
        runner.seqs[0] = random_tokens(6, seed=0)
        assert torch.isfinite(runner.step([Step(0, 0, 6)])).all()
    again = load_model("dummy:tiny-qwen3", torch.bfloat16, "cpu", seed=3).model.state_dict()
    other = load_model("dummy:tiny-qwen3", torch.bfloat16, "cpu", seed=4).model.state_dict()
    assert torch.equal(again["layers.0.self_attn.qkv_proj.weight"], loaded.model.state_dict()[
        "layers.0.self_attn.qkv_proj.weight"])
    assert not torch.equal(again["layers.0.self_attn.qkv_proj.weight"], other["layers.0.self_attn.qkv_proj.weight"])
