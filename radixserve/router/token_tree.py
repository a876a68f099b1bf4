"""Radix trees of token ids on the router side: no slots, no locks, just which token paths exist.

`TokenTree` is a prefix-closed set of token sequences (the mirror of one replica's cache in one
namespace): insert a sequence (and so all its prefixes), discard every sequence that starts with a
given path, ask for the longest stored prefix of a query. `TokenCounter` is a multiset of
sequences (the prompts in flight to a replica): add, remove one copy, longest prefix.
Children are keyed by their first token; nodes are split on insert and never merged.
"""
from __future__ import annotations

from collections.abc import Sequence


class _Node:
    __slots__ = ("key", "children", "count")

    def __init__(self, key: list[int], count: int = 0) -> None:
        self.key = key  # token run on the edge into this node
        self.children: dict[int, _Node] = {}
        self.count = count  # TokenCounter: sequences through this node; unused by TokenTree


def _common_len(key: list[int], tokens: Sequence[int], start: int) -> int:
    """Length of the common prefix of key and tokens[start:]."""
    n = min(len(key), len(tokens) - start)
    if key[:n] == list(tokens[start:start + n]):
        return n
    lo, hi = 0, n  # NOTE: key[:lo] matches; the first mismatch lies in [lo, hi)
    while hi - lo > 8:
        mid = (lo + hi) // 2
        if key[lo:mid] == list(tokens[start + lo:start + mid]):
            lo = mid
        else:
            hi = mid
    while lo < hi and key[lo] == tokens[start + lo]:
        lo += 1
    return lo


def _split(parent: _Node, child: _Node, at: int) -> _Node:
    """Cut `child` (under `parent`) after `at` tokens; returns the new head, which keeps the count."""
    head = _Node(child.key[:at], child.count)
    child.key = child.key[at:]
    head.children[child.key[0]] = child
    parent.children[head.key[0]] = head
    return head


def _match(root: _Node, tokens: Sequence[int]) -> int:
    node, i = root, 0
    while i < len(tokens):
        child = node.children.get(tokens[i])
        if child is None:
            break
        common = _common_len(child.key, tokens, i)
        i += common
        if common < len(child.key):
            break
        node = child
    return i


def _subtree_tokens(node: _Node) -> int:
    total, stack = 0, list(node.children.values())
    while stack:
        nd = stack.pop()
        total += len(nd.key)
        stack.extend(nd.children.values())
    return total


class TokenTree:
    """A prefix-closed set of token sequences whose maximal members are whole pages long."""

    def __init__(self, page_size: int = 1) -> None:
        self.page_size = page_size
        self.root = _Node([])
        self.num_tokens = 0  # distinct (prefix, token) positions held = sum of edge lengths

    def match(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of `tokens` in the set."""
        return _match(self.root, tokens)

    def insert(self, tokens: Sequence[int]) -> int:
        """Add `tokens` (whole pages) and its prefixes; returns how many new token positions that added."""
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                node.children[tokens[i]] = _Node(list(tokens[i:]))
                self.num_tokens += len(tokens) - i
                return len(tokens) - i
            common = _common_len(child.key, tokens, i)
            if common < len(child.key):
                child = _split(node, child, common)
            node, i = child, i + common
        return 0

    def discard(self, path: Sequence[int]) -> int:
        """Drop every sequence that starts with `path` (whole pages, at least one), `path` itself
        included; a branch left ending inside a page is cut back to the page boundary. Returns how
        many token positions were dropped."""
        if not path:
            raise ValueError("discard needs a non-empty path; use clear() to empty the tree")
        depth = len(path) - 1
        stack, node, i = [], self.root, 0  # stack: (parent, node) pairs walked, for trimming
        while True:
            child = node.children.get(path[i])
            if child is None:
                return 0
            if i + len(child.key) <= depth:  # the whole edge lies within path[:-1]
                if _common_len(child.key, path, i) < len(child.key):
                    return 0
                stack.append((node, child))
                node, i = child, i + len(child.key)
                continue
            # path[:-1] ends inside this edge (or at its start): cut the edge at depth
            cut = depth - i
            if _common_len(child.key, path, i) < cut + 1:
                return 0
            before = self.num_tokens
            self.num_tokens -= len(child.key) - cut + _subtree_tokens(child)
            if cut == 0:
                del node.children[path[i]]
            else:
                child.key = child.key[:cut]
                child.children = {}
                stack.append((node, child))
            self._trim(stack, depth if cut else i)
            return before - self.num_tokens

    def _trim(self, stack: list[tuple[_Node, _Node]], end: int) -> None:
        """The branch along `stack` now ends at depth `end`; while its last node is a leaf that
        ends inside a page, cut it back to the page boundary."""
        while stack and end % self.page_size:
            parent, node = stack.pop()
            if node.children:
                return
            extra = end % self.page_size
            if extra < len(node.key):
                node.key = node.key[:-extra]
                self.num_tokens -= extra
                return
            del parent.children[node.key[0]]
            self.num_tokens -= len(node.key)
            end -= len(node.key)

    def clear(self) -> None:
        self.root = _Node([])
        self.num_tokens = 0

    def paths(self) -> set[tuple[int, ...]]:
        """The maximal sequences (root-to-leaf paths)."""
        out, stack = set(), [((), c) for c in self.root.children.values()]
        while stack:
            prefix, nd = stack.pop()
            here = prefix + tuple(nd.key)
            if not nd.children:
                out.add(here)
            stack.extend((here, c) for c in nd.children.values())
        return out


class TokenCounter:
    """A multiset of token sequences with longest-prefix lookup."""

    def __init__(self) -> None:
        self.root = _Node([])
        self.num_tokens = 0
        self.size = 0  # sequences held

    def match(self, tokens: Sequence[int]) -> int:
        return _match(self.root, tokens)

    def add(self, tokens: Sequence[int]) -> None:
        self.size += 1
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                node.children[tokens[i]] = _Node(list(tokens[i:]), 1)
                self.num_tokens += len(tokens) - i
                return
            common = _common_len(child.key, tokens, i)
            if common < len(child.key):
                child = _split(node, child, common)
            child.count += 1
            node, i = child, i + common

    def remove(self, tokens: Sequence[int]) -> None:
        """Remove one copy of `tokens` (which must have been added)."""
        path, node, i = [], self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None or _common_len(child.key, tokens, i) < len(child.key):
                raise KeyError("TokenCounter.remove: this sequence was never added")
            path.append((node, child))
            node, i = child, i + len(child.key)
        self.size -= 1
        for parent, child in path:
            child.count -= 1
            if child.count == 0:  # NOTE: a child's count never exceeds its parent's: all below goes too
                self.num_tokens -= len(child.key) + _subtree_tokens(child)
                del parent.children[child.key[0]]
                return
