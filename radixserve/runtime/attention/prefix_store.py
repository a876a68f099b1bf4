"""Shared prefixes of cascade groups, kept contiguous per layer across decode steps.

A cascade group's prefix lives in radix-tree slots, which no step writes while the group's
requests hold them; gathered once, it stays current for as many steps as the group lasts. An
entry is checked against the pool like a mirror cell (same slots, same versions), so reuse is
never stale; entries no step used are dropped.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.runtime.attention.kv_mirror import SlotVersions


class PrefixEntry(NamedTuple):
    slots: torch.Tensor  # [P] int64 pool slots of the prefix
    versions: torch.Tensor  # [P] int64 their versions when copied
    k: list[torch.Tensor]  # per layer [1, Hkv, P, D] contiguous
    v: list[torch.Tensor]


class PrefixStore:
    def __init__(self, pool: KVPool, versions: SlotVersions) -> None:
        self.pool = pool
        self.versions = versions
        self._entries: dict[tuple[int, int, int], PrefixEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, slots: torch.Tensor) -> PrefixEntry:
        """The entry for the prefix held in `slots` [P] (copied from the pool when new or stale)."""
        key = (slots.numel(), int(slots[0]), int(slots[-1]))
        entry = self._entries.get(key)
        current = self.versions.version[slots]
        if entry is not None and torch.equal(entry.slots, slots) and torch.equal(entry.versions, current):
            return entry
        ks = [self.pool.k[i][slots].permute(1, 0, 2).unsqueeze(0).contiguous() for i in range(len(self.pool.k))]
        vs = [self.pool.v[i][slots].permute(1, 0, 2).unsqueeze(0).contiguous() for i in range(len(self.pool.v))]
        entry = self._entries[key] = PrefixEntry(slots.clone(), current, ks, vs)
        return entry

    def keep_only(self, entries: list[PrefixEntry]) -> None:
        """Drop every entry not in `entries` (those the step uses)."""
        ids = {id(e) for e in entries}
        self._entries = {key: e for key, e in self._entries.items() if id(e) in ids}
