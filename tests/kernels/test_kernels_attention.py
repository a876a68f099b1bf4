"""Decode and extend attention kernels vs their torch references over paged slot tables.

On CPU the kernels run in Triton's interpreter (importing radixserve.kernels turns it on), so the
shapes here are small; the gpu-marked tests repeat them at serving sizes.
"""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.decode_attention import (choose_num_kv_splits, decode_attention, decode_attention_ref,
                                                 decode_scratch)
from radixserve.kernels.extend_attention import (DEFAULT_CONFIG, ExtendConfig, choose_extend_splits, extend_attention,
                                                 extend_attention_ref)

from kernel_fixtures import DEVICE, assert_close, gpu, make_pools, make_table


def run_decode(seq_lens, num_heads, num_kv_heads, head_dim, dtype, page_size, splits_list,
               share_prefix=0, block_n=16):
    table, rows, num_slots = make_table(seq_lens, page_size, num_rows=len(seq_lens) + 3, share_prefix=share_prefix)
    k_pool, v_pool = make_pools(num_slots, num_kv_heads, head_dim, dtype)
    q = torch.randn((len(seq_lens), num_heads, head_dim), generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, device=DEVICE)
    scale = head_dim ** -0.5
    ref = decode_attention_ref(q, k_pool, v_pool, table, rows, lens, scale)
    part_out, part_lse = decode_scratch(len(seq_lens) + 2, num_heads, head_dim, max(splits_list), DEVICE)
    for splits in splits_list:
        out = decode_attention(q, k_pool, v_pool, table, rows, lens, scale, splits, part_out, part_lse,
                               block_n=block_n)
        assert out.dtype == dtype and out.shape == q.shape
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype,page_size", [
    (2, 2, 64, torch.float32, 1),     # MHA, scattered slots
    (8, 2, 80, torch.float32, 16),    # GQA 4, padded head_dim, paged
    (8, 1, 128, torch.float32, 1),    # GQA 8
    (4, 1, 64, torch.bfloat16, 16),
    (8, 1, 80, torch.float16, 1),
])
def test_decode_matches_reference(num_heads, num_kv_heads, head_dim, dtype, page_size):
    # seq_len 1 with 8 splits leaves 7 splits empty; 50 is not a multiple of the block or splits.
    run_decode([1, 50, 17], num_heads, num_kv_heads, head_dim, dtype, page_size, splits_list=[1, 8])


def test_decode_rows_sharing_a_prefix():
    run_decode([40, 33, 21], 4, 2, 64, torch.float32, page_size=1, splits_list=[4], share_prefix=20)


def test_decode_picks_row_by_req_rows():
    """Same q under a permuted req_rows -> permuted outputs; a wrong row lookup would differ."""
    table, rows, num_slots = make_table([9, 30], page_size=1, num_rows=5)
    k_pool, v_pool = make_pools(num_slots, 1, 64, torch.float32)
    q = torch.randn((1, 2, 64), device=DEVICE).expand(2, 2, 64).contiguous()
    lens = torch.tensor([9, 30], device=DEVICE)
    scratch = decode_scratch(2, 2, 64, 2, DEVICE)
    out = decode_attention(q, k_pool, v_pool, table, rows, lens, 0.125, 2, *scratch).clone()
    swapped = decode_attention(q, k_pool, v_pool, table, rows.flip(0), lens.flip(0), 0.125, 2, *scratch)
    assert_close(swapped, out.flip(0), torch.float32)
    assert not torch.allclose(out[0], out[1])


def test_choose_num_kv_splits():
    assert choose_num_kv_splits(1, 1, 8) == 1
    assert choose_num_kv_splits(100, 1, 8) == 1  # short context: no split
    assert choose_num_kv_splits(4096, 1, 8, max_splits=16) == 16  # long context, small batch
    assert choose_num_kv_splits(4096, 256, 8) == 1  # grid already full
    for args in [(3000, 2, 4), (777, 5, 2), (10**6, 1, 1)]:
        s = choose_num_kv_splits(*args, max_splits=8)
        assert 1 <= s <= 8 and s & (s - 1) == 0


