"""TritonAttentionBackend vs the torch reference backend over a chunked-prefill-then-decode run."""
from __future__ import annotations

import pytest
import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend
from radixserve.runtime.attention.triton_backend import TritonAttentionBackend
from radixserve.runtime.forward_batch import ForwardBatch

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
