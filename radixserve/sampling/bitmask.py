"""Grammar masks on the device: xgrammar's packed bitmask applied to logits in one call."""
from __future__ import annotations

import torch


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: logits [B, V] float32, bitmask [B, ceil(V/32)] int32 on the same device; token v
    of row b stays only if bit v % 32 of bitmask[b, v // 32] is set, else it becomes -inf.

    xgrammar's kernel (Triton on CUDA, C++ on CPU); no host sync."""
    from xgrammar import apply_token_bitmask_inplace

    if logits.dim() != 2 or bitmask.shape != (logits.shape[0], (logits.shape[1] + 31) // 32):
        raise ValueError(f"bitmask {tuple(bitmask.shape)} does not cover logits {tuple(logits.shape)}")
    apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1])


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [B, W] int32 -> allowed [B, vocab_size] bool (a plain torch reference, for tests)."""
    bits = (bitmask.to(torch.int64)[:, :, None] >> torch.arange(32, device=bitmask.device)) & 1  # [B, W, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()
