"""RequestGrammar: one request's grammar state, from compiling to ready (a matcher) to finished."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

from radixserve.grammar.spec import GrammarSpec


class RequestGrammar:
    """The scheduler asks only `ready` (admit the request) and `finished`; the result processor
    drives the matcher.

    NOTE: once ready, the matcher has accepted exactly the request's output tokens, in order (each
    sampled token after it is appended, each jump-forward token before it is appended); the next
    token's bitmask is only correct under that invariant. `accepted` counts them.
    """

    def __init__(self, spec: GrammarSpec, future: Future, deadline: float = float("inf")) -> None:
        self.spec = spec
        self.future = future  # xgrammar CompiledGrammar, from the engine's compile threads
        self.deadline = deadline  # time.monotonic() by which it must have compiled (the engine enforces it)
        self.matcher = None  # xgrammar.GrammarMatcher, made when the compiled grammar is first needed
        self.accepted = 0

    @property
    def ready(self) -> bool:
        """Compiled successfully (a failed compile stays not ready; its caller aborts the request)."""
        if self.matcher is None and self.future.done() and not self.future.cancelled() \
                and self.future.exception() is None:
            import xgrammar as xgr

            self.matcher = xgr.GrammarMatcher(self.future.result())
        return self.matcher is not None

    @property
    def finished(self) -> bool:
        """The grammar accepted a stop token: the output is complete."""
        return self.matcher is not None and self.matcher.is_terminated()

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not admit it."""
        ok = self.matcher.accept_token(token_id)
        self.accepted += ok
        return ok

    def jump_forward(self, encode: Callable[[str], list[int]], limit: int) -> list[int]:
        """Tokens of the text the grammar forces next (at most `limit`), already accepted.

        The forced text is tokenised on its own and fed token by token; if the tokenizer's split is
        not accepted somewhere (e.g. it merges across the forced text's end), the jump stops there.
        Tokens already sampled are never rewritten: they have been streamed.
        """
        if limit <= 0 or self.finished:
            return []
        text = self.matcher.find_jump_forward_string()
        if not text:
            return []
        out: list[int] = []
        for tok in encode(text)[:limit]:
            if not self.matcher.accept_token(tok):
                break
            out.append(tok)
        self.accepted += len(out)
        return out
