"""RequestGrammar: one request's grammar state, from compiling to ready (a matcher) to finished."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Callable, Sequence

from radixserve.grammar.spec import GrammarSpec

# NOTE: a jump makes its request an extend row in the next step, and a step with any extend row runs
# without the decode CUDA graph (eagerly: several decode steps' time on a GPU, for the whole batch).
# A jump saves (forced tokens - 1) decode steps of its own request only, so only long forced runs
# (long fixed keys) pay; short ones (`", "` between values) are decoded under the mask like any
# token. The rule looks at the request alone, never at its batch, so outputs do not depend on
# what else runs.
JUMP_FORWARD_MIN_TOKENS = 6


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

    def jump_forward(self, encode: Callable[[str], Sequence[int]], limit: int,
                     min_tokens: int = JUMP_FORWARD_MIN_TOKENS) -> list[int]:
        """Tokens of the text the grammar forces next (at most `limit`), already accepted; none when
        the forced text is shorter than `min_tokens` tokens (then it is decoded under the mask).

        The forced text is tokenised on its own and fed token by token; if the tokenizer's split is
        not accepted somewhere (e.g. it merges across the forced text's end), the jump stops there.
        Tokens already sampled are never rewritten: they have been streamed.
        """
        if limit <= 0 or limit < min_tokens or self.finished:
            return []
        text = self.matcher.find_jump_forward_string()
        if not text:
            return []
        forced = encode(text)
        if len(forced) < min_tokens:
            return []
        out: list[int] = []
        for tok in forced[:limit]:
            if not self.matcher.accept_token(tok):
                break
            out.append(tok)
        self.accepted += len(out)
        return out


def accept_batch(grammars: Sequence[RequestGrammar], tokens: Sequence[int], batch_matcher) -> list[bool]:
    """Advance each grammar by its sampled token in one call (xgrammar's BatchGrammarMatcher, in C++,
    instead of one Python call per row); ok[i] is False where grammars[i] does not admit tokens[i]."""
    if not grammars:
        return []
    ok = batch_matcher.batch_accept_token([g.matcher for g in grammars], list(tokens))
    for g, accepted in zip(grammars, ok):
        g.accepted += bool(accepted)
    return [bool(a) for a in ok]
