"""Page allocator: a free list of KV-cache pages, handed out as slot ids.

A page is `page_size` consecutive slots; page p owns slots p*page_size .. p*page_size+page_size-1.
Page 0 is reserved and never handed out, so padded rows and CUDA-graph replays may write there.
"""
from __future__ import annotations

import torch


class PageAllocator:
    """Host-side free list of pages 1..num_pages.

    The free pages live in an int64 stack tensor (`_stack[:_top]`), and a bool bitmap
    `_free_mask[p]` says whether page p is free, so alloc and free are a handful of vectorised
    torch ops whatever the count, and a double free is caught in O(n).
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.capacity = num_pages * page_size  # usable slots (page 0 excluded)
        self._offsets = torch.arange(page_size, dtype=torch.int64)  # [P]
        self._stack = torch.empty(num_pages, dtype=torch.int64)  # [num_pages]; free pages in _stack[:_top]
        self._free_mask = torch.zeros(num_pages + 1, dtype=torch.bool)  # [num_pages + 1]; page 0 never free
        self._top = 0
        self.reset()

    @property
    def num_free_pages(self) -> int:
        return self._top

    @property
    def num_free_slots(self) -> int:
        return self._top * self.page_size

    def reset(self) -> None:
        """Mark every usable page free. Pages come out in ascending order after a reset."""
        self._stack.copy_(torch.arange(self.num_pages, 0, -1, dtype=torch.int64))
        self._top = self.num_pages
        self._free_mask.fill_(True)
        self._free_mask[0] = False

    def alloc(self, num_pages: int) -> torch.Tensor | None:
        """Slot ids [num_pages * page_size] int64, page by page; None (and nothing taken) when
        fewer than `num_pages` pages are free."""
        if num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {num_pages}")
        if num_pages > self._top:
            return None
        if num_pages == 0:
            return torch.empty(0, dtype=torch.int64)
        pages = self._stack[self._top - num_pages:self._top].flip(0)  # [n]
        self._top -= num_pages
        self._free_mask[pages] = False
        if self.page_size == 1:
            return pages  # flip() already copied out of the stack
        return (pages[:, None] * self.page_size + self._offsets).reshape(-1)  # [n * P]

    def pages_of(self, slots: torch.Tensor) -> torch.Tensor:
        """Page ids [n] of `slots` [n * page_size], which must be whole, page-aligned pages."""
        if slots.dim() != 1 or slots.dtype != torch.int64:
            raise ValueError(f"slots must be a 1-D int64 tensor, got shape {tuple(slots.shape)} "
                             f"dtype {slots.dtype}")
        if slots.numel() % self.page_size:
            raise ValueError(f"slots must be whole pages: {slots.numel()} slots is not a multiple of "
                             f"page_size {self.page_size}")
        slots = slots.cpu()
        if self.page_size == 1:
            pages = slots
        else:
            by_page = slots.reshape(-1, self.page_size)  # [n, P]
            pages = by_page[:, 0] // self.page_size  # [n]
            if not torch.equal(by_page, pages[:, None] * self.page_size + self._offsets):
                raise ValueError("slots must be whole pages: each page's slots consecutive and "
                                 "starting at a multiple of page_size")
        if pages.numel():
            lo, hi = torch.aminmax(pages)
            if int(lo) < 1 or int(hi) > self.num_pages:
                raise ValueError(f"slots out of range: pages must lie in 1..{self.num_pages} "
                                 f"(page 0 is reserved)")
        return pages

    def free(self, slots: torch.Tensor) -> None:
        """Return whole pages to the free list. Raises ValueError on a double free."""
        pages = self.pages_of(slots)
        n = pages.numel()
        if n == 0:
            return
        if bool(self._free_mask[pages].any()):
            raise ValueError("double free: some of these pages are already free "
                             "(a slot was freed twice, or freed by both the tree and a request)")
        if n > 1 and torch.unique(pages).numel() != n:
            raise ValueError("double free: the same page appears twice in one free() call")
        self._free_mask[pages] = True
        self._stack[self._top:self._top + n] = pages
        self._top += n

    def is_free(self, slots: torch.Tensor) -> torch.Tensor:
        """Bool [n] per slot: whether its page is in the free list (page 0 reads as not free)."""
        pages = slots.cpu() // self.page_size
        return self._free_mask[pages]
