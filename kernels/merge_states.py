"""Merge partial attention results by their log-sum-exp.

Split-KV decode, cascade decode and split extend attention each attend disjoint pieces of a row's
keys and write, per (token, head, piece), the piece's normalised output and its log-sum-exp (base
2) to float32 scratch. For pieces with lse_s the exact result is

    out = sum_s 2^(lse_s - M) * out_s / sum_s 2^(lse_s - M),   M = max_s lse_s.

Pieces [0, num_pieces) are always written (an empty piece writes lse = -inf and a zero output);
with HAS_PREFIX, pieces [num_pieces, num_pieces + num_prefix_pieces) hold the cascade's shared
prefix and count only for tokens whose `row_prefix_lens` entry is > 0 (no program writes them for
the others, so they may hold stale values). At least one counted piece is non-empty.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels._launch import check_rows, pow2


@triton.jit(do_not_specialize=["num_pieces", "num_prefix_pieces"])  # NOTE: no recompile per value
def _merge_kernel(part_out_ptr, part_lse_ptr, row_prefix_lens_ptr, o_ptr,
                  stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
                  num_pieces, num_prefix_pieces,
                  HEAD_DIM: tl.constexpr, HAS_PREFIX: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    num_counted = num_pieces
    if HAS_PREFIX:  # prefix pieces directly follow the tail pieces
        num_counted = num_pieces + tl.where(tl.load(row_prefix_lens_ptr + t) > 0, num_prefix_pieces, 0)
    counted = offs_s < num_counted
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(part_lse_ptr + t * stride_lt + h * stride_lh + offs_s, mask=counted,
                  other=float("-inf"))  # [BLOCK_S]
    w = tl.exp2(lse - tl.max(lse, 0))  # [BLOCK_S]; the max is finite (a counted piece is non-empty)
    part = tl.load(part_out_ptr + t * stride_pt + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
                   mask=counted[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)  # [BLOCK_D]
    tl.store(o_ptr + t * stride_ot + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=d_mask)


def merge_states(part_out: torch.Tensor, part_lse: torch.Tensor, num_pieces: int, out: torch.Tensor,
                 row_prefix_lens: torch.Tensor | None = None, num_prefix_pieces: int = 0) -> torch.Tensor:
    """part_out [>=T, H, >=S, D] and part_lse [>=T, H, >=S] float32 -> out [T, H, D] (in out's dtype).

    S = num_pieces + num_prefix_pieces; see the module docstring for which pieces count.
    """
    check_rows("out", out, 3)
    num_tokens, num_heads, head_dim = out.shape
    total = num_pieces + num_prefix_pieces
    if (part_out.dim() != 4 or part_out.shape[0] < num_tokens or part_out.shape[1] != num_heads
            or part_out.shape[2] < total or part_out.shape[3] != head_dim or part_out.stride(-1) != 1):
        raise ValueError(f"part_out {tuple(part_out.shape)} must be [>={num_tokens}, {num_heads}, >={total}, "
                         f"{head_dim}] with a unit-stride last dim")
    if part_lse.dim() != 3 or part_lse.shape[0] < num_tokens or part_lse.shape[2] < total or part_lse.stride(-1) != 1:
        raise ValueError(f"part_lse {tuple(part_lse.shape)} must be [>={num_tokens}, {num_heads}, >={total}]")
    if num_prefix_pieces and row_prefix_lens is None:
        raise ValueError("num_prefix_pieces > 0 needs row_prefix_lens")
    if num_tokens == 0:
        return out
    _merge_kernel[(num_tokens, num_heads)](
        part_out, part_lse, row_prefix_lens if num_prefix_pieces else part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1), num_pieces, num_prefix_pieces,
        HEAD_DIM=head_dim, HAS_PREFIX=num_prefix_pieces > 0, BLOCK_S=pow2(total, 16), BLOCK_D=pow2(head_dim, 16),
    )
    return out


def merge_states_ref(part_out: torch.Tensor, part_lse: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Torch reference: part_out [T, H, S, D], part_lse [T, H, S], counted [T, S] bool -> [T, H, D] float32."""
    lse = part_lse.masked_fill(~counted[:, None, :], float("-inf"))
    w = torch.softmax(lse * torch.log(torch.tensor(2.0)), dim=-1)  # 2^lse normalised over pieces
    return torch.einsum("ths,thsd->thd", w, part_out.masked_fill(~counted[:, None, :, None], 0.0))
