"""Errors the engine raises to its callers. Bad input is a FieldError (radixserve.errors) naming
its field; the two below carry the numbers an HTTP layer words its own message from."""
from __future__ import annotations

from radixserve.errors import FieldError


class QueueFullError(RuntimeError):
    """Too many requests are queued; retry later (HTTP 429)."""


class EngineDeadError(RuntimeError):
    """The engine's scheduler loop has stopped; create a new Engine."""


class VocabularyError(FieldError):
    """A token id of `field` (the prompt's input_ids, or logit_bias) is outside [0, vocab_size)."""

    def __init__(self, field: str, token_id: object, vocab_size: int, message: str) -> None:
        super().__init__(field, message)
        self.token_id = token_id
        self.vocab_size = vocab_size


class ContextLengthError(FieldError):
    """prompt + max_new_tokens is over the model's context (raised only where asked to refuse)."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, max_context_len: int) -> None:
        total = prompt_tokens + max_new_tokens
        super().__init__("max_new_tokens", f"the prompt has {prompt_tokens} tokens and max_new_tokens is "
                                           f"{max_new_tokens}: {total} tokens, over the model's context of "
                                           f"{max_context_len}; shorten the prompt or lower max_new_tokens")
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.max_context_len = max_context_len
