"""TritonAttentionBackend vs the torch reference backend over a chunked-prefill-then-decode run."""
from __future__ import annotations

import pytest
import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend
from radixserve.runtime.attention.triton_backend import TritonAttentionBackend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 2e-2)}  # (atol, rtol), as the kernel tests


def make_batch(table: ReqToTokenTable, rows: list[int], seq_lens: list[int], ext_lens: list[int]) -> ForwardBatch:
    ext = torch.tensor(ext_lens)
    starts = torch.cumsum(ext, 0) - ext
    positions = torch.cat([torch.arange(s - e, s) for s, e in zip(seq_lens, ext_lens)])
    slots = torch.cat([table.table[r, s - e:s].cpu() for r, s, e in zip(rows, seq_lens, ext_lens)])
    as_dev = lambda t: t.to(DEVICE)  # noqa: E731
    return ForwardBatch(
        input_ids=as_dev(torch.zeros(len(positions), dtype=torch.int64)), positions=as_dev(positions),
        out_slots=as_dev(slots), req_rows=as_dev(torch.tensor(rows)), seq_lens=as_dev(torch.tensor(seq_lens)),
        extend_lens=as_dev(ext), extend_starts=as_dev(starts), logits_indices=as_dev(starts + ext - 1),
        max_seq_len=max(seq_lens), max_extend_len=max(ext_lens), is_decode=all(e == 1 for e in ext_lens))


def new_pool(num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> KVPool:
    return KVPool(num_layers=2, num_slots=256, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
                  device=DEVICE)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype", [
    (4, 1, 64, torch.float32), (6, 2, 80, torch.bfloat16), (2, 2, 128, torch.float32)])
