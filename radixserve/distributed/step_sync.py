"""The per-step message from rank 0 to the other ranks: the ForwardBatch and the request-table
writes made since the previous step.

Every rank keeps its own request table (the KV slots are the same on every rank; each rank's pool
holds its own heads for them). Rank 0's scheduler writes its table; `RecordingReqTable` logs those
writes, and the next step's message carries them, so a rank's table equals rank 0's for every row
a batch reads.

Wire format: two broadcasts per step whatever the batch holds, a fixed header of HEADER_LEN int64
(the operation and every length) and one int64 payload with all tensors back to back (on the
device under NCCL, so rank 0's host never waits for it).
"""
from __future__ import annotations

from typing import NamedTuple

import time

import torch

from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.core.prefix_groups import PrefixGroups
from radixserve.core.transfer import to_device
from radixserve.distributed.group import TensorParallel

HEADER_LEN = 16
OP_FORWARD, OP_STOP, OP_PROBE = 1, 2, 3
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class TableDelta(NamedTuple):
    rows: torch.Tensor  # [D] int64
    cols: torch.Tensor  # [D] int64
    slots: torch.Tensor  # [D] int64: table[rows[i], cols[i]] = slots[i], no (row, col) twice


class RecordingReqTable(ReqToTokenTable):
    """A ReqToTokenTable that also logs every write (on the host) for the other ranks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        super().write(row, start, slots)
        slots = slots.to("cpu", torch.int64).reshape(-1)
        self._log.append((torch.full_like(slots, row), torch.arange(start, start + slots.numel()), slots))

    def write_cells(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        super().write_cells(rows, cols, slots)
        self._log.append(tuple(t.to("cpu", torch.int64).reshape(-1) for t in (rows, cols, slots)))

    def take_delta(self) -> TableDelta:
        """The writes since the last call, a cell written twice keeping its last value."""
        if not self._log:
            empty = torch.empty(0, dtype=torch.int64)
            return TableDelta(empty, empty, empty)
        rows, cols, slots = (torch.cat(parts) for parts in zip(*self._log))
        self._log.clear()
        keys = rows * self.max_context + cols  # [D]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        if uniq.numel() != keys.numel():  # NOTE: index_put with repeated indices has no defined winner
            last = torch.full(uniq.shape, -1, dtype=torch.int64).scatter_reduce_(
                0, inverse, torch.arange(keys.numel()), "amax")
            rows, cols, slots = rows[last], cols[last], slots[last]
        return TableDelta(rows, cols, slots)


def _group_sizes(groups: PrefixGroups | None) -> tuple[int, int, int, int, int]:
    if groups is None:
        return 0, 0, 0, 0, 0
    return 1, groups.group_rows.shape[0], groups.num_groups, groups.max_group_size, groups.max_prefix_len


class StepSender:
    """Rank 0's side: one `send` per forward step, `stop` once at shutdown."""

    def __init__(self, tp: TensorParallel, table: RecordingReqTable, device: torch.device) -> None:
        self.tp, self.table, self.device = tp, table, device

    def send(self, batch: ForwardBatch) -> None:
        delta = self.table.take_delta()
        has_groups, r, g, max_group, max_prefix = _group_sizes(batch.prefix_groups)
        header = [OP_FORWARD, batch.num_tokens, batch.batch_size, batch.logits_indices.shape[0], batch.max_seq_len,
                  batch.max_extend_len, int(batch.is_decode), has_groups, r, g, max_group, max_prefix,
                  delta.rows.shape[0]]
        parts = [batch.input_ids, batch.positions, batch.out_slots, batch.req_rows, batch.seq_lens,
                 batch.extend_lens, batch.extend_starts, batch.logits_indices]
        if batch.prefix_groups is not None:
            pg = batch.prefix_groups
            parts += [pg.row_prefix_lens, pg.group_rows, pg.group_starts, pg.group_prefix_lens, pg.group_table_rows]
        host = torch.cat(list(delta))  # [3D]
        parts.append(to_device(host, self.device))
        payload = torch.cat([p.to(torch.int64).reshape(-1) for p in parts])  # one device tensor
        self._broadcast_header(header)
        self.tp.broadcast(payload)

    def stop(self) -> None:
        self._broadcast_header([OP_STOP])

    def probe(self, spec: "ProbeSpec") -> float:
        """Every rank runs `spec`'s collectives; -> seconds per step on rank 0 (benchmarks)."""
        self._broadcast_header([OP_PROBE, spec.steps, spec.rows, spec.hidden, spec.reduces, spec.gather_cols,
                                _DTYPE_CODES[spec.dtype]])
        return run_probe(self.tp, self.device, spec)

    def _broadcast_header(self, values: list[int]) -> None:
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        header[:len(values)] = torch.tensor(values, dtype=torch.int64)
        self.tp.broadcast(to_device(header, self.device))