def test_decode_rejects_bad_input():
    q = torch.zeros((2, 6, 64), device=DEVICE)
    k_pool = torch.zeros((8, 4, 64), device=DEVICE)
    table = torch.zeros((2, 4), dtype=torch.int64, device=DEVICE)
    idx = torch.ones(2, dtype=torch.int64, device=DEVICE)
    scratch = decode_scratch(2, 6, 64, 4, DEVICE)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        decode_attention(q, k_pool, k_pool, table, idx, idx, 1.0, 2, *scratch)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q, k_pool[:, :3], k_pool[:, :3], table, idx, idx, 1.0, 3, *scratch)
    with pytest.raises(ValueError, match="decode_scratch"):
        decode_attention(q, k_pool[:, :3], k_pool[:, :3], table, idx, idx, 1.0, 8, *scratch)


def run_extend(seq_lens, extend_lens, num_heads, num_kv_heads, head_dim, dtype, page_size, share_prefix=0,
               config=ExtendConfig(16, 16, 4, 2), splits_list=(1, 4)):
    table, rows, num_slots = make_table(seq_lens, page_size, num_rows=len(seq_lens) + 2, share_prefix=share_prefix)
    k_pool, v_pool = make_pools(num_slots, num_kv_heads, head_dim, dtype)
    ext = torch.tensor(extend_lens, device=DEVICE)
    starts = torch.cumsum(ext, 0) - ext
    total = sum(extend_lens)
    q = torch.randn((total, num_heads, head_dim), generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, device=DEVICE)
    scale = head_dim ** -0.5
    ref = extend_attention_ref(q, k_pool, v_pool, table, rows, lens, ext, starts, scale)
    for num_splits in splits_list:
        out = torch.full_like(q, float("nan"))  # every token must be written
        extend_attention(q, k_pool, v_pool, table, rows, lens, ext, starts, max(extend_lens), scale, out=out,
                         config=config, num_splits=num_splits)
        assert out.dtype == dtype and out.shape == q.shape
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype,page_size", [
    (2, 2, 64, torch.float32, 16),   # MHA: 16 tokens per tile
    (8, 2, 80, torch.float32, 1),    # GQA 4: 4 tokens per tile, padded head_dim
    (8, 1, 128, torch.float32, 16),  # GQA 8: 2 tokens per tile
    (6, 2, 64, torch.float32, 1),    # GQA 3: heads padded to 4 in the tile
    (4, 1, 128, torch.bfloat16, 1),
    (4, 4, 80, torch.float16, 16),
])
def test_extend_matches_reference(num_heads, num_kv_heads, head_dim, dtype, page_size):
    # rows: pure prefill of 1 token; prefill of 37 (spans blocks); a 1-token extend after a long
    # prefix; a 20-token chunk after a 19-token prefix (diagonal not block-aligned); 4 splits
    # leave some pieces of the short rows empty.
    run_extend([1, 37, 61, 39], [1, 37, 1, 20], num_heads, num_kv_heads, head_dim, dtype, page_size)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_extend_kv_start_partial_then_merge(num_splits):
    """Keys [0, 32) attended elsewhere (here: in torch) and the rest by the kernel with kv_start=32,
    written as partial pieces; merging all pieces by log-sum-exp gives full attention."""
    from radixserve.kernels.merge_states import merge_states
    seq_lens, ext_lens = [70, 45], [20, 13]  # both rows' new tokens start after key 32
    table, rows, num_slots = make_table(seq_lens, 1, num_rows=4)
    k_pool, v_pool = make_pools(num_slots, 2, 64, torch.float32)
    ext = torch.tensor(ext_lens, device=DEVICE)
    starts = torch.cumsum(ext, 0) - ext
    lens = torch.tensor(seq_lens, device=DEVICE)
    q = torch.randn((sum(ext_lens), 8, 64), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    scale = 0.125
    part_out = torch.full((q.shape[0], 8, 1 + num_splits, 64), float("nan"), device=DEVICE)
    part_lse = torch.full((q.shape[0], 8, 1 + num_splits), float("nan"), device=DEVICE)
    for b, (row, n, e) in enumerate(zip(rows.tolist(), seq_lens, ext_lens)):  # piece 0: keys [0, 32) in torch
        slots = table[row, :32]
        k = k_pool[slots].repeat_interleave(4, 1)  # [32, H, D]
        v = v_pool[slots].repeat_interleave(4, 1)
        scores = torch.einsum("thd,lhd->thl", q[starts[b]:starts[b] + e], k) * scale
        part_out[starts[b]:starts[b] + e, :, 0] = torch.einsum("thl,lhd->thd", scores.softmax(-1), v)
        part_lse[starts[b]:starts[b] + e, :, 0] = torch.logsumexp(scores, -1) / torch.log(torch.tensor(2.0))
    assert extend_attention(q, k_pool, v_pool, table, rows, lens, ext, starts, 20, scale,
                            config=ExtendConfig(16, 16, 4, 2), num_splits=num_splits, kv_start=32,
                            partial=(part_out, part_lse, 1)) is None
    out = merge_states(part_out, part_lse, 1 + num_splits, torch.empty_like(q))
    assert_close(out, extend_attention_ref(q, k_pool, v_pool, table, rows, lens, ext, starts, scale), torch.float32)
    with pytest.raises(ValueError, match="multiple of the key block"):
        extend_attention(q, k_pool, v_pool, table, rows, lens, ext, starts, 20, scale,
                         config=ExtendConfig(16, 16, 4, 2), kv_start=20)


def test_extend_split_choice():
    cfg = ExtendConfig(128, 64, 8, 3)
    # one long chunk fills the GPU by query tiles alone: no split
    assert choose_extend_splits(cfg, 1, 2048, 100_000, 2048, 32, 8, 128) == 1
    # a short extend after a long prefix: split up to 16 pieces of >= 4 blocks each
    assert choose_extend_splits(cfg, 1, 50, 30_000, 50, 32, 8, 128) == 16
    assert choose_extend_splits(cfg, 1, 50, 600, 50, 32, 8, 128) == 2
    # the float32 partials stay within the scratch cap
    assert choose_extend_splits(cfg, 1, 200, 10**6, 60_000, 32, 8, 128) == 1


def test_extend_rows_sharing_a_prefix():
    run_extend([30, 45], [6, 13], 4, 2, 64, torch.float32, page_size=1, share_prefix=24)


def test_extend_is_causal_within_new_tokens():
    """Changing the K/V of the last new token must not change any earlier token's output."""
    table, rows, num_slots = make_table([24], page_size=1, num_rows=2)
    k_pool, v_pool = make_pools(num_slots, 1, 64, torch.float32)
    q = torch.randn((10, 2, 64), device=DEVICE)
    args = (rows, torch.tensor([24], device=DEVICE), torch.tensor([10], device=DEVICE),
            torch.tensor([0], device=DEVICE), 10, 0.125)
    before = extend_attention(q, k_pool, v_pool, table, *args, config=ExtendConfig(16, 16, 4, 2))
    last = table[rows[0], 23]
    k_pool[last] += 5.0
    v_pool[last] += 5.0
    after = extend_attention(q, k_pool, v_pool, table, *args, config=ExtendConfig(16, 16, 4, 2))
    torch.testing.assert_close(after[:9], before[:9], atol=0, rtol=0)
    assert not torch.allclose(after[9], before[9])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype", [
    (32, 8, 128, torch.bfloat16), (14, 2, 64, torch.bfloat16), (32, 32, 80, torch.float16),
    (32, 8, 128, torch.float32)])
def test_attention_serving_sizes_gpu(num_heads, num_kv_heads, head_dim, dtype):
    seq_lens = [1, 17, 511, 2048, 4000, 129, 64, 3333]
    run_decode(seq_lens, num_heads, num_kv_heads, head_dim, dtype, page_size=16, splits_list=[1, 16],
               block_n=64)
    run_extend(seq_lens, [1, 17, 200, 2048, 1, 128, 63, 1000], num_heads, num_kv_heads, head_dim, dtype,
               page_size=16, config=DEFAULT_CONFIG[dtype])
