"""GPU runtime: Triton path vs the torch reference backend and vs transformers, CUDA-graph decode.

Every test needs CUDA and is skipped cleanly without it. The tokenizer is the embedded model's;
where that package is missing (the GPU machine), RADIXSERVE_TEST_TOKENIZER names a saved copy.
"""
from __future__ import annotations

import pytest
import torch

from model_fixtures import tokenizer_path
from radixserve import Engine
from radixserve.cache.allocator import PageAllocator
from radixserve.config import EngineConfig
from radixserve.core.forward_batch import ForwardBatch
from radixserve.runtime.cuda_graph import graph_buckets, graph_kv_splits
from radixserve.runtime.model_runner import ModelRunner
from radixserve.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def runner(model: str, **options) -> ModelRunner:
    options.setdefault("max_total_tokens", 4096)
    options.setdefault("max_running_requests", 8)
    return ModelRunner(EngineConfig(model=model, tokenizer=tokenizer_path(), device="cuda", **options))


def ragged_batches(r: ModelRunner, prompt_lens: list[int], decode_steps: int, seed: int = 0):
    """Yield a prefill ForwardBatch over len(prompt_lens) rows, then `decode_steps` decode batches.

    Slots are drawn from an allocator over the runner's pool in a shuffled order, so rows scatter over it.
    """
    gen = torch.Generator().manual_seed(seed)
    dev = r.device
    total = sum(prompt_lens) + len(prompt_lens) * decode_steps
    slots = PageAllocator(r.num_pages, 1).alloc(total)  # runner() keeps page size 1
    slots = slots[torch.randperm(total, generator=gen)]
    rows = [r.req_table.alloc() for _ in prompt_lens]
    seqs = [torch.randint(3, 40000, (n + decode_steps,), generator=gen) for n in prompt_lens]
    used = 0
    row_slots = []
    for row, seq in zip(rows, seqs):
        row_slots.append(slots[used:used + len(seq)])
        r.req_table.table[row, :len(seq)] = row_slots[-1].to(dev)
        used += len(seq)
    # prefill
    starts, acc = [], 0
    for n in prompt_lens:
        starts.append(acc)
        acc += n
    cat = lambda xs: torch.cat(xs).to(dev)  # noqa: E731
    t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=dev)  # noqa: E731
    yield ForwardBatch(
        input_ids=cat([s[:n] for s, n in zip(seqs, prompt_lens)]),
        positions=cat([torch.arange(n) for n in prompt_lens]),
        out_slots=cat([rs[:n] for rs, n in zip(row_slots, prompt_lens)]),
        req_rows=t(rows), seq_lens=t(prompt_lens), extend_lens=t(prompt_lens), extend_starts=t(starts),
        logits_indices=t([s + n - 1 for s, n in zip(starts, prompt_lens)]),
        max_seq_len=max(prompt_lens), max_extend_len=max(prompt_lens), is_decode=False)
    for step in range(decode_steps):
        pos = [n + step for n in prompt_lens]
        yield ForwardBatch(
            input_ids=t([int(s[p]) for s, p in zip(seqs, pos)]), positions=t(pos),
            out_slots=t([int(rs[p]) for rs, p in zip(row_slots, pos)]), req_rows=t(rows),
            seq_lens=t([p + 1 for p in pos]), extend_lens=t([1] * len(rows)), extend_starts=t(range(len(rows))),
            logits_indices=t(range(len(rows))), max_seq_len=max(pos) + 1, max_extend_len=1, is_decode=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_buckets_and_splits():
    assert graph_buckets(1) == [1]
    assert graph_buckets(5) == [1, 2, 4, 5]
    b = graph_buckets(1000)
    assert b[:6] == [1, 2, 4, 8, 16, 24] and b[-1] == 256 and b == sorted(set(b))
    assert graph_kv_splits(1, 8, 16) == 16 and graph_kv_splits(64, 8, 16) == 1


@pytest.mark.parametrize("model", ["dummy:smollm2-135m", "dummy:tiny-qwen3"])
def test_triton_graph_logits_bf16_as_accurate_as_torch_reference(model):
    """Same seeded random bf16 weights; prefill + decode logits of the Triton path (graphs on, fused
    ops) and of the torch reference path (torch ops), each against the float32 torch reference on the
    same weights upcast: the Triton path must be within ~1e-2 and as accurate as the reference."""
    tri = runner(model, dtype="bfloat16")
    ref = runner(model, dtype="bfloat16", attention_backend="torch-ref", cuda_graph=False, fused_ops=False)
    gold = runner(model, dtype="float32", attention_backend="torch-ref", cuda_graph=False, fused_ops=False)
    assert tri.graphs is not None and ref.graphs is None
    with torch.no_grad():
        for pg, pt in zip(gold.model.parameters(), tri.model.parameters()):
            pg.copy_(pt.float())
    lens = [37, 1, 100]  # 3 rows replay the bucket of 4: one padded row
    for fb_t, fb_r, fb_g in zip(*(ragged_batches(r, lens, 6) for r in (tri, ref, gold))):
        if fb_t.is_decode:
            assert tri.graphs.bucket_for(fb_t) == 4
        lt = tri.forward(fb_t)
        lr, lg = ref.forward(fb_r), gold.forward(fb_g)
        assert lt.shape == lr.shape == lg.shape == (3, tri.vocab_size)
        err_tri, err_ref = rel_err(lt, lg), rel_err(lr, lg)
        # NOTE: bf16 itself costs ~1.4e-2 over smollm2's 30 random layers (the torch reference path
        # measured 1.41e-2, the Triton path 1.39e-2 on an H100), so the bound that matters is the
        # second: the Triton path is as accurate as the reference in the same dtype.
        assert err_tri < 2e-2 and err_tri <= 1.25 * err_ref + 2e-3, (err_tri, err_ref)


def test_padded_rows_write_only_slot_zero():
    r = runner("dummy:tiny-llama", dtype="float32")
    batches = ragged_batches(r, [5, 9, 3], 1)
    r.forward(next(batches))
    decode = next(batches)
    before = [k.clone() for k in r.pool.k] + [v.clone() for v in r.pool.v]
    assert r.graphs.bucket_for(decode) == 4
    r.forward(decode)
    after = r.pool.k + r.pool.v
    changed = torch.zeros(r.pool.num_slots, dtype=torch.bool, device="cuda")
    for a, b in zip(before, after):
        changed |= (a != b).flatten(1).any(1)
    allowed = torch.zeros_like(changed)
    allowed[decode.out_slots] = True
    allowed[0] = True  # the padding row's slot
    assert not (changed & ~allowed).any()
    assert changed[decode.out_slots].all()


def test_float32_logits_match_transformers(tmp_path):
    """A tiny HF checkpoint on the GPU: our Triton prefill and decode logits vs transformers' forward."""
    from model_fixtures import save_tiny_hf_model, tiny_hf_model
    path = save_tiny_hf_model("llama", str(tmp_path / "m"), _hf_tokenizer())
    r = runner(path, dtype="float32")
    hf = tiny_hf_model("llama").cuda()
    lens = [11, 30]
    batches = list(ragged_batches(r, lens, 4))
    ours = [r.forward(b) for b in batches]  # [2, V] each: prefill last token, then each decode step
    seqs = [torch.cat([batches[0].input_ids[s:s + n]] + [b.input_ids[i:i + 1] for b in batches[1:]])
            for i, (s, n) in enumerate(zip(batches[0].extend_starts.tolist(), lens))]
    with torch.no_grad():
        for i, (seq, n) in enumerate(zip(seqs, lens)):
            full = hf(seq[None]).logits[0].float()  # [n + 4, V]
            for step, logits in enumerate(ours):
                assert rel_err(logits[i], full[n - 1 + step]) < 1e-4


def _hf_tokenizer():
    from radixserve.models.tokenizer import load_tokenizer
    return load_tokenizer(tokenizer_path())


def test_greedy_exact_float32_graphs_on_off_torch_and_transformers(tmp_path):
    from model_fixtures import save_tiny_hf_model, tiny_hf_model

    path = save_tiny_hf_model("qwen2", str(tmp_path / "m"), _hf_tokenizer())
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 40000, (n,), generator=gen).tolist() for n in (5, 17, 40, 2, 64)]
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    outs = {}
    for name, opts in {"graphs": {}, "eager": {"cuda_graph": False},
                       "torch": {"attention_backend": "torch-ref", "cuda_graph": False}}.items():
        eng = Engine(path, tokenizer=tokenizer_path(), device="cuda", dtype="float32", max_total_tokens=4096,
                     max_running_requests=8, **opts)
        outs[name] = [o.token_ids for o in eng.generate(input_ids=prompts, sampling_params=params)]
        eng.shutdown()
    assert outs["graphs"] == outs["eager"] == outs["torch"]
    hf = tiny_hf_model("qwen2").cuda()
    with torch.no_grad():
        for p, ours in zip(prompts, outs["graphs"]):
            ids = torch.tensor([p], device="cuda")
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0)
            assert out[0, len(p):].tolist() == ours


