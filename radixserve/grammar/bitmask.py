"""The next-token bitmask of a batch, filled on the host and sent to the device without blocking."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from radixserve.grammar.backend import GrammarBackend
from radixserve.grammar.matcher import RequestGrammar


def batch_bitmask(grammars: Sequence[RequestGrammar | None], backend: GrammarBackend,
                  device: torch.device) -> torch.Tensor | None:
    """[B, ceil(V/32)] int32 on `device` for B sampling rows: row b admits what grammars[b] admits
    next (all ones for rows without a grammar); None when no row has one.

    Filled by xgrammar's batch matcher (several threads) into pinned memory, then copied
    asynchronously: the host never waits for the device here.
    """
    rows = [i for i, g in enumerate(grammars) if g is not None]
    if not rows:
        return None
    shape = (len(grammars), (backend.vocab_size + 31) // 32)
    pinned = device.type == "cuda"
    # NOTE: pinned blocks come from torch's caching host allocator, which reuses a block only after
    # the copy that reads it has run, so the next step cannot overwrite a mask still in flight.
    mask = torch.empty(shape, dtype=torch.int32, pin_memory=pinned)
    if len(rows) < len(grammars):  # NOTE: the matcher writes every word of its rows; only the others need filling
        free = [i for i, g in enumerate(grammars) if g is None]
        mask[free] = -1  # -1: all 32 bits set
    t0 = time.perf_counter()
    backend.batch_matcher().batch_fill_next_token_bitmask([grammars[i].matcher for i in rows], mask, rows)
    stats = backend.stats
    stats.mask_fill_s += time.perf_counter() - t0
    stats.mask_rows += len(rows)
    return mask.to(device, non_blocking=True) if pinned else mask
