"""KV mirror: each decoding row's keys/values kept contiguous on CPU, so decode reads them in place.

The KV pool is addressed by slot, and a row's slots are scattered over it: attending to them
straight from the pool means gathering every row's whole K/V, in every layer, every step. The
mirror keeps, per request-table row, a contiguous copy of a run of that row's positions in every
layer; a decode step appends the new token's K/V and reads the run in place. The pool stays the
source of truth (the radix tree and the other backends know only the pool): the mirror is a cache
of it, filled from it and checked against it.

Validity: every write to the pool goes through the attention backend, which bumps the written
slots' version (SlotVersions). A mirror cell records the slot and the version it copied; it is
valid while the row's table still names that slot at that position and the slot's version is
unchanged. So a row reused by another request, a slot freed and handed out again, or a
retracted request coming back all show up as invalid cells, which are refilled from the pool.

Layout: per layer K and V [R, Hkv, C, D]; mirror row m holds positions base[m] .. base[m] + C - 1
of one request-table row (base > 0 when the row's first `base` positions are a prefix shared
with other rows, attended once for all of them). Mirror rows are handed out lowest first, so the
rows of a step form a short range [lo, lo + span) and one attention call reads them as a view.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from radixserve.cache.kv_pool import KVPool

logger = logging.getLogger(__name__)

_ROW_ALIGN = 8  # mirror rows are allocated in multiples of this
_COL_ALIGN = 64  # and positions in multiples of this


def _size(n_bytes: int) -> str:
    """Bytes for a log line, in GiB from 1 GiB up, else in MiB (so two sizes never print alike)."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class SlotVersions:
    """A counter per pool slot, bumped on every write: a copy of a slot is current while the
    counter it copied is."""

    def __init__(self, num_slots: int) -> None:
        self.version = torch.zeros(num_slots, dtype=torch.int64)  # [S]
        self.clock = 0

    def bump(self, slots: torch.Tensor) -> int:
        """Mark `slots` [N] as rewritten; returns their new version."""
        self.clock += 1
        self.version[slots] = self.clock
        return self.clock


class TailView(NamedTuple):
    """What one decode step reads from the mirror, computed once before the layers."""

    lo: int  # first mirror row of the view
    span: int  # mirror rows in the view: lo .. lo + span - 1
    length: int  # cells read per row (the longest run, new token included)
    rows: torch.Tensor  # [B] int64: mirror row of each decode row, minus lo
    identity: bool  # rows == arange(B) (span == B): queries and outputs need no reordering
    mask: torch.Tensor  # [span, 1, 1, length] additive (0 / -inf): each row's run, padding masked
    new_rows: torch.Tensor  # [B] int64 mirror row and cell of each row's new token
    new_cells: torch.Tensor  # [B] int64


