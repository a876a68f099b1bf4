"""Paged-pool fixtures shared by the attention kernel tests (imported, not collected)."""
from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (3e-2, 2e-2)}  # (atol, rtol)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_table(seq_lens: list[int], page_size: int, num_rows: int, share_prefix: int = 0,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A req_to_token table whose rows 1..B (row 0 unused) hold disjoint random pages.

    page_size 1 gives slots scattered as a random permutation; page_size 16 gives runs of 16.
    With share_prefix > 0 every row after the first reuses the first row's slots for its first
    share_prefix tokens, as rows sharing a radix-tree prefix do. Page 0 is never used.
    Returns (table [num_rows, max_ctx], req_rows [B], num_slots).
    """
    gen = torch.Generator().manual_seed(seed)
    max_ctx = max(seq_lens)
    pages_per_row = -(-max_ctx // page_size)
    num_pages = 1 + len(seq_lens) * pages_per_row + 3
    order = 1 + torch.randperm(num_pages - 1, generator=gen)  # [P-1], page 0 excluded
    table = torch.zeros((num_rows, max_ctx), dtype=torch.int64)
    req_rows = torch.randperm(num_rows - 1, generator=gen)[:len(seq_lens)] + 1
    for b, row in enumerate(req_rows.tolist()):
        pages = order[b * pages_per_row:(b + 1) * pages_per_row]
        slots = (pages[:, None] * page_size + torch.arange(page_size)).flatten()[:max_ctx]
        table[row] = slots
        if b and share_prefix:
            table[row, :share_prefix] = table[req_rows[0], :share_prefix]
    return table.to(DEVICE), req_rows.to(DEVICE), num_pages * page_size


def make_pools(num_slots: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
               seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn((num_slots, num_kv_heads, head_dim), generator=gen)
    v = torch.randn((num_slots, num_kv_heads, head_dim), generator=gen)
    return k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
