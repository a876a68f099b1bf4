"""KV bookkeeping for requests: prefix matching, slot allocation, caching into the tree, release.

Ties the three memory layers (allocator, request table, radix tree) to Request objects so the
scheduler never touches slots directly.
"""
from __future__ import annotations

from typing import Sequence

import torch

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.radix_tree import RadixTree
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.scheduler.request import KVPlacement, Request


class KVManager:
    def __init__(self, allocator: PageAllocator, tree: RadixTree, req_table: ReqToTokenTable) -> None:
        self.allocator = allocator
        self.tree = tree
        self.req_table = req_table
        self.page_size = allocator.page_size

    # ---- capacity -------------------------------------------------------------------------
    def pages_for(self, req: Request, num_new_tokens: int) -> int:
        """Pages to allocate so `req` can hold `num_new_tokens` more tokens."""
        short = req.kv.kv_len + num_new_tokens - len(req.kv.slots)
        return max(0, -(-short // self.page_size))

    def available_slots(self) -> int:
        return self.allocator.num_free_slots + self.tree.evictable_size

    def make_free(self, num_slots: int) -> bool:
        """Evict unlocked tree leaves until `num_slots` slots are free; False if impossible."""
        short = num_slots - self.allocator.num_free_slots
        if short > 0:
            self.tree.evict(short)
        return self.allocator.num_free_slots >= num_slots

    # ---- request lifecycle -------------------------------------------------------------------
    def match_len(self, req: Request) -> tuple[int, object]:
        """Cached prefix length and node for `req` (without locking); used to order the queue."""
        m = self.tree.match_prefix(self._matchable(req), req.namespace)
        return m.slots.numel(), m.node

    def admit(self, req: Request) -> int:
        """Give `req` a table row and its cached prefix (locked). Returns the cached length."""
        m = self.tree.match_prefix(self._matchable(req), req.namespace)
        self.tree.lock(m.node)
        kv = req.kv
        kv.node = m.node
        kv.row = self.req_table.alloc()
        kv.slots = m.slots.tolist()
        kv.kv_len = kv.tree_len = len(kv.slots)
        if kv.slots:
            self.req_table.write(kv.row, 0, m.slots)
        return kv.kv_len

    def grow(self, req: Request, num_new_tokens: int) -> bool:
        """Allocate slots for `num_new_tokens` more tokens of `req` (evicting if needed)."""
        pages = self.pages_for(req, num_new_tokens)
        if pages == 0:
            return True
        if not self.make_free(pages * self.page_size):
            return False
        new = self.allocator.alloc(pages)
        if new is None:
            return False
        self.req_table.write(req.kv.row, len(req.kv.slots), new)
        req.kv.slots.extend(new.tolist())
        return True

    def grow_each_by_one(self, reqs: Sequence[Request]) -> bool:
        """Room for one more token in each of `reqs` (a decode step): one allocation and one
        table write for the whole batch instead of one per request."""
        needy = [r for r in reqs if self.pages_for(r, 1)]
        if not needy:
            return True
        ps = self.page_size
        if not self.make_free(len(needy) * ps):
            return False
        new = self.allocator.alloc(len(needy))
        if new is None:
            return False
        rows = torch.tensor([r.kv.row for r in needy], dtype=torch.int64).repeat_interleave(ps)
        cols = (torch.tensor([len(r.kv.slots) for r in needy], dtype=torch.int64)[:, None]
                + torch.arange(ps)).reshape(-1)
        self.req_table.write_cells(rows, cols, new)
        pages = new.view(len(needy), ps).tolist()
        for r, page in zip(needy, pages):
            r.kv.slots.extend(page)
        return True

    def free_tail(self, req: Request, keep: int) -> None:
        """Free `req`'s private slots past its first `keep` (a multiple of the page size, >= kv_len)."""
        kv = req.kv
        assert keep % self.page_size == 0 and kv.tree_len <= keep and kv.kv_len <= keep, (keep, kv.kv_len, kv.tree_len)
        if keep < len(kv.slots):
            self.allocator.free(torch.tensor(kv.slots[keep:], dtype=torch.int64))
            del kv.slots[keep:]

    def cache_prefix(self, req: Request) -> None:
        """Insert the computed tokens of a running request into the tree, keep them locked, and
        point its row at the tree's slots (duplicates of another request's work are freed)."""
        kv = req.kv
        if kv.kv_len == 0 or self.tree.disable:
            return
        m = self.tree.insert(req.fill_slice(0, kv.kv_len), torch.tensor(kv.slots[:kv.kv_len], dtype=torch.int64),
                             req.namespace)
        n = m.slots.numel()
        self.tree.lock(m.node)
        self.tree.unlock(kv.node)
        kv.node = m.node
        new_slots = m.slots.tolist()
        if new_slots != kv.slots[:n]:
            kv.slots[:n] = new_slots
            self.req_table.write(kv.row, 0, m.slots)
        kv.tree_len = n

    def release(self, req: Request) -> None:
        """Request leaves the running set (finished, aborted or retracted): its computed tokens
        go into the tree, its private tail is freed, its lock and row are returned."""
        kv = req.kv
        if kv.row is None:
            return
        if kv.kv_len > 0:
            self.tree.insert(req.fill_slice(0, kv.kv_len),
                             torch.tensor(kv.slots[:kv.kv_len], dtype=torch.int64), req.namespace)
        # NOTE: insert takes charge of the page-truncated computed part (the tree keeps it, or
        # frees it as a duplicate or because the cache is off); the rest of the allocation
        # (partial last page) is still private: free it here.
        kept = kv.kv_len // self.page_size * self.page_size
        tail = kv.slots[kept:]
        if tail:
            self.allocator.free(torch.tensor(tail, dtype=torch.int64))
        self.tree.unlock(kv.node)
        self.req_table.free(kv.row)
        req.kv = KVPlacement()

    def _matchable(self, req: Request) -> list[int]:
        """Tokens that may be served from the tree: never the last known token (its logits are
        needed to sample), never positions whose prompt logprobs were asked for."""
        limit = req.seq_len - 1
        start = req.logprob_start()
        if start is not None:
            limit = min(limit, start - 1 + len(req.prompt_logprobs))
        return req.fill_slice(0, max(limit, 0))

    # ---- invariants ---------------------------------------------------------------------------
    def check(self, running: Sequence[Request]) -> None:
        """free + tree + private == capacity, each running request's placement, and the tree's own invariants."""
        self.tree.check_integrity()
        for r in running:
            r.kv.check(self.page_size)
        private = sum(r.kv.private_slots for r in running)
        total = self.allocator.num_free_slots + self.tree.total_size + private
        assert total == self.allocator.capacity, (
            f"slot accounting broken: free {self.allocator.num_free_slots} + tree {self.tree.total_size} "
            f"+ private {private} != capacity {self.allocator.capacity}")
