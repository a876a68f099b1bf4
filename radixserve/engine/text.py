"""The text side of one request: incremental detokenisation and stop strings.

Token-level stops (EOS, stop token ids, max_new_tokens, a finished grammar) are decided by the
scheduler's ResultProcessor (sampling/stop.py's StopChecker); everything that needs text is here,
in `RequestText.feed`, the one place that decides a stop string matched. It runs wherever the text
is made: inside the in-process Engine's result handling (scheduler/results.py), or in the HTTP
front end of the split server, off the scheduler's process (engine/client.py, which then tells the
engine process to stop the request).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from radixserve.engine.detokenizer import IncrementalDetokenizer
from radixserve.sampling.stop import StopStringBuffer, TextUpdate
from radixserve.scheduler.request import Request

PROMPT_TAIL_TOKENS = 8  # prompt tokens given to the detokenizer as left context


class RequestText:
    """Feed a request's output tokens in order; get text safe to emit and stop-string matches."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool,
                 stop: Sequence[str] | None) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, list(prompt_ids[-PROMPT_TAIL_TOKENS:]), skip_special_tokens)
        self.strings = StopStringBuffer(stop or ())

    def feed(self, tokens: Sequence[int], reason: str | None) -> TextUpdate:
        """The next output tokens, and the token-level finish reason after the last of them (None
        if it goes on) -> the text they complete and how many of them the request keeps.

        Tokens are taken one at a time: when a stop string matches, the request ends at the token
        that completed it (`kept` counts up to it, `matched_stop` is the string, the text is cut
        before it) whatever `reason` says. Otherwise, when `reason` is given, the text held back
        (a possible start of a stop string) is released: nothing can complete it now."""
        text = ""
        for kept, token in enumerate(tokens, start=1):
            piece, matched = self.strings.feed(self.detok.add([token]))
            text += piece
            if matched is not None:
                return TextUpdate(text, kept, matched)
        if reason is not None:
            piece, _ = self.strings.feed(self.detok.flush())
            text += piece + self.strings.flush()
        return TextUpdate(text, len(tokens), None)


    def close(self) -> str:
        """The request ended without a token-level reason (an abort): text not yet returned (none:
        what `feed` held back stays out, as it may be half a character or a stop string's start)."""
        return ""


class FinalText:
    """The text side of a request whose caller reads its text only once it finished, and that has
    no stop strings (Engine.generate, agenerate): the tokens are decoded once, at the end, instead
    of twice per token on the scheduler's thread. The text is RequestText's: the detokenizer's
    pieces concatenate to one decode of all the tokens (tests/engine/test_detokenizer.py)."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special_tokens: bool) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, list(prompt_ids[-PROMPT_TAIL_TOKENS:]), skip_special_tokens)
        self._held: list[int] = []

    def feed(self, tokens: Sequence[int], reason: str | None) -> TextUpdate:
        """Keep `tokens`; once `reason` is given, return the text of all of them."""
        self._held.extend(tokens)
        if reason is None:
            return TextUpdate("", len(tokens), None)
        text = self.detok.add(self._held) + self.detok.flush()
        self._held = []
        return TextUpdate(text, len(tokens), None)

    def close(self) -> str:
        """An abort: the text RequestText would have returned for the tokens so far (token by token,
        without the held-back tail), so an aborted request's text is the same either way."""
        text = "".join(self.detok.add([t]) for t in self._held)
        self._held = []
        return text


def text_factory(tokenizer: Any) -> Callable[[Request], RequestText | FinalText]:
    """For the scheduler's ResultProcessor: request -> its text side (FinalText when nobody reads
    its text before it finished and no stop string needs it token by token)."""

    def make(req: Request) -> RequestText | FinalText:
        p = req.params
        if req.text_when_done and not p.stop:
            return FinalText(tokenizer, req.prompt_ids, p.skip_special_tokens)
        return RequestText(tokenizer, req.prompt_ids, p.skip_special_tokens, p.stop)
    return make
