"""Cascade decode attention: rows that share a cached prefix read its K/V once for the whole group.

For the semantics of the groups see radixserve/core/prefix_groups.py. Three launches:

1. Prefix stage (grid W x Hkv x P): a work item is up to MEMBERS rows of one group; program
   (w, kvh, p) attends those rows' G = H / Hkv query heads of kv head `kvh` (MEMBERS * G rows in
   one tile) over the p-th of P pieces of the group's shared prefix, read once from the group's
   table row, and writes each row's partial output and log-sum-exp into pieces S..S+P-1 of the
   decode scratch. The number of work items is only known on device (each group needs
   cdiv(size, MEMBERS)), so the grid is an upper bound W and surplus programs exit at once.
2. Tail stage: the split-KV decode kernel over each row's own keys [row_prefix_lens[b], seq_len),
   into pieces 0..S-1 (rows in no group have row_prefix_len 0: their whole context).
3. merge_states over the S + P pieces (the prefix pieces count only for rows in a group).

All grids depend only on host-known sizes (batch, number of group slots), so the launches can be
captured in a CUDA graph: a graph's buffers hold up to `max_groups` group slots; unused slots
have no rows (group_starts repeats its last value).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import (check_index, check_rows, dot_precision, dot_upcast, finish_softmax,
                                        online_softmax_block, pow2)
from radixserve.kernels.decode_attention import (MIN_TOKENS_PER_SPLIT, TARGET_PROGRAMS, check_decode_inputs,
                                                decode_split_launch)
from radixserve.kernels.merge_states import merge_states

TILE_ROWS = 64  # query rows (members x heads of one kv head) per prefix-stage program


@triton.jit(do_not_specialize=["num_groups", "first_piece", "num_pieces"])  # NOTE: no recompile per value
def _cascade_prefix_kernel(
    q_ptr, k_ptr, v_ptr, req_to_token_ptr, group_rows_ptr, group_starts_ptr, group_prefix_lens_ptr,
    group_table_rows_ptr, part_out_ptr, part_lse_ptr,
    num_groups, first_piece, num_pieces,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_rt,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    sm_scale_log2,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, MEMBERS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    w = tl.program_id(0)
    kvh = tl.program_id(1)
    piece = tl.program_id(2)

    # Which group and which chunk of its members is work item w: group g has cdiv(n_g, MEMBERS)
    # chunks, numbered group after group.
    offs_grp = tl.arange(0, BLOCK_GROUPS)
    grp_mask = offs_grp < num_groups
    g_start = tl.load(group_starts_ptr + offs_grp, mask=grp_mask, other=0)  # [BLOCK_GROUPS]
    g_end = tl.load(group_starts_ptr + offs_grp + 1, mask=grp_mask, other=0)
    chunks = ((g_end - g_start + MEMBERS - 1) // MEMBERS).to(tl.int32)  # [BLOCK_GROUPS], 0 for unused slots
    ends = tl.cumsum(chunks, 0)  # inclusive: chunks of groups 0..g
    grp = tl.sum((ends <= w).to(tl.int32), 0)  # the first group whose chunks reach past w
    if grp >= num_groups:
        return
    is_grp = offs_grp == grp
    chunk = w - tl.sum(tl.where(is_grp, ends - chunks, 0), 0)  # [] int32
    first_member = tl.sum(tl.where(is_grp, g_start, 0), 0) + chunk * MEMBERS
    last_member = tl.sum(tl.where(is_grp, g_end, 0), 0)
    prefix_len = tl.load(group_prefix_lens_ptr + grp)
    table_row = tl.load(group_table_rows_ptr + grp)

    # Tile row r: member r // GROUP_PAD of the chunk, query head kvh * GROUP + r % GROUP_PAD.
    offs_r = tl.arange(0, MEMBERS * GROUP_PAD)
    member = first_member + offs_r // GROUP_PAD
    g = offs_r % GROUP_PAD
    r_mask = (member < last_member) & (g < GROUP)
    b = tl.load(group_rows_ptr + member, mask=r_mask, other=0)  # [R] batch rows
    head = kvh * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b[:, None] * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                mask=r_mask[:, None] & d_mask[None, :], other=0.0)  # [R, BLOCK_D]

    piece_len = tl.cdiv(prefix_len, num_pieces)
    start = piece * piece_len
    end = tl.minimum(start + piece_len, prefix_len)
    m_i = tl.full([MEMBERS * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([MEMBERS * GROUP_PAD], tl.float32)
    acc = tl.zeros([MEMBERS * GROUP_PAD, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n  # [BLOCK_N]
        n_mask = pos < end
        slots = tl.load(req_to_token_ptr + table_row * stride_rt + pos, mask=n_mask, other=0)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = online_softmax_block(q, k, v, n_mask[None, :], m_i, l_i, acc, sm_scale_log2, True,
                                             DOT_PRECISION, DOT_UPCAST)

    out, lse = finish_softmax(m_i, l_i, acc)
    slot = first_piece + piece
    tl.store(part_out_ptr + b[:, None] * stride_pb + head[:, None] * stride_ph + slot * stride_ps + offs_d[None, :],
             out, mask=r_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + b * stride_lb + head * stride_lh + slot, lse, mask=r_mask)


def cascade_members(num_heads: int, num_kv_heads: int, tile_rows: int = TILE_ROWS) -> int:
    """Rows of one group per prefix-stage program: `tile_rows` query rows of one kv head."""
    return max(1, tile_rows // pow2(num_heads // num_kv_heads))


def cascade_work_items(num_group_rows: int, num_groups: int, members: int) -> int:
    """Upper bound of sum over groups of cdiv(size, members), from host-known sizes only."""
    return max(1, math.ceil(num_group_rows / members) + num_groups)


def cascade_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                             req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens: torch.Tensor,
                             row_prefix_lens: torch.Tensor, group_rows: torch.Tensor, group_starts: torch.Tensor,
                             group_prefix_lens: torch.Tensor, group_table_rows: torch.Tensor, scaling: float,
                             num_kv_splits: int, num_prefix_splits: int, part_out: torch.Tensor,
                             part_lse: torch.Tensor, out: torch.Tensor | None = None, block_n: int = 64,
                             tile_rows: int = TILE_ROWS) -> torch.Tensor:
    """q [B, H, D] -> out [B, H, D] in q's dtype; the same function as decode_attention.

    Groups as in PrefixGroups: row_prefix_lens [B], group_rows [R], group_starts [G + 1],
    group_prefix_lens [G], group_table_rows [G] (G group slots; a slot with no rows is unused).
    Scratch from decode_scratch with max_splits >= num_kv_splits + num_prefix_splits.
    """
    pieces = num_kv_splits + num_prefix_splits
    check_decode_inputs(q, k_pool, v_pool, req_to_token, part_out, part_lse, pieces)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[1]
    for name, t, n in (("req_rows", req_rows, batch), ("seq_lens", seq_lens, batch),
                       ("row_prefix_lens", row_prefix_lens, batch), ("group_rows", group_rows, None),
                       ("group_prefix_lens", group_prefix_lens, None)):
        check_index(name, t, n)
    num_groups = group_prefix_lens.shape[0]
    check_index("group_starts", group_starts, num_groups + 1)
    check_index("group_table_rows", group_table_rows, num_groups)
    for name, n in (("num_kv_splits", num_kv_splits), ("num_prefix_splits", num_prefix_splits)):
        if n < 1 or n & (n - 1):
            raise ValueError(f"{name} must be a power of two >= 1, got {n}")
    if out is None:
        out = torch.empty_like(q)
    check_rows("out", out, 3)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    members = cascade_members(num_heads, num_kv_heads, tile_rows)
    if members * pow2(group) < 16:
        raise ValueError(f"tile_rows must give tiles of >= 16 rows, got {tile_rows}")
    if num_groups:
        items = cascade_work_items(group_rows.shape[0], num_groups, members)
        _cascade_prefix_kernel[(items, num_kv_heads, num_prefix_splits)](
            q, k_pool, v_pool, req_to_token, group_rows, group_starts, group_prefix_lens, group_table_rows,
            part_out, part_lse, num_groups, num_kv_splits, num_prefix_splits,
            q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
            req_to_token.stride(0),
            part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
            scaling * math.log2(math.e),
            GROUP=group, GROUP_PAD=pow2(group), MEMBERS=members, HEAD_DIM=head_dim,
            BLOCK_GROUPS=max(256, pow2(num_groups + 1)), BLOCK_N=block_n,
            BLOCK_D=pow2(head_dim, 16), DOT_PRECISION=dot_precision(q.dtype), DOT_UPCAST=dot_upcast(q.dtype),
            num_warps=4, num_stages=2,
        )
    decode_split_launch(q, k_pool, v_pool, req_to_token, req_rows, seq_lens, row_prefix_lens, scaling,
                        num_kv_splits, part_out, part_lse, out, False, block_n)
    merge_states(part_out, part_lse, num_kv_splits, out, row_prefix_lens, num_prefix_splits)
    return out


def cascade_decode_attention_ref(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                 req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens: torch.Tensor,
                                 row_prefix_lens: torch.Tensor, group_rows: torch.Tensor, group_starts: torch.Tensor,
                                 group_prefix_lens: torch.Tensor, group_table_rows: torch.Tensor,
                                 scaling: float) -> torch.Tensor:
    """Torch reference, float32: each group's prefix keys from its table row and each row's tail from
    its own row, concatenated and attended by plain softmax. Agrees with decode_attention_ref
    exactly when the groups are what they claim (the members' rows hold the prefix's slots)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_pool.shape[1]
    prefix_slots = {}
    for g in range(group_prefix_lens.shape[0]):
        members = group_rows[group_starts[g]:group_starts[g + 1]].tolist()
        slots = req_to_token[group_table_rows[g], :group_prefix_lens[g]]
        for b in members:
            prefix_slots[b] = slots
    for b in range(q.shape[0]):
        start = int(row_prefix_lens[b])
        tail = req_to_token[req_rows[b], start:seq_lens[b]]
        slots = torch.cat([prefix_slots[b], tail]) if start else tail  # [L]
        k = k_pool[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_pool[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * scaling  # [H, L]
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out


def choose_prefix_splits(max_prefix_len: int | None, batch_size: int, num_heads: int, num_kv_heads: int,
                         max_splits: int = 16) -> int:
    """A power of two <= max_splits for the prefix stage: enough programs to fill the GPU when one
    group holds the whole batch, and pieces of >= MIN_TOKENS_PER_SPLIT keys (when the longest prefix
    is known; CUDA graphs choose per batch size alone)."""
    items = math.ceil(batch_size / cascade_members(num_heads, num_kv_heads))
    want = math.ceil(TARGET_PROGRAMS / (items * num_kv_heads))
    if max_prefix_len is not None:
        want = min(want, math.ceil(max_prefix_len / MIN_TOKENS_PER_SPLIT))
    want = max(1, min(want, max_splits))
    return 1 << (want.bit_length() - 1)