def test_triton_backend_matches_torch_backend(num_heads, num_kv_heads, head_dim, dtype):
    table = ReqToTokenTable(max_requests=4, max_context=64, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    free_slots = (1 + torch.randperm(255, generator=gen)).tolist()  # scattered slots, slot 0 unused
    prompt = {0: 30, 2: 5, 3: 1}  # row -> prompt length; row 1 stays unused
    for row, n in prompt.items():
        table.write(row, 0, torch.tensor([free_slots.pop() for _ in range(n + 4)]))
    table.table[3, :1] = table.table[0, :1]  # row 3's one-token prompt is row 0's cached first token
    pools = [new_pool(num_kv_heads, head_dim, dtype) for _ in range(2)]
    backends = [TorchAttentionBackend(pools[0], table), TritonAttentionBackend(pools[1], table)]
    # steps: (seq_lens, extend_lens) per row 0, 2, 3: two prefill chunks for row 0 (row 3's
    # prompt is cached: it has no step until decode), then decode steps for all three rows.
    steps = [([16, 5], [16, 5], [0, 2]),
             ([30], [14], [0]),
             ([31, 6, 2], [1, 1, 1], [0, 2, 3]),
             ([32, 7, 3], [1, 1, 1], [0, 2, 3]),
             ([34, 9], [2, 2], [0, 2])]  # a two-token extend after decode (e.g. a retracted re-admission)
    scale = head_dim ** -0.5
    for seq_lens, ext_lens, rows in steps:
        batch = make_batch(table, rows, seq_lens, ext_lens)
        num_tokens = batch.num_tokens
        for layer in range(2):
            q = torch.randn((num_tokens, num_heads, head_dim), generator=gen).to(DEVICE, dtype)
            k = torch.randn((num_tokens, num_kv_heads, head_dim), generator=gen).to(DEVICE, dtype)
            v = torch.randn((num_tokens, num_kv_heads, head_dim), generator=gen).to(DEVICE, dtype)
            ref, out = (b.forward(q, k, v, layer, batch, scale) for b in backends)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            atol, rtol = TOL[dtype]
            torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
            torch.testing.assert_close(pools[1].k[layer], pools[0].k[layer], atol=0, rtol=0)
            torch.testing.assert_close(pools[1].v[layer], pools[0].v[layer], atol=0, rtol=0)


def test_fixed_split_count_and_validation():
    pool = new_pool(1, 64, torch.float32)
    table = ReqToTokenTable(max_requests=2, max_context=200, device=DEVICE)
    table.write(1, 0, torch.arange(1, 151))
    ref_backend = TorchAttentionBackend(new_pool(1, 64, torch.float32), table)
    backend = TritonAttentionBackend(pool, table, num_heads=2, num_kv_splits=4)
    batch = make_batch(table, [1], [150], [1])
    q = torch.randn(1, 2, 64, device=DEVICE)
    k, v = torch.randn(1, 1, 64, device=DEVICE), torch.randn(1, 1, 64, device=DEVICE)
    for name in ("k", "v"):  # the same cached context in both pools
        getattr(ref_backend.pool, name)[0].copy_(torch.randn(256, 1, 64))
        getattr(pool, name)[0].copy_(getattr(ref_backend.pool, name)[0])
    torch.testing.assert_close(backend.forward(q, k, v, 0, batch, 0.125),
                               ref_backend.forward(q, k, v, 0, batch, 0.125), atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="power of two"):
        TritonAttentionBackend(pool, table, num_kv_splits=3)
    with pytest.raises(ValueError, match="power of two"):
        TritonAttentionBackend(pool, table, max_kv_splits=12)


def test_backend_rope_fusion_and_cascade_match_torch_backend():
    """Backend-level: unrotated q/k with `rope=` (rotary fused into the KV store) and a decode batch
    carrying PrefixGroups (cascade) give what the torch backend gives on pre-rotated q/k over the
    same rows without groups."""
    from radixserve.kernels.rotary import apply_rotary_ref, rope_cos_sin
    from radixserve.core.attention import RopeTables
    from radixserve.core.prefix_groups import PrefixGroups

    num_heads, num_kv_heads, head_dim = 4, 2, 64
    table = ReqToTokenTable(max_requests=6, max_context=64, device=DEVICE)
    gen = torch.Generator().manual_seed(3)
    free_slots = (1 + torch.randperm(255, generator=gen)).tolist()
    shared = torch.tensor([free_slots.pop() for _ in range(20)])  # a 20-token prefix held by rows 0, 1, 4
    for row in range(5):
        own = torch.tensor([free_slots.pop() for _ in range(30)])
        table.write(row, 0, torch.cat([shared, own]) if row in (0, 1, 4) else torch.cat([own, own[:20]]))
    cos, sin = rope_cos_sin(1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)).to(DEVICE), 128)
    pools = [new_pool(num_kv_heads, head_dim, torch.float32) for _ in range(2)]
    ref_backend, backend = TorchAttentionBackend(pools[0], table), TritonAttentionBackend(pools[1], table)
    t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=DEVICE)  # noqa: E731
    # row 4 (batch index 4) and rows 0, 1 (batch 0, 1) share 20 tokens; rows 2, 3 are alone
    groups = PrefixGroups(row_prefix_lens=t([20, 20, 0, 0, 20]), group_rows=t([4, 0, 1]), group_starts=t([0, 3]),
                          group_prefix_lens=t([20]), group_table_rows=t([1]), max_group_size=3, max_prefix_len=20)
    # row 0's prefill writes the shared prefix; rows 1 and 4 find it cached and extend after it
    steps = [([0, 2, 3], [24, 21, 9], [24, 21, 9]), ([1, 4], [22, 23], [2, 3]),
             ([0, 1, 2, 3, 4], [25, 23, 22, 10, 24], [1] * 5), ([0, 1, 2, 3, 4], [26, 24, 23, 11, 25], [1] * 5)]
    for rows, seq_lens, ext_lens in steps:
        batch = make_batch(table, rows, seq_lens, ext_lens)
        if batch.is_decode:
            batch = batch._replace(prefix_groups=groups)
        n = batch.num_tokens
        q = torch.randn((n, num_heads, head_dim), generator=gen).to(DEVICE)
        k = torch.randn((n, num_kv_heads, head_dim), generator=gen).to(DEVICE)
        v = torch.randn((n, num_kv_heads, head_dim), generator=gen).to(DEVICE)
        q_rot, k_rot = apply_rotary_ref(q, k, batch.positions, cos, sin)
        ref = ref_backend.forward(q_rot, k_rot, v, 0, batch, 0.125)
        k_before = k.clone()
        out = backend.forward(q, k, v, 0, batch, 0.125, rope=RopeTables(batch.positions, cos, sin))
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(q, q_rot, atol=1e-6, rtol=1e-6)  # q rotated in place
        torch.testing.assert_close(k, k_before, atol=0, rtol=0)
        torch.testing.assert_close(pools[1].k[0], pools[0].k[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(pools[1].v[0], pools[0].v[0], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_long_prompt_chunks_through_cudnn_gpu():
    """bf16, Llama-3-8B heads: a step with chunks after long cached prefixes (two whole cuDNN blocks,
    and one block plus a remainder), a cold chunk, a short extend and a decode row. The long rows'
    prefix blocks go to cuDNN, everything else to the Triton kernel, merged by log-sum-exp; all must
    match the float32 reference, and agree with the Triton kernel alone."""
    from radixserve.runtime.attention import long_prefill

    hq, hkv, d = 32, 8, 128
    seq_lens, ext_lens = [16_984, 9_100, 2_000, 300, 5_000], [600, 700, 2_000, 40, 1]
    table = ReqToTokenTable(max_requests=6, max_context=17_000, device="cuda")
    perm = 1 + torch.randperm(sum(seq_lens), device="cuda")
    used = 0
    for row, n in enumerate(seq_lens):
        table.table[row, :n] = perm[used:used + n]
        used += n
    pool = KVPool(1, sum(seq_lens) + 1, hkv, d, torch.bfloat16, "cuda")
    pool.k[0].normal_()
    pool.v[0].normal_()
    batch = make_batch(table, [0, 1, 2, 3, 4], seq_lens, ext_lens)
    plan = long_prefill.plan_long_rows(batch)
    assert plan is not None and [r[0] for r in plan.rows] == [0, 1]
    assert plan.rest_extend_lens.tolist() == [0, 0, 2_000, 40, 1]
    q = torch.randn((batch.num_tokens, hq, d), device="cuda", dtype=torch.bfloat16)
    ref = torch.empty_like(q)  # float32 softmax, a row and 1024 queries at a time (bounded memory)
    start = 0
    for row, (n, e) in enumerate(zip(seq_lens, ext_lens)):
        slots = table.table[row, :n]
        k = pool.k[0][slots].float().repeat_interleave(hq // hkv, 1)  # [L, H, D]
        v = pool.v[0][slots].float().repeat_interleave(hq // hkv, 1)
        for c in range(0, e, 1024):
            qc = q[start + c:start + min(e, c + 1024)].float()  # [C, H, D]
            pos = n - e + c + torch.arange(qc.shape[0], device="cuda")
            scores = torch.einsum("chd,lhd->hcl", qc, k) * d ** -0.5
            scores.masked_fill_(torch.arange(n, device="cuda")[None, None, :] > pos[None, :, None], float("-inf"))
            ref[start + c:start + c + qc.shape[0]] = torch.einsum("hcl,lhd->chd", scores.softmax(-1), v).to(q.dtype)
        start += e
    outs = {}
    for cudnn in (True, False):
        backend = TritonAttentionBackend(pool, table, long_prefill_cudnn=cudnn)
        assert backend.long_prefill == cudnn
        # attention only: the new tokens' K/V are already in the pool
        outs[cudnn] = backend._extend(q, pool.k[0], pool.v[0], batch, d ** -0.5)
    for out in outs.values():
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err < 1e-2, err
    torch.testing.assert_close(outs[True].float(), outs[False].float(), atol=3e-2, rtol=2e-2)
