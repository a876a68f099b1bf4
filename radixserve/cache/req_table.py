"""Request table: for each running request, the KV slot of each of its tokens."""
from __future__ import annotations

import torch

from radixserve.core.transfer import to_device


class ReqToTokenTable:
    """A [max_requests, max_context] int64 tensor; row r, column i = slot of token i of the
    request that holds row r. Rows are handed out from a free list.

    With `reserve_padding_row`, the last row (`padding_row`) is never handed out and stays all
    zeros: padded rows of a CUDA-graph batch point at it, so they read and write only slot 0,
    which the allocator never hands out (see KVPool).
    """

    def __init__(self, max_requests: int, max_context: int, device: torch.device | str,
                 reserve_padding_row: bool = False) -> None:
        if max_requests < 1 + int(reserve_padding_row):
            raise ValueError(f"max_requests must leave at least one usable row, got {max_requests}")
        self.table = torch.zeros((max_requests, max_context), dtype=torch.int64, device=device)
        usable = max_requests - 1 if reserve_padding_row else max_requests
        self.padding_row: int | None = max_requests - 1 if reserve_padding_row else None
        self._free_rows = list(range(usable - 1, -1, -1))
        self.max_context = max_context

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int:
        if not self._free_rows:
            raise RuntimeError("request table is full; lower max_running_requests admission")
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        if row == self.padding_row:
            raise ValueError(f"row {row} is the reserved padding row and was never handed out")
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Set columns start..start+len(slots)-1 of `row`."""
        self.table[row, start:start + slots.numel()] = to_device(slots, self.table.device)

    def write_cells(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """table[rows[i], cols[i]] = slots[i] for all i, in one copy and one scatter."""
        dev = self.table.device
        self.table[to_device(rows, dev), to_device(cols, dev)] = to_device(slots, dev)
