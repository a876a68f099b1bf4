"""The CPU backend (KV mirror, cascade groups, folded GQA) equals the plain torch reference on
ragged paged batches, step after step, while requests come and go and slots are reused."""
from __future__ import annotations

import pytest
import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.core.prefix_groups import PrefixGroups
from radixserve.runtime.attention.partial import attend, merge
from radixserve.runtime.attention.torch_native import TorchNativeBackend
from radixserve.runtime.attention.torch_ref import TorchAttentionBackend

D = 16
NUM_SLOTS = 4096


def i64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def _pools(kv_heads: int) -> list[KVPool]:
    """Two pools with identical random contents (stale slots hold the same garbage in both)."""
    pools = [KVPool(1, NUM_SLOTS, kv_heads, D, torch.float32, "cpu") for _ in range(2)]
    for p in pools:
        p.k[0].copy_(torch.randn(NUM_SLOTS, kv_heads, D, generator=torch.Generator().manual_seed(1)))
        p.v[0].copy_(torch.randn(NUM_SLOTS, kv_heads, D, generator=torch.Generator().manual_seed(2)))
    return pools


def _batch(prefix_lens, ext_lens, table, gen) -> ForwardBatch:
    """Rows with random scattered slots; prefix slots already filled in the pool."""
    perm = torch.randperm(NUM_SLOTS - 1, generator=gen) + 1
    used, out_slots, starts, t = 0, [], [], 0
    for row, (p, e) in enumerate(zip(prefix_lens, ext_lens)):
        slots = perm[used:used + p + e]
        used += p + e
        table.write(row, 0, slots)
        out_slots.append(slots[p:])
        starts.append(t)
        t += e
    seq = [p + e for p, e in zip(prefix_lens, ext_lens)]
    return ForwardBatch(
        input_ids=torch.zeros(t, dtype=torch.int64),
        positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, ext_lens)]),
        out_slots=torch.cat(out_slots), req_rows=i64(list(range(len(seq)))), seq_lens=i64(seq),
        extend_lens=i64(ext_lens), extend_starts=i64(starts), logits_indices=i64([]),
        max_seq_len=max(seq), max_extend_len=max(ext_lens), is_decode=all(e == 1 for e in ext_lens))


@pytest.mark.parametrize("heads,kv_heads,prefix_lens,ext_lens", [
    (4, 4, [0, 5, 17], [7, 1, 3]),  # mixed prefill / extend / decode
    (8, 2, [3, 30, 1, 12], [1, 1, 1, 1]),  # decode-only
    (6, 1, [0], [1]),  # single token, no prefix
    (9, 3, [0, 40], [33, 2]),  # extend with and without earlier positions, GQA group 3
])
def test_native_equals_reference(heads, kv_heads, prefix_lens, ext_lens):
    gen = torch.Generator().manual_seed(0)
    pools = _pools(kv_heads)
    table = ReqToTokenTable(8, 128, "cpu")
    batch = _batch(prefix_lens, ext_lens, table, gen)
    t = batch.num_tokens
    q = torch.randn(t, heads, D, generator=gen)
    k = torch.randn(t, kv_heads, D, generator=gen)
    v = torch.randn(t, kv_heads, D, generator=gen)
    ref = TorchAttentionBackend(pools[0], table).forward(q, k, v, 0, batch, D ** -0.5)
    out = TorchNativeBackend(pools[1], table).forward(q, k, v, 0, batch, D ** -0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools[1].k[0], pools[0].k[0])


