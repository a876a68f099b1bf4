"""When a request stops: EOS / stop token ids / max_new_tokens (StopChecker), and stop strings in
the text (StopStringBuffer, which the text side of a request runs: engine/text.py).

Stop strings are matched across token boundaries on the detokenised text; the stop string and
everything after it never reach the client, and text that may still turn out to be the start of a
stop string is held back until it cannot (a streamed client never sees part of a stop string).
If several stop strings match, the one whose match COMPLETES first in the text wins (ties: the
longer one, i.e. the earliest start) -- what a character-by-character stream would see, so the
result does not depend on how the text was split into pieces.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple


class StopText(NamedTuple):
    text: str  # safe to emit now
    matched: str | None  # the stop string that ended the request, or None


class StopStringBuffer:
    """Feed text pieces; get back what is safe to emit and whether a stop string matched."""

    def __init__(self, stop: Iterable[str]) -> None:
        self.stop = [s for s in stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        self._pending = ""  # held back: a suffix that is a proper prefix of some stop string
        self.matched: str | None = None

    @property
    def pending(self) -> str:
        return self._pending

    def feed(self, piece: str) -> StopText:
        """Add newly decoded text; return (text safe to emit, matched stop string or None)."""
        if self.matched is not None:  # already stopped: everything after the stop is dropped
            return StopText("", None)
        if not self.stop:
            return StopText(piece, None)
        buf = self._pending + piece
        best: tuple[int, int, str] | None = None  # (end, -len, stop)
        for s in self.stop:
            i = buf.find(s)
            if i >= 0 and (best is None or (i + len(s), -len(s)) < best[:2]):
                best = (i + len(s), -len(s), s)
        if best is not None:
            end, neg_len, s = best
            self._pending = ""
            self.matched = s
            return StopText(buf[:end + neg_len], s)
        hold = self._held_suffix_len(buf)
        self._pending = buf[len(buf) - hold:] if hold else ""
        return StopText(buf[:len(buf) - hold], None)

    def flush(self) -> str:
        """The request ended for another reason: release the held-back text (no stop can complete now)."""
        text, self._pending = self._pending, ""
        return "" if self.matched is not None else text

    def _held_suffix_len(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


class TextUpdate(NamedTuple):
    """What a request's text side makes of its new tokens (see engine/text.py's RequestText.feed)."""

    text: str  # safe to emit now
    kept: int  # how many of the tokens the request keeps (fewer when a stop string matched midway)
    matched_stop: str | None  # the stop string that ended the request, or None


class StopChecker:
    """The token-level stop conditions of one request: EOS, stop token ids, max_new_tokens.

    NOTE: stop strings need text, so they are the text side's (engine/text.py's RequestText, fed
    where the text is made); this checker never sees text."""

    def __init__(self, stop_token_ids: Iterable[int], eos_ids: Iterable[int],
                 ignore_eos: bool, max_new_tokens: int, min_new_tokens: int = 0) -> None:
        if max_new_tokens < 0 or min_new_tokens < 0 or min_new_tokens > max_new_tokens:
            raise ValueError(f"need 0 <= min_new_tokens <= max_new_tokens, "
                             f"got {min_new_tokens} and {max_new_tokens}")
        self.stop_token_ids = set(stop_token_ids)
        self.eos_ids = set(eos_ids)
        self.ignore_eos = ignore_eos
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.matched_stop: int | None = None  # the token that stopped the request, for RequestOutput

    def check_token(self, token_id: int, num_output_tokens: int) -> str | None:
        """After appending token_id (num_output_tokens now includes it): "stop", "length" or None.

        EOS (unless ignore_eos) and stop token ids count only once min_new_tokens tokens came before.
        """
        if num_output_tokens > self.min_new_tokens:
            if token_id in self.stop_token_ids or (not self.ignore_eos and token_id in self.eos_ids):
                self.matched_stop = token_id
                return "stop"
        if num_output_tokens >= self.max_new_tokens:
            return "length"
        return None
