"""Draft proposers: guess a request's next tokens cheaply, on the host, from what is already known.

- prompt lookup ("ngram"): the tokens that followed the latest earlier occurrence of the request's
  last n tokens in its own prompt and output (answers that quote their retrieved passage, edits that
  copy code);
- the radix tree ("radix"): the continuation the tree already holds after the request's tokens (the
  answer cached when the same conversation ran before: regenerate, a program re-run, the same
  question over the same document); prompt lookup where the tree holds none.
"""
from __future__ import annotations

from typing import Sequence

from radixserve.cache.radix_tree import RadixTree
from radixserve.config import SpeculativeConfig


def prompt_lookup(tokens: Sequence[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the last n tokens of `tokens`,
    for the longest n in [n_min, n_max] that occurs; [] if none does."""
    size = len(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        tail = list(tokens[size - n:])
        first = tail[0]
        # NOTE: scan backwards so the latest occurrence (the likeliest to continue alike) wins
        for start in range(size - n - 1, -1, -1):
            if tokens[start] == first and list(tokens[start:start + n]) == tail:
                return list(tokens[start + n:start + n + k])
    return []


class Proposer:
    """Drafts for one engine, as its SpeculativeConfig says."""

    def __init__(self, config: SpeculativeConfig, tree: RadixTree) -> None:
        self.config = config
        self.tree = tree

    def propose(self, tokens: Sequence[int], k: int, namespace: str | None = None) -> list[int]:
        """Up to k draft tokens to follow `tokens` (the request's prompt and output so far)."""
        if k <= 0:
            return []
        c = self.config
        if c.method == "radix":
            draft = self.tree.continuation(tokens, k, namespace)
            if draft:
                return draft
        return prompt_lookup(tokens, k, c.prompt_lookup_min, c.prompt_lookup_max)
