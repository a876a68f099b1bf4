"""The CPU KV mirror grows in place: cells already copied survive every growth, the one near its
memory budget included (that growth takes only the positions asked for)."""
from __future__ import annotations

import logging
import re

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.runtime.attention.kv_mirror import KVMirror, SlotVersions


def _mirror(max_cells: int) -> KVMirror:
    pool = KVPool(num_slots=64, num_layers=2, num_kv_heads=3, head_dim=4, dtype=torch.float32, device="cpu")
    bytes_per_cell = 2 * 2 * 3 * 4 * 4
    return KVMirror(pool, SlotVersions(64), max_bytes=max_cells * bytes_per_cell)


def test_growth_near_the_budget_keeps_the_cells_held():
    m = _mirror(max_cells=64 * 128)
    assert m._reserve(8, 100)  # 8 rows x 128 positions (100 rounded up)
    assert m.capacity == (8, 128)
    for layer in m.k + m.v:
        layer.copy_(torch.randn(layer.shape))
    held = [layer.clone() for layer in m.k + m.v]
    m.cell_slot[:, :] = torch.arange(8 * 128).view(8, 128)
    # 64 rows at the usual 1.5x width (192) is over the budget; 64 x 128 fits: the width stays 128
    assert m._reserve(64, 64)
    assert m.capacity == (64, 128)
    for before, layer in zip(held, m.k + m.v):
        assert torch.equal(layer[:8], before)
        assert not layer[8:].any()
    assert torch.equal(m.cell_slot[:8], torch.arange(8 * 128).view(8, 128))
    assert (m.cell_slot[8:] == -1).all()
    assert not m._reserve(128, 128)  # past the budget: refused, nothing lost
    assert m.capacity == (64, 128)


def test_over_budget_warning_reports_the_size_it_compared(caplog):
    """The warning names what would be allocated (rounded up, never below the capacity held), the
    size that is over the budget, never the smaller size asked for."""
    m = _mirror(max_cells=64 * 128)
    assert m._reserve(64, 128)
    with caplog.at_level(logging.WARNING, logger="radixserve.runtime.attention.kv_mirror"):
        assert not m._reserve(65, 100)  # 65 rows needed (<= 100 positions): 72 x 128 cells are over 64 x 128
    msg = caplog.records[-1].getMessage()
    wanted, budget = (float(x) for x in re.search(r"take ([\d.]+) MiB, over its budget of ([\d.]+) MiB", msg).groups())
    assert wanted > budget and budget == 64 * 128 * m.bytes_per_cell / 2**20, msg
    assert "65 rows x 100 positions needed" in msg and "growing to 72 x 128" in msg
