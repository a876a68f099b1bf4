"""FieldError: bad input, as an object that says which field it is about.

NOTE: the field is the name inside radixserve (a SamplingParams field, or `input_ids` for the
prompt); a caller that speaks another language (the HTTP layer: `max_tokens`, `prompt`, ...) maps
it to its own parameter name. Nothing ever parses the message to find the field. Imports nothing
of radixserve, so every layer may raise it.
"""
from __future__ import annotations

PROMPT_FIELD = "input_ids"  # the field of errors about the prompt itself


class FieldError(ValueError):
    """A value the caller gave cannot be served; `field` names it, the message says what to do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
