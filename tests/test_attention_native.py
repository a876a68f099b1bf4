"""The SDPA CPU backend equals the plain torch reference on ragged paged batches."""
from __future__ import annotations

import pytest
import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.runtime.attention.torch_native import TorchNativeBackend
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend
from radixserve.runtime.forward_batch import ForwardBatch


def _batch(prefix_lens, ext_lens, table, gen) -> ForwardBatch:
    """Rows with random scattered slots; prefix slots already filled in the pool."""
    num_slots = 4096
    perm = torch.randperm(num_slots - 1, generator=gen) + 1
    used, out_slots, starts, t = 0, [], [], 0
    for row, (p, e) in enumerate(zip(prefix_lens, ext_lens)):
        slots = perm[used:used + p + e]
        used += p + e
        table.write(row, 0, slots)
        out_slots.append(slots[p:])
        starts.append(t)
        t += e
    seq = [p + e for p, e in zip(prefix_lens, ext_lens)]

    def i64(x):
        return torch.tensor(x, dtype=torch.int64)

    return ForwardBatch(
        input_ids=torch.zeros(t, dtype=torch.int64),
        positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, ext_lens)]),
        out_slots=torch.cat(out_slots), req_rows=i64(list(range(len(seq)))), seq_lens=i64(seq),
        extend_lens=i64(ext_lens), extend_starts=i64(starts), logits_indices=i64([]),
        max_seq_len=max(seq), max_extend_len=max(ext_lens), is_decode=all(e == 1 for e in ext_lens))


@pytest.mark.parametrize("heads,kv_heads,prefix_lens,ext_lens", [
    (4, 4, [0, 5, 17], [7, 1, 3]),  # mixed prefill / extend
    (8, 2, [3, 30, 1, 12], [1, 1, 1, 1]),  # decode-only: the batched path
    (6, 1, [0], [1]),  # single token, no prefix
])
def test_native_equals_reference(heads, kv_heads, prefix_lens, ext_lens):
    gen = torch.Generator().manual_seed(0)
    d = 16
    pools = [KVPool(1, 4096, kv_heads, d, torch.float32, "cpu") for _ in range(2)]
    for p in pools:  # identical random contents in both pools
        p.k[0].copy_(torch.randn(4096, kv_heads, d, generator=torch.Generator().manual_seed(1)))
        p.v[0].copy_(torch.randn(4096, kv_heads, d, generator=torch.Generator().manual_seed(2)))
    table = ReqToTokenTable(8, 64, "cpu")
    batch = _batch(prefix_lens, ext_lens, table, gen)
    t = batch.num_tokens
    q = torch.randn(t, heads, d, generator=gen)
    k = torch.randn(t, kv_heads, d, generator=gen)
    v = torch.randn(t, kv_heads, d, generator=gen)
    ref = TorchAttentionBackend(pools[0], table).forward(q, k, v, 0, batch, d ** -0.5)
    out = TorchNativeBackend(pools[1], table).forward(q, k, v, 0, batch, d ** -0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools[1].k[0], pools[0].k[0])
