"""Cascade (shared-prefix) decode attention vs plain attention over each row's whole context.

Groups are built by hand (as the scheduler's PrefixGroups would describe them): the rows of a group
hold the same slots for the shared prefix, and the oracle is decode_attention_ref over every row's
full context, which knows nothing of groups. The kernel must compute the same function.
"""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.cascade_attention import (cascade_decode_attention, cascade_decode_attention_ref,
                                                  cascade_members)
from radixserve.kernels.decode_attention import decode_attention_ref, decode_scratch
from radixserve.kernels.merge_states import merge_states, merge_states_ref

from kernel_fixtures import DEVICE, assert_close, gpu, make_pools, make_table


def grouped_table(seq_lens: list[int], groups: list[tuple[list[int], int]], page_size: int, seed: int = 0):
    """make_table, then each group's members (batch indices) share the first member's first
    prefix_len slots. Returns (table, req_rows, num_slots, group tensors as PrefixGroups fields)."""
    table, rows, num_slots = make_table(seq_lens, page_size, num_rows=len(seq_lens) + 2, seed=seed)
    row_prefix = [0] * len(seq_lens)
    group_rows, starts, plens, trows = [], [0], [], []
    for members, plen in groups:
        owner = rows[members[0]]
        for b in members:
            assert seq_lens[b] > plen, "a member's own part is never empty"
            table[rows[b], :plen] = table[owner, :plen]
            row_prefix[b] = plen
        group_rows += members
        starts.append(len(group_rows))
        plens.append(plen)
        trows.append(int(rows[members[-1]]))  # any member's row holds the prefix
    t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=DEVICE)  # noqa: E731
    return table, rows, num_slots, (t(row_prefix), t(group_rows), t(starts), t(plens), t(trows))


def run_cascade(seq_lens, groups, num_heads, num_kv_heads, head_dim, dtype, page_size=1, kv_splits=(1, 4),
                prefix_splits=(1, 4), tile_rows=16, block_n=16, pad_groups=0):
    table, rows, num_slots, grp = grouped_table(seq_lens, groups, page_size)
    if pad_groups:  # unused group slots, as a CUDA graph's static buffers hold them
        row_prefix, group_rows, starts, plens, trows = grp
        pad = torch.zeros(pad_groups, dtype=torch.int64, device=DEVICE)
        grp = (row_prefix, group_rows, torch.cat([starts, pad + starts[-1]]), torch.cat([plens, pad]),
               torch.cat([trows, pad]))
    k_pool, v_pool = make_pools(num_slots, num_kv_heads, head_dim, dtype)
    batch = len(seq_lens)
    q = torch.randn((batch, num_heads, head_dim), generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, device=DEVICE)
    scale = head_dim ** -0.5
    ref = decode_attention_ref(q, k_pool, v_pool, table, rows, lens, scale)
    assert_close(cascade_decode_attention_ref(q, k_pool, v_pool, table, rows, lens, *grp, scale), ref, dtype)
    scratch = decode_scratch(batch + 1, num_heads, head_dim, max(kv_splits) + max(prefix_splits), DEVICE)
    for s in kv_splits:
        for p in prefix_splits:
            scratch[0].fill_(float("nan"))  # stale scratch must never leak into the result
            scratch[1].fill_(float("nan"))
            out = cascade_decode_attention(q, k_pool, v_pool, table, rows, lens, *grp, scale, s, p, *scratch,
                                           block_n=block_n, tile_rows=tile_rows)
            assert out.dtype == dtype and out.shape == q.shape
            assert_close(out, ref, dtype)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype,page_size", [
    (4, 2, 64, torch.float32, 1),    # GQA 2
    (8, 1, 80, torch.float32, 16),   # GQA 8, padded head_dim, paged
    (3, 3, 64, torch.float32, 1),    # MHA
    (4, 1, 64, torch.bfloat16, 1),
])
def test_cascade_matches_plain_attention(num_heads, num_kv_heads, head_dim, dtype, page_size):
    # group A: 4 members (not in batch order), prefix 37 (not a multiple of the block or pieces);
    # group B: 2 members, prefix 16; row 2 in no group; row 6's own part is a single token.
    seq_lens = [50, 40, 25, 60, 17, 39, 38]
    groups = [([5, 0, 3, 6], 37), ([1, 4], 16)]
    run_cascade(seq_lens, groups, num_heads, num_kv_heads, head_dim, dtype, page_size=page_size)