class StepReceiver:
    """A rank > 0's side: `receive` gives the next step's batch (its table updated), None at stop."""

    def __init__(self, tp: TensorParallel, table: ReqToTokenTable, device: torch.device) -> None:
        self.tp, self.table, self.device = tp, table, device
        self._header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=device)

    def receive(self) -> ForwardBatch | None:
        """The next forward step's batch; None at stop (probes in between are run here)."""
        while True:
            self.tp.broadcast(self._header)
            values = self._header.tolist()
            if values[0] != OP_PROBE:
                return self._batch(values)
            steps, rows, hidden, reduces, gather_cols, code = values[1:7]
            dtype = next(d for d, c in _DTYPE_CODES.items() if c == code)
            run_probe(self.tp, self.device, ProbeSpec(steps, rows, hidden, reduces, gather_cols, dtype))

    def _batch(self, header: list[int]) -> ForwardBatch | None:
        (op, t, b, n_logits, max_seq, max_ext, is_decode, has_groups, r, g, max_group, max_prefix,
         d, *_) = header
        if op == OP_STOP:
            return None
        if op != OP_FORWARD:
            raise RuntimeError(f"tensor-parallel step message with unknown operation {op}")
        sizes = [t, t, t, b, b, b, b, n_logits] + ([b, r, g + 1, g, g] if has_groups else []) + [d, d, d]
        payload = torch.empty(sum(sizes), dtype=torch.int64, device=self.device)
        self.tp.broadcast(payload)
        fields = list(payload.split(sizes))
        rows, cols, slots = fields[-3:]
        if d:
            self.table.table[rows, cols] = slots
        groups = None
        if has_groups:
            groups = PrefixGroups(*fields[8:13], max_group_size=max_group, max_prefix_len=max_prefix)
        return ForwardBatch(*fields[:8], max_seq_len=max_seq, max_extend_len=max_ext, is_decode=bool(is_decode),
                            prefix_groups=groups)


class ProbeSpec(NamedTuple):
    """The collectives of one decode step of `rows` tokens: `reduces` all-reduces of [rows, hidden]
    (two per layer plus the embedding's) and one all-gather of [rows, gather_cols] logits."""

    steps: int
    rows: int
    hidden: int
    reduces: int
    gather_cols: int
    dtype: torch.dtype


def run_probe(tp: TensorParallel, device: torch.device, spec: ProbeSpec) -> float:
    """Run `spec.steps` steps' worth of collectives (after one warm-up step); seconds per step."""
    x = torch.zeros((spec.rows, spec.hidden), dtype=spec.dtype, device=device)  # [rows, hidden]
    logits = torch.zeros((spec.rows, spec.gather_cols), dtype=spec.dtype, device=device)  # [rows, V/tp]

    def step() -> None:
        for _ in range(spec.reduces):
            tp.all_reduce(x)
        tp.all_gather_last(logits)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(spec.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / max(1, spec.steps)
