"""Incremental detokenisation: new text per step, never half a UTF-8 character, O(1) per token.

Two offsets into the token list: text up to `read` has been emitted; decoding restarts at
`prefix` (the start of the previous emitted window), so each step decodes only the last few
tokens with enough left context for the tokenizer to get spaces right. While the decoded tail
ends with U+FFFD (a multi-byte character split over byte tokens, or a special token skipped in
the middle of one) the text is held back and the window grows until the character completes.
"""
from __future__ import annotations

from typing import Any, Sequence

_REPLACEMENT = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5  # tokens of prompt tail worth passing as left context
_TRIM_AT = 256


class IncrementalDetokenizer:
    """Feed output token ids with `add`; the pieces it returns, plus `flush()` at the end, concatenate
    to `tokenizer.decode(all_output_ids, skip_special_tokens=...)`."""

    def __init__(self, tokenizer: Any, prompt_ids_tail: Sequence[int] | None = None,
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # NOTE: with a fast tokenizer that does no clean-up, its Rust decoder gives exactly what
        # tokenizer.decode gives, without transformers' per-call argument handling (about 6x
        # less host time per token, which adds up at hundreds of running requests).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._fast = backend.decode if backend is not None and not getattr(
            tokenizer, "clean_up_tokenization_spaces", False) else None
        self._ids: list[int] = list(prompt_ids_tail or [])[-PROMPT_CONTEXT_TOKENS:]
        self._prefix = 0  # decoding window starts here
        self._read = len(self._ids)  # tokens before this have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: Sequence[int]) -> str:
        """Append output tokens; return only the text they newly complete (may be "")."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full_text = self._decode(self._ids[self._prefix:])
        if full_text.endswith(_REPLACEMENT) or len(full_text) <= len(prefix_text):
            return ""  # incomplete character (or nothing visible yet): wait for more tokens
        # NOTE: `prefix_text` decodes tokens that ended on a complete character, so it is a prefix
        # of `full_text` for byte-level tokenizers; the same holds for SentencePiece word pieces.
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix >= _TRIM_AT:  # forget tokens left of the window (amortised O(1))
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return full_text[len(prefix_text):]

    def flush(self) -> str:
        """The request finished: return text still held back (e.g. trailing U+FFFD of an incomplete
        character, exactly as a full decode renders it)."""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full_text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text):]