def test_merge_of_two_runs_equals_attention_over_both():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 4, D, generator=gen)
    k = torch.randn(2, 3, 50, D, generator=gen)
    v = torch.randn(2, 3, 50, D, generator=gen)
    scores = torch.einsum("nhmd,nhld->nhml", q, k) * 0.3
    expected = torch.einsum("nhml,nhld->nhmd", scores.softmax(-1), v)
    o1, l1 = attend(q, k[:, :, :20], v[:, :, :20], 0.3)
    o2, l2 = attend(q, k[:, :, 20:], v[:, :, 20:], 0.3)
    torch.testing.assert_close(l1, torch.logsumexp(scores[..., :20], -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merge(o1, l1, o2, l2), expected, atol=1e-5, rtol=1e-5)


class Sim:
    """Requests in request-table rows over two identical pools: the reference and the CPU backend
    run every step on the same batch; their outputs and pools must agree. Shared prefixes are
    slot runs copied from another row (never freed: tree slots); private slots go back to the
    front of the free list when a request finishes, so the next requests reuse them."""

    def __init__(self, heads: int, kv_heads: int, cascade: bool, mirror_max_bytes: int | None = None) -> None:
        self.gen = torch.Generator().manual_seed(7)
        self.heads, self.kv_heads, self.cascade = heads, kv_heads, cascade
        pools = _pools(kv_heads)
        self.table = ReqToTokenTable(8, 512, "cpu")
        self.ref = TorchAttentionBackend(pools[0], self.table)
        self.native = TorchNativeBackend(pools[1], self.table, mirror_max_bytes=mirror_max_bytes)
        self.free = (torch.randperm(NUM_SLOTS - 1, generator=self.gen) + 1).tolist()
        self.slots: dict[int, list[int]] = {}  # table row -> slots of its positions
        self.shared: dict[int, int] = {}  # table row -> leading slots it shares (not its own)

    def admit(self, row: int, prefix_of: int | None = None, prefix_len: int = 0) -> None:
        self.slots[row] = list(self.slots[prefix_of][:prefix_len]) if prefix_of is not None else []
        self.shared[row] = prefix_len
        if prefix_len:
            self.table.write(row, 0, i64(self.slots[row]))

    def finish(self, row: int) -> None:
        own = self.slots.pop(row)[self.shared.pop(row):]
        self.free[:0] = own  # reused first

    def step(self, rows_ext: list[tuple[int, int]], groups: list[tuple[int, list[int]]] = ()) -> ForwardBatch:
        """rows_ext: (table row, new tokens); groups: (prefix length, batch indices), decode-only steps."""
        out_slots, starts, seq_lens, t = [], [], [], 0
        for row, ext in rows_ext:
            new = [self.free.pop(0) for _ in range(ext)]
            self.table.write(row, len(self.slots[row]), i64(new))
            self.slots[row] += new
            out_slots += new
            starts.append(t)
            t += ext
            seq_lens.append(len(self.slots[row]))
        exts = [e for _, e in rows_ext]
        pg = None
        if groups and self.cascade:
            assert all(e == 1 for e in exts)
            row_prefix = [0] * len(rows_ext)
            members, bounds = [], [0]
            for p, rows in groups:
                lead = self.slots[rows_ext[rows[0]][0]][:p]
                for r in rows:  # the test's own check that the group really shares the prefix
                    assert self.slots[rows_ext[r][0]][:p] == lead and p < seq_lens[r]
                    row_prefix[r] = p
                members += rows
                bounds.append(len(members))
            pg = PrefixGroups(i64(row_prefix), i64(members), i64(bounds), i64([p for p, _ in groups]),
                              i64([rows_ext[rows[0]][0] for _, rows in groups]),
                              max(len(r) for _, r in groups), max(p for p, _ in groups))
        batch = ForwardBatch(
            input_ids=torch.zeros(t, dtype=torch.int64),
            positions=torch.cat([torch.arange(s - e, s) for s, e in zip(seq_lens, exts)]),
            out_slots=i64(out_slots), req_rows=i64([r for r, _ in rows_ext]), seq_lens=i64(seq_lens),
            extend_lens=i64(exts), extend_starts=i64(starts), logits_indices=i64([]),
            max_seq_len=max(seq_lens), max_extend_len=max(exts), is_decode=all(e == 1 for e in exts),
            prefix_groups=pg)
        q = torch.randn(t, self.heads, D, generator=self.gen)
        k = torch.randn(t, self.kv_heads, D, generator=self.gen)
        v = torch.randn(t, self.kv_heads, D, generator=self.gen)
        expected = self.ref.forward(q, k, v, 0, batch, D ** -0.5)
        got = self.native.forward(q, k, v, 0, batch, D ** -0.5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(self.native.pool.k[0], self.ref.pool.k[0], atol=0, rtol=0)
        return batch


def _lifecycle(sim: Sim) -> None:
    """Prefill, extends over a shared prefix, grouped decode, a finish whose row and slots are
    reused, a group that shrinks and one whose prefix changes, mixed steps in between."""
    sim.admit(0)
    sim.admit(5)
    sim.step([(0, 40), (5, 20)])  # two prefills
    for r in (1, 2, 3, 4):
        sim.admit(r, prefix_of=0, prefix_len=32)
    sim.step([(1, 5), (2, 9), (3, 6), (4, 7), (0, 1), (5, 1)])  # extends over the shared prefix + decodes
    for _ in range(4):
        sim.step([(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], groups=[(32, [0, 1, 2, 3, 4])])
    sim.finish(2)
    sim.admit(2, prefix_of=0, prefix_len=16)  # same table row, a shorter prefix, reused private slots
    sim.admit(6, prefix_of=5, prefix_len=12)
    sim.step([(0, 1), (1, 1), (2, 4), (3, 1), (4, 1), (5, 1), (6, 3)])  # mixed: grouped rows keep their split
    for _ in range(3):
        sim.step([(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
                 groups=[(32, [0, 1, 3, 4]), (12, [5, 6])])
    for _ in range(2):  # row 4 leaves its group, row 2 joins a 16-token group with row 0's
        sim.step([(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
                 groups=[(16, [0, 2]), (32, [1, 3])])
    sim.finish(0)
    sim.finish(3)
    for _ in range(2):  # rows left holes in the mirror
        sim.step([(1, 1), (2, 1), (4, 1), (5, 1), (6, 1)], groups=[(12, [3, 4])])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (9, 3), (6, 1)])
@pytest.mark.parametrize("cascade", [True, False])
def test_native_equals_reference_over_a_request_lifecycle(heads, kv_heads, cascade):
    sim = Sim(heads, kv_heads, cascade)
    _lifecycle(sim)
    assert sim.native.mirror.nbytes > 0


def test_mirror_over_budget_gathers_from_the_pool():
    sim = Sim(9, 3, cascade=True, mirror_max_bytes=1024)
    _lifecycle(sim)
    assert sim.native.mirror.nbytes == 0  # never allocated: every decode step read the pool


def test_steady_decode_copies_nothing_from_the_pool():
    """Once a row's run is mirrored, a decode step only appends the new token."""
    sim = Sim(9, 3, cascade=True)
    for r in range(4):
        sim.admit(r)
        sim.step([(r, 30 + r)])
    groups = []
    sim.step([(r, 1) for r in range(4)])  # first decode: the runs are copied into the mirror
    before = sim.native.mirror.refilled_cells
    for _ in range(5):
        sim.step([(r, 1) for r in range(4)], groups)
    assert sim.native.mirror.refilled_cells == before


def test_shared_prefix_is_read_once_per_group():
    """A cascade group's rows keep only their own tails in the mirror."""
    sim = Sim(9, 3, cascade=True)
    sim.admit(0)
    sim.step([(0, 200)])
    for r in (1, 2, 3):
        sim.admit(r, prefix_of=0, prefix_len=200)
        sim.step([(r, 3)])
    sim.step([(0, 1)])
    for _ in range(3):
        sim.step([(r, 1) for r in range(4)], groups=[(200, [0, 1, 2, 3])])
    plan = sim.native.plan(sim.native._plan.batch)
    assert plan.decode.tail.length <= 8  # tails only, not 200+ positions per row
    assert len(plan.decode.groups) == 1 and plan.decode.groups[0].entry.k[0].shape[2] == 200


def test_mirror_rows_are_compacted_when_the_step_reads_a_sparse_range():
    sim = Sim(9, 3, cascade=False)
    for r in range(8):
        sim.admit(r)
    sim.step([(r, 5 + r) for r in range(8)])
    sim.step([(r, 1) for r in range(8)])
    assert sorted(sim.native.mirror.row_of.values()) == list(range(8))
    for r in range(1, 7):
        sim.finish(r)
    sim.step([(0, 1), (7, 1)])  # mirror rows 0 and 7 are left: the top one moves down
    assert sorted(sim.native.mirror.row_of.values()) == [0, 1]
    for _ in range(2):
        sim.step([(0, 1), (7, 1)])