def test_greedy_float32_identical_page_sizes_and_torch_reference():
    """Engine-level, float32: the Triton path (fused rope+store, new extend kernel, graphs) at page
    sizes 1 and 16 gives the torch reference backend's greedy tokens. Later prompts share a
    37-token prefix with earlier ones, so radix hits (whole pages only at page size 16) and
    extend-after-prefix run too."""
    gen = torch.Generator().manual_seed(4)
    shared = torch.randint(3, 40000, (37,), generator=gen).tolist()
    prompts = [shared + torch.randint(3, 40000, (n,), generator=gen).tolist() for n in (5, 60, 1, 23)]
    prompts.append(torch.randint(3, 40000, (300,), generator=gen).tolist())
    params = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    outs = {}
    for name, opts in {"triton-p1": {}, "triton-p16": {"page_size": 16},
                       "torch-p1": {"attention_backend": "torch-ref", "cuda_graph": False}}.items():
        eng = Engine("dummy:smollm2-135m", tokenizer=tokenizer_path(), device="cuda", dtype="float32",
                     max_total_tokens=8192, max_running_requests=8, **opts)
        first = eng.generate(input_ids=prompts[:1], sampling_params=params)  # caches the shared prefix
        rest = eng.generate(input_ids=prompts[1:], sampling_params=params)
        outs[name] = [o.token_ids for o in first + rest]
        assert rest[0].cached_tokens >= (32 if "p16" in name else 37), (name, rest[0].cached_tokens)
        eng.shutdown()
    assert outs["triton-p1"] == outs["torch-p1"]
    assert outs["triton-p16"] == outs["torch-p1"]
