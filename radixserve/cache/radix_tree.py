"""Radix tree over token prefixes; each edge owns the KV slots of its tokens.

Each namespace (None = default; e.g. a cache_salt or adapter id) has its own root, so
different namespaces never share nodes. Matches and inserts work in whole pages.
"""
from __future__ import annotations

import heapq
import itertools
import logging
from typing import NamedTuple, Sequence

import torch

from radixserve.cache.allocator import PageAllocator
from radixserve.cache.cache_events import CacheEventLog

logger = logging.getLogger(__name__)

_EMPTY = torch.empty(0, dtype=torch.int64)


class TreeNode:
    """A run of tokens (`key`) and their slots (`value`); the root of a namespace has both empty."""

    __slots__ = ("key", "value", "children", "parent", "lock_ref", "last_access", "removed", "namespace")

    def __init__(self, key: list[int], value: torch.Tensor, parent: TreeNode | None, tick: int) -> None:
        self.key = key  # [L] token ids
        self.value = value  # [L] int64 slots
        self.children: dict[int | tuple[int, ...], TreeNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = tick
        self.removed = False
        self.namespace: str | None = None  # set on namespace roots only

    def __repr__(self) -> str:
        return f"TreeNode(len={len(self.key)}, lock_ref={self.lock_ref}, children={len(self.children)})"


class MatchResult(NamedTuple):
    # NOTE: slots may be a view of the tree's own storage: read it or copy it, never write into it.
    slots: torch.Tensor  # [m] int64 slots of the matched prefix (m a multiple of page_size)
    node: TreeNode  # deepest matched node (the namespace's root when m == 0); pass to lock/unlock


def _as_list(tokens: Sequence[int]) -> list[int]:
    if isinstance(tokens, list):
        return tokens
    if hasattr(tokens, "tolist"):  # torch tensor, numpy array
        return tokens.tolist()
    return list(tokens)


def _common_len(key: list[int], tokens: list[int], start: int, end: int) -> int:
    """Length of the common prefix of key and tokens[start:end]."""
    n = min(len(key), end - start)
    if (key if n == len(key) else key[:n]) == tokens[start:start + n]:
        return n
    lo, hi = 0, n  # NOTE: key[:lo] matches; the first mismatch lies in [lo, hi)
    while hi - lo > 16:  # halve with C-speed slice compares, then finish with a short loop
        mid = (lo + hi) // 2
        if key[lo:mid] == tokens[start + lo:start + mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and key[lo] == tokens[start + lo]:
        lo += 1
    return lo


class RadixTree:
    def __init__(self, allocator: PageAllocator, disable: bool = False) -> None:
        self.allocator = allocator
        self.page_size = allocator.page_size
        self.disable = disable
        self.query_tokens = 0
        self.hit_tokens = 0
        self.evicted_tokens = 0
        self._seq = itertools.count()  # tie-breaker for heap entries
        self._detached_root = TreeNode([], _EMPTY, None, 0)  # returned for misses in unknown namespaces
        self.events = CacheEventLog(self.page_size)  # what was cached and evicted, for routers that mirror this tree
        self._clear()

    def _clear(self) -> None:
        self._tick = 0
        self._roots: dict[str | None, TreeNode] = {}
        self._heap: list[tuple[int, int, TreeNode]] = []  # (last_access, seq, leaf); lazily deleted
        self._num_nodes = 0
        self.evictable_size = 0
        self.protected_size = 0

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    # ---- lookup -----------------------------------------------------------------------------

    def _root(self, namespace: str | None, create: bool) -> TreeNode:
        if namespace is not None and not isinstance(namespace, str):
            raise ValueError(f"namespace must be a str or None, got {type(namespace).__name__}")
        root = self._roots.get(namespace)
        if root is None:
            if not create:  # NOTE: a miss leaves no trace, so unused namespaces cost nothing
                return self._detached_root
            root = self._roots[namespace] = TreeNode([], _EMPTY, None, 0)
            root.namespace = namespace
        return root

    def _child_key(self, tokens: list[int], i: int) -> int | tuple[int, ...]:
        return tokens[i] if self.page_size == 1 else tuple(tokens[i:i + self.page_size])

    def _walk(self, tokens: list[int], n: int, root: TreeNode) -> tuple[TreeNode, list[TreeNode], int]:
        """Follow tokens[:n] (n whole pages) from root, splitting the last node if the match ends
        inside it; refresh last access on the path. Returns (deepest node, path, matched len)."""
        self._tick += 1
        node, path, i = root, [], 0
        while i < n:
            child = node.children.get(self._child_key(tokens, i))
            if child is None:
                break
            common = _common_len(child.key, tokens, i, n)
            common -= common % self.page_size
            if common < len(child.key):
                child = self._split(child, common)
            child.last_access = self._tick
            path.append(child)
            node, i = child, i + common
        if not node.children and node.lock_ref == 0 and node.parent is not None:
            self._push(node)
        return node, path, i

    def _split(self, node: TreeNode, at: int) -> TreeNode:
        """Cut `node` at `at` (0 < at < len, whole pages). `node` keeps the tail, so a caller
        holding it still unlocks the whole path; returns the new head."""
        head = TreeNode(node.key[:at], node.value[:at], node.parent, node.last_access)
        head.lock_ref = node.lock_ref  # NOTE: counters unchanged: same slots, same lock state
        head.children[self._child_key(node.key, at)] = node
        node.parent.children[self._child_key(node.key, 0)] = head
        node.key, node.value, node.parent = node.key[at:], node.value[at:], head
        self._num_nodes += 1
        return head

    @staticmethod
    def _path_slots(path: list[TreeNode]) -> torch.Tensor:
        if not path:
            return _EMPTY
        return path[0].value if len(path) == 1 else torch.cat([nd.value for nd in path])

    def match_prefix(self, tokens: Sequence[int], namespace: str | None = None) -> MatchResult:
        """Longest cached prefix of `tokens`, in whole pages."""
        tokens = _as_list(tokens)
        self.query_tokens += len(tokens)
        root = self._root(namespace, create=False)
        if self.disable or not root.children:
            return MatchResult(_EMPTY, root)
        n = len(tokens) - len(tokens) % self.page_size
        node, path, m = self._walk(tokens, n, root)
        self.hit_tokens += m
        return MatchResult(self._path_slots(path), node)

    def continuation(self, tokens: Sequence[int], limit: int, namespace: str | None = None) -> list[int]:
        """Up to `limit` tokens the tree holds right after the whole of `tokens` (the most recently used
        branch where it forks); [] when `tokens` is not all cached. Read-only: no split, no access
        refresh, no hit counts (a speculative draft is not a cache hit)."""
        tokens = _as_list(tokens)
        node = self._root(namespace, create=False)
        if self.disable or limit <= 0:
            return []
        i, n = 0, len(tokens)
        out: list[int] = []
        while i < n:  # NOTE: the last run may end inside a page, so children are matched on their key, not looked up
            rest = tokens[i:]
            child = next((c for c in node.children.values() if c.key[:len(rest)] == rest[:len(c.key)]), None)
            if child is None:
                return []
            if len(rest) < len(child.key):
                out = child.key[len(rest):len(rest) + limit]
            node, i = child, i + len(child.key)
        while len(out) < limit and node.children:
            node = max(node.children.values(), key=lambda c: c.last_access)
            out += node.key[:limit - len(out)]
        return out

    # ---- insert -----------------------------------------------------------------------------

    def insert(self, tokens: Sequence[int], slots: torch.Tensor, namespace: str | None = None) -> MatchResult:
        """Cache tokens[:n] (n = whole pages) with `slots[:n]`; the tail stays the caller's.
        Given slots that differ from slots the tree already holds for the same prefix are freed.
        Returns the tree's slots for tokens[:n] and the node that ends them."""
        tokens = _as_list(tokens)
        if slots.dim() != 1 or len(tokens) != slots.numel():
            raise ValueError(f"insert needs one slot per token: {len(tokens)} tokens, "
                             f"slots of shape {tuple(slots.shape)}")
        slots = slots.to("cpu", torch.int64)
        n = len(tokens) - len(tokens) % self.page_size
        if self.disable:
            self.allocator.free(slots[:n])
            return MatchResult(_EMPTY, self._root(namespace, create=False))
        root = self._root(namespace, create=n > 0)
        node, path, i = self._walk(tokens, n, root)
        if i:
            self._free_duplicates(slots[:i], self._path_slots(path))
        if i < n:
            leaf = TreeNode(tokens[i:n], slots[i:n].clone(), node, self._tick)
            node.children[self._child_key(tokens, i)] = leaf
            self._num_nodes += 1
            self.evictable_size += n - i
            self._push(leaf)
            self.events.record_insert(leaf)
            path.append(leaf)
            node = leaf
        return MatchResult(self._path_slots(path), node)

    def _free_duplicates(self, given: torch.Tensor, held: torch.Tensor) -> None:
        """given/held [i]: free the caller's pages that are not the tree's own."""
        differ = (given != held).view(-1, self.page_size)  # [pages, P]
        page_differs = differ.any(1)  # [pages]
        if not torch.equal(page_differs, differ.all(1)):
            raise ValueError("insert: a page of the given slots partly equals the tree's page; "
                             "pass either the tree's whole pages (from match_prefix) or your own")
        if bool(page_differs.any()):
            self.allocator.free(given.view(-1, self.page_size)[page_differs].reshape(-1))

    # ---- locks ------------------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect root..node from eviction (the namespace root itself holds nothing)."""
        if node.removed:
            raise RuntimeError("lock: this node was evicted; lock the node from a fresh match_prefix")
        while node.parent is not None:
            if node.lock_ref == 0:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        if node.parent is not None and node.lock_ref <= 0:
            raise RuntimeError("unlock: node is not locked (unlock called more often than lock)")
        while node.parent is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
                if not node.children:
                    self._push(node)
            node = node.parent

    # ---- eviction ---------------------------------------------------------------------------

    def _push(self, leaf: TreeNode) -> None:
        heapq.heappush(self._heap, (leaf.last_access, next(self._seq), leaf))
        if len(self._heap) > 4 * self._num_nodes + 64:  # NOTE: bound the stale entries
            self._heap = [(nd.last_access, next(self._seq), nd) for nd in self._nodes()
                          if not nd.children and nd.lock_ref == 0]
            heapq.heapify(self._heap)

    def evict(self, num_tokens: int) -> int:
        """Free least-recently-used unlocked leaves until >= num_tokens slots are freed or nothing
        is evictable. Returns the number of slots freed."""
        freed = 0
        while freed < num_tokens and self._heap:
            tick, _, node = heapq.heappop(self._heap)
            if node.removed or node.children or node.lock_ref or tick != node.last_access:
                continue  # stale entry
            self.allocator.free(node.value)
            freed += len(node.key)
            self.evictable_size -= len(node.key)
            node.removed = True
            self._num_nodes -= 1
            parent = node.parent
            del parent.children[self._child_key(node.key, 0)]
            self.events.record_eviction(parent, node.key)
            if parent.children:
                continue
            if parent.parent is not None:
                if parent.lock_ref == 0:
                    self._push(parent)
            else:  # an emptied namespace root: drop it so namespaces do not pile up
                del self._roots[parent.namespace]
        self.evicted_tokens += freed
        return freed

    # ---- whole tree -------------------------------------------------------------------------

    def _nodes(self) -> list[TreeNode]:
        """Every non-root node, parents before children."""
        out, stack = [], [c for r in self._roots.values() for c in r.children.values()]
        while stack:
            nd = stack.pop()
            out.append(nd)
            stack.extend(nd.children.values())
        return out

    def reset(self) -> None:
        """Drop every node and free its slots. Raises if a request still holds a lock."""
        if self.protected_size:
            raise RuntimeError(f"reset: {self.protected_size} cached slots are still locked; "
                               "unlock every running request's node first")
        nodes = self._nodes()
        if nodes:
            self.allocator.free(torch.cat([nd.value for nd in nodes]))
        for nd in nodes:
            nd.removed = True
        logger.debug("radix tree reset: freed %d slots in %d nodes", self.total_size, len(nodes))
        self._clear()
        self.events.record_reset()

    def dump(self) -> list[tuple[str | None, list[tuple[int, list[int]]]]]:
        """Every namespace's nodes as (parent's index in the list or -1 for the root, token run),
        parents before children: the whole tree's token paths, for a mirror to resync from."""
        out = []
        for ns, root in self._roots.items():
            nodes: list[tuple[int, list[int]]] = []
            stack = [(-1, c) for c in root.children.values()]
            while stack:
                parent, nd = stack.pop()
                nodes.append((parent, nd.key))
                stack.extend((len(nodes) - 1, c) for c in nd.children.values())
            out.append((ns, nodes))
        return out

    def export(self) -> list[tuple[str | None, int, list[int], torch.Tensor]]:
        """Every node as (namespace, index of its parent in this list or -1, token run, slots),
        parents before children: the whole tree with its slots (a snapshot writes their K/V)."""
        out: list[tuple[str | None, int, list[int], torch.Tensor]] = []
        for ns, root in self._roots.items():
            stack = [(-1, c) for c in root.children.values()]
            while stack:
                parent, nd = stack.pop()
                out.append((ns, parent, nd.key, nd.value))
                stack.extend((len(out) - 1, c) for c in nd.children.values())
        return out

    def check_integrity(self) -> None:
        """Assert every structural invariant; O(tree size). Meant for tests and idle steps."""
        ps = self.page_size
        evictable = protected = 0
        values = []
        for ns, root in self._roots.items():
            assert root.parent is None and not root.key and root.value.numel() == 0, \
                f"namespace {ns!r}: root must hold no tokens"
            assert root.lock_ref == 0, f"namespace {ns!r}: root lock_ref {root.lock_ref} != 0"
            assert root.namespace == ns, f"namespace {ns!r}: root records namespace {root.namespace!r}"
        for nd in self._nodes():
            p = nd.parent
            assert p is not None and not nd.removed, f"{nd}: removed node still reachable"
            assert p.children.get(self._child_key(nd.key, 0)) is nd, f"{nd}: child key or parent pointer wrong"
            assert len(nd.key) == nd.value.numel() > 0, \
                f"{nd}: key length {len(nd.key)} != slot count {nd.value.numel()} or empty"
            assert len(nd.key) % ps == 0, f"{nd}: length {len(nd.key)} not a multiple of page_size {ps}"
            assert nd.lock_ref >= 0, f"{nd}: negative lock_ref"
            assert p.parent is None or p.lock_ref >= nd.lock_ref, \
                f"{nd}: lock_ref {nd.lock_ref} exceeds its parent's {p.lock_ref}"
            if nd.lock_ref:
                protected += len(nd.key)
            else:
                evictable += len(nd.key)
            values.append(nd.value)
        assert evictable == self.evictable_size, f"evictable_size {self.evictable_size} != recount {evictable}"
        assert protected == self.protected_size, f"protected_size {self.protected_size} != recount {protected}"
        in_heap = {id(nd) for t, _, nd in self._heap if t == nd.last_access}
        for nd in self._nodes():
            if not nd.children and nd.lock_ref == 0:
                assert id(nd) in in_heap, f"{nd}: evictable leaf missing from the eviction heap"
        if values:
            slots = torch.cat(values)
            assert torch.unique(slots).numel() == slots.numel(), "a slot appears twice in the tree"
            try:
                self.allocator.pages_of(slots)
            except ValueError as e:
                raise AssertionError(f"tree holds slots that are not whole valid pages: {e}") from e
            assert not bool(self.allocator.is_free(slots).any()), "a tree slot is in the allocator's free list"
