"""Checking a draft against the model: which drafted tokens a request keeps after one verify step.

A verify step feeds a request's last token and its draft d_1..d_k in one forward and reads the
logits at each of the k + 1 positions. Position j's logits decide the token after d_j (after the
last token for j = 0), exactly as k + 1 plain decode steps would, as long as every earlier draft
token was the one the model itself would have chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def accept_greedy(draft: Sequence[int], targets: Sequence[int]) -> list[int]:
    """The tokens decoding appends: targets[j] is the token plain decoding picks after draft[:j] (its
    argmax, or its seeded draw at that step; len(draft) + 1 of them). Keeps targets up to and
    including the first that differs from the draft; all k + 1 when the whole draft agrees. Token
    for token what k + 1 plain steps give."""
    assert len(targets) == len(draft) + 1, (len(draft), len(targets))
    out: list[int] = []
    for d, t in zip(draft, targets):
        out.append(t)
        if t != d:
            return out
    out.append(targets[-1])
    return out


@dataclass(eq=False)
class SpecState:
    """One request's speculation between steps: the draft in flight and how long the next one may be.

    The draft length follows acceptance: it grows by one after a fully accepted draft, halves after a
    draft rejected at its first token; a request whose one-token drafts keep failing stops drafting
    for a while (1, 2, 4, ... up to MAX_PAUSE steps), so unpredictable text pays almost nothing."""

    length: int  # draft length to ask for next
    draft: tuple[int, ...] = ()  # the draft being verified this step
    pause: int = 0  # steps left without drafting
    backoff: int = 0  # the next pause after another failed one-token draft
    kept: int = 0  # draft tokens the last verify step kept
    drafted: int = 0  # totals, for the engine's counters
    accepted: int = 0

    MAX_PAUSE = 16

    def settle(self, limit: int) -> None:
        """After verifying `self.draft` (`kept` of its tokens were kept); `limit` is the configured k."""
        n, accepted = len(self.draft), self.kept
        self.drafted += n
        self.accepted += accepted
        self.draft = ()
        if accepted == n:
            self.length = min(limit, self.length + 1)
            self.backoff = 0
        elif accepted == 0:
            if self.length > 1:
                self.length = max(1, self.length // 2)
            else:
                self.backoff = min(self.MAX_PAUSE, max(1, 2 * self.backoff))
                self.pause = self.backoff