class KVMirror:
    """Contiguous copies of runs of request-table rows, in every layer (see the module doc)."""

    def __init__(self, pool: KVPool, versions: SlotVersions, max_bytes: int) -> None:
        self.pool = pool
        self.versions = versions
        self.max_bytes = max_bytes
        k0 = pool.k[0]  # [S, Hkv, D]
        self.num_layers = len(pool.k)
        self.kv_heads, self.head_dim = k0.shape[1], k0.shape[2]
        self.bytes_per_cell = 2 * self.num_layers * self.kv_heads * self.head_dim * k0.element_size()
        self.k: list[torch.Tensor] = []  # per layer [R, Hkv, C, D]
        self.v: list[torch.Tensor] = []
        self.cell_slot = torch.empty((0, 0), dtype=torch.int64)  # [R, C] slot copied into each cell, -1 none
        self.cell_version = torch.empty((0, 0), dtype=torch.int64)  # [R, C] its version then
        self.base: list[int] = []  # [R] position of cell 0
        self.row_of: dict[int, int] = {}  # request-table row -> mirror row
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None
        self._over_budget_logged = False
        self.refilled_cells = 0  # cells copied from the pool so far (a steady decode step copies none)

    @property
    def capacity(self) -> tuple[int, int]:
        return tuple(self.cell_slot.shape)

    def base_of(self, table_row: int) -> int:
        """Position of the first mirrored cell of `table_row` (0 when it has no mirror row yet)."""
        m = self.row_of.get(table_row)
        return 0 if m is None or m >= len(self.base) else self.base[m]

    @property
    def nbytes(self) -> int:
        r, c = self.capacity
        return r * c * self.bytes_per_cell

    # ---- one step ------------------------------------------------------------------------------
    def prepare(self, table: torch.Tensor, table_rows: list[int], bases: list[int], seq_lens: list[int],
                new_slots: torch.Tensor, keep_rows: set[int]) -> TailView | None:
        """Ready the mirror for one decode step of B rows; None when it would exceed its budget.

        Row b (request-table row table_rows[b]) attends to positions bases[b] .. seq_lens[b] - 1 from
        the mirror; its new token (position seq_lens[b] - 1, pool slot new_slots[b]) is written by
        `append` in each layer. Stale or missing cells before it are copied from the pool here, in
        every layer. Mirror rows of request-table rows not in `keep_rows` are given up.
        """
        self._pending = None
        for row in [r for r in self.row_of if r not in keep_rows]:
            del self.row_of[row]
        mrows = self._assign(table_rows)
        runs = [s - b for s, b in zip(seq_lens, bases)]  # cells each row reads, new token included
        need_r, need_c = max(mrows) + 1, max(runs)
        if not self._reserve(need_r, need_c):
            return None
        mrows = self._compact(table_rows, mrows)
        for m, b in zip(mrows, bases):
            if self.base[m] != b:  # the shared prefix of this row changed: its cells shifted
                self.base[m] = b
                self.cell_slot[m] = -1
        self._refill(table, table_rows, mrows, bases, runs)

        m_t = torch.tensor(mrows, dtype=torch.int64)
        new_cells = torch.tensor(runs, dtype=torch.int64) - 1
        # NOTE: the new cells become valid only once every layer has written them (`append`).
        self.cell_slot[m_t, new_cells] = -1
        self._pending = (m_t, new_cells, new_slots.to("cpu", torch.int64), self.num_layers)
        lo, hi = min(mrows), max(mrows)
        span = hi - lo + 1
        identity = span == len(mrows) and mrows == list(range(lo, hi + 1))
        mask = torch.full((span, need_c), float("-inf"), dtype=self.pool.dtype)  # [span, C']
        cols = torch.arange(need_c)
        lens = torch.ones(span, dtype=torch.int64)  # rows of the span outside the batch read cell 0 only
        lens[m_t - lo] = torch.tensor(runs, dtype=torch.int64)
        mask.masked_fill_(cols[None, :] < lens[:, None], 0.0)
        return TailView(lo, span, need_c, m_t - lo, identity, mask[:, None, None, :], m_t, new_cells)

    def append(self, layer: int, view: TailView, k: torch.Tensor, v: torch.Tensor) -> None:
        """k/v [B, Hkv, D]: the decode rows' new token in `layer`."""
        self.k[layer][view.new_rows, :, view.new_cells] = k.to(self.pool.dtype)
        self.v[layer][view.new_rows, :, view.new_cells] = v.to(self.pool.dtype)
        if self._pending is not None:
            m_t, cells, slots, left = self._pending
            left -= 1
            if left == 0:  # every layer holds the new tokens now
                self.cell_slot[m_t, cells] = slots
                self.cell_version[m_t, cells] = self.versions.version[slots]
                self._pending = None
            else:
                self._pending = (m_t, cells, slots, left)

    def views(self, layer: int, view: TailView) -> tuple[torch.Tensor, torch.Tensor]:
        """-> K, V [span, Hkv, length, D] of `layer`, views into the mirror."""
        sl = slice(view.lo, view.lo + view.span)
        return self.k[layer][sl, :, :view.length], self.v[layer][sl, :, :view.length]

    # ---- internals -----------------------------------------------------------------------------
    def _assign(self, table_rows: list[int]) -> list[int]:
        used = set(self.row_of.values())
        free = (m for m in range(len(used) + len(table_rows)) if m not in used)
        out = []
        for row in table_rows:
            m = self.row_of.get(row)
            if m is None:
                m = self.row_of[row] = next(free)
                if m < len(self.base):
                    self.cell_slot[m] = -1  # NOTE: a fresh owner; the versions would catch it, this is cheaper
            out.append(m)
        return out

    def _compact(self, table_rows: list[int], mrows: list[int]) -> list[int]:
        """Move the highest mirror rows of the step into free lower ones when the range the step
        reads has grown much wider than the step (rows left holes as their requests finished)."""
        span = max(mrows) - min(mrows) + 1
        if span <= max(len(mrows) + 4, len(mrows) * 5 // 4):
            return mrows
        used = set(self.row_of.values())
        free = iter(m for m in range(len(self.base)) if m not in used)
        out = list(mrows)
        for b in sorted(range(len(out)), key=lambda i: -out[i]):
            dst = next(free, None)
            if dst is None or dst > out[b]:
                break
            src = out[b]
            for kv in (self.k, self.v):
                for layer in kv:
                    layer[dst] = layer[src]
            self.cell_slot[dst], self.cell_version[dst] = self.cell_slot[src], self.cell_version[src]
            self.base[dst] = self.base[src]
            self.row_of[table_rows[b]] = dst
            used.discard(src)
            out[b] = dst
        return out

    def _reserve(self, rows: int, cols: int) -> bool:
        r, c = self.capacity
        if rows <= r and cols <= c:
            return True
        new_r = max(r, _round_up(rows, _ROW_ALIGN))
        new_c = max(c, _round_up(max(cols, c + c // 2), _COL_ALIGN))
        if new_r * new_c * self.bytes_per_cell > self.max_bytes:
            # NOTE: never below the current width: the cells held so far are copied over.
            new_c = max(c, _round_up(cols, _COL_ALIGN))
            if new_r * new_c * self.bytes_per_cell > self.max_bytes:
                if not self._over_budget_logged:
                    # NOTE: the size reported is what would be allocated (rows and positions rounded
                    # up, never below the current capacity), the one compared with the budget.
                    logger.warning("CPU KV mirror: %d rows x %d positions needed; growing to %d x %d would take "
                                   "%s, over its budget of %s; decode gathers K/V from the pool for such steps "
                                   "(slower). Lower max_running_requests or raise max_total_tokens to raise the "
                                   "budget", rows, cols, new_r, new_c, _size(new_r * new_c * self.bytes_per_cell),
                                   _size(self.max_bytes))
                    self._over_budget_logged = True
                return False
        logger.debug("KV mirror grows to %d rows x %d positions (%.1f MiB)", new_r, new_c,
                     new_r * new_c * self.bytes_per_cell / 2**20)
        shape = (new_r, self.kv_heads, new_c, self.head_dim)
        for kv in (self.k, self.v):
            for i in range(self.num_layers):
                grown = torch.zeros(shape, dtype=self.pool.dtype)
                if i < len(kv):
                    grown[:r, :, :c] = kv[i]
                    kv[i] = grown
                else:
                    kv.append(grown)
        cell_slot = torch.full((new_r, new_c), -1, dtype=torch.int64)
        cell_version = torch.zeros((new_r, new_c), dtype=torch.int64)
        cell_slot[:r, :c] = self.cell_slot
        cell_version[:r, :c] = self.cell_version
        self.cell_slot, self.cell_version = cell_slot, cell_version
        self.base += [0] * (new_r - r)
        return True

    def _refill(self, table: torch.Tensor, table_rows: list[int], mrows: list[int], bases: list[int],
                runs: list[int]) -> None:
        """Copy from the pool every cell before the new token that is stale or empty, all layers."""
        width = max(runs) - 1
        if width <= 0:
            return
        rows_t = torch.tensor(table_rows, dtype=torch.int64)[:, None]  # [B, 1]
        m_t = torch.tensor(mrows, dtype=torch.int64)[:, None]
        cols = torch.arange(width)[None, :]  # [1, W]
        wanted = cols < torch.tensor(runs, dtype=torch.int64)[:, None] - 1  # [B, W]
        pos = (torch.tensor(bases, dtype=torch.int64)[:, None] + cols).clamp_(max=table.shape[1] - 1)
        slots = table[rows_t, pos]  # [B, W]
        current = (self.cell_slot[m_t, cols] == slots) & (self.cell_version[m_t, cols] == self.versions.version[slots])
        b_idx, j_idx = (wanted & ~current).nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return
        m_idx, s_idx = m_t[b_idx, 0], slots[b_idx, j_idx]
        self.refilled_cells += s_idx.numel()
        for layer in range(self.num_layers):
            self.k[layer][m_idx, :, j_idx] = self.pool.k[layer][s_idx]
            self.v[layer][m_idx, :, j_idx] = self.pool.v[layer][s_idx]
        self.cell_slot[m_idx, j_idx] = s_idx
        self.cell_version[m_idx, j_idx] = self.versions.version[s_idx]