def test_cascade_group_larger_than_one_program():
    """A group of 11 rows and tiles of 4 members: one group spread over several work items."""
    members = cascade_members(4, 1, tile_rows=16)  # 4 heads per kv head -> 4 members per program
    assert members == 4
    seq_lens = [30 + i for i in range(11)] + [12]
    run_cascade(seq_lens, [(list(range(10, -1, -1)), 29)], 4, 1, 64, torch.float32, kv_splits=(2,),
                prefix_splits=(1, 2))


def test_cascade_unused_group_slots_and_prefix_shorter_than_pieces():
    # 8 prefix pieces over a 5-token prefix leave pieces empty; 3 unused group slots as in graphs.
    run_cascade([9, 7, 20], [([0, 1], 5)], 2, 1, 64, torch.float32, kv_splits=(1,), prefix_splits=(8,),
                pad_groups=3)


def test_cascade_without_groups_is_plain_decode():
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    table, rows, num_slots = make_table([5, 30], 1, num_rows=4)
    k_pool, v_pool = make_pools(num_slots, 2, 64, torch.float32)
    q = torch.randn((2, 4, 64), device=DEVICE)
    lens = torch.tensor([5, 30], device=DEVICE)
    zeros = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    starts = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    scratch = decode_scratch(2, 4, 64, 4, DEVICE)
    out = cascade_decode_attention(q, k_pool, v_pool, table, rows, lens, zeros, empty, starts, empty, empty,
                                   0.125, 2, 2, *scratch)
    assert_close(out, decode_attention_ref(q, k_pool, v_pool, table, rows, lens, 0.125), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_states_matches_reference(dtype):
    """3 tail pieces (one empty: lse -inf) + 2 prefix pieces that count only where row_prefix_lens > 0
    (elsewhere they hold garbage, as no program writes them)."""
    gen = torch.Generator().manual_seed(9)
    t, h, d = 5, 3, 80
    part_out = torch.randn((t, h, 6, d), generator=gen).to(DEVICE)
    part_lse = (torch.randn((t, h, 6), generator=gen) * 4).to(DEVICE)
    part_lse[:, :, 1] = float("-inf")
    part_out[:, :, 1] = 0.0
    prefix_lens = torch.tensor([0, 7, 0, 3, 1], device=DEVICE)
    part_lse[prefix_lens == 0, :, 3:5] = float("nan")
    counted = torch.zeros((t, 6), dtype=torch.bool, device=DEVICE)
    counted[:, :3] = True
    counted[prefix_lens > 0, 3:5] = True
    out = torch.empty((t, h, d), dtype=dtype, device=DEVICE)
    merge_states(part_out, part_lse, 3, out, prefix_lens, 2)
    assert_close(out, merge_states_ref(part_out, torch.nan_to_num(part_lse, nan=0.0), counted).to(dtype), dtype)


def test_cascade_rejects_bad_input():
    table, rows, num_slots = make_table([5, 30], 1, num_rows=4)
    k_pool, v_pool = make_pools(num_slots, 2, 64, torch.float32)
    q = torch.randn((2, 4, 64), device=DEVICE)
    lens = torch.tensor([5, 30], device=DEVICE)
    idx = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    one = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    scratch = decode_scratch(2, 4, 64, 4, DEVICE)
    with pytest.raises(ValueError, match="group_starts must have 2 entries"):
        cascade_decode_attention(q, k_pool, v_pool, table, rows, lens, idx, idx, one, one, one, 0.1, 2, 2, *scratch)
    with pytest.raises(ValueError, match="max_splits >= 8"):
        cascade_decode_attention(q, k_pool, v_pool, table, rows, lens, idx, idx, idx, one, one, 0.1, 4, 4, *scratch)
    with pytest.raises(ValueError, match="num_prefix_splits must be a power of two"):
        cascade_decode_attention(q, k_pool, v_pool, table, rows, lens, idx, idx, idx, one, one, 0.1, 1, 3, *scratch)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cascade_serving_sizes_gpu(dtype):
    """Llama-3-8B heads: 64 rows, two groups sharing 2k and 700-token prefixes, 4 rows alone."""
    seq_lens = [2048 + 100 + 7 * i for i in range(40)] + [700 + 50 + i for i in range(20)] + [300, 1, 4000, 77]
    seq_lens[61] = 2
    groups = [(list(range(39, -1, -1)), 2048), (list(range(40, 60)), 700)]
    run_cascade(seq_lens, groups, 32, 8, 128, dtype, page_size=1, kv_splits=(1, 4), prefix_splits=(4, 16),
                tile_rows=64, block_n=64)
