"""The text side of one request: incremental detokenisation and stop strings.

Token-level stops (EOS, stop token ids, max_new_tokens, a finished grammar) belong to the
scheduler; everything that needs text is here, so it can run wherever the text is wanted: inside
the in-process Engine's result handling, or in the HTTP front end of the split server, off the
scheduler's process (see radixserve/engine/client.py for how a stop string found there stops
generation).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from radixserve.engine.detokenizer import IncrementalDetokenizer
from radixserve.sampling.stop import StopStringBuffer

PROMPT_TAIL_TOKENS = 8  # prompt tokens given to the detokenizer as left context


class TextPiece(NamedTuple):
    text: str  # safe to emit now
    matched_stop: str | None  # the stop string that ended the request, or None


class RequestText:
    """Feed a request's output tokens one at a time; get text safe to emit and stop-string matches."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool,
                 stop: Sequence[str] | None) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, list(prompt_ids[-PROMPT_TAIL_TOKENS:]), skip_special_tokens)
        self.strings = StopStringBuffer(stop or ())

    def add(self, token: int) -> TextPiece:
        """One more output token: the text it completes (stop strings cut off, held-back text kept)."""
        text, matched = self.strings.feed(self.detok.add([token]))
        return TextPiece(text, matched)

    def finish(self) -> str:
        """The request ended for a token-level reason: the text still held back."""
        text, _ = self.strings.feed(self.detok.flush())
        return text + self.strings.flush()


def text_factory(tokenizer: Any) -> Callable[[Any], RequestText]:
    """For the scheduler's ResultProcessor: request -> its RequestText."""

    def make(req) -> RequestText:
        p = req.params
        return RequestText(tokenizer, req.prompt_ids, p.skip_special_tokens, p.stop)
    return make
