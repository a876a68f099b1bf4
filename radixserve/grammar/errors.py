"""GrammarError: bad structured-output input, with the SamplingParams field it is about."""
from __future__ import annotations

from radixserve.errors import FieldError


class GrammarError(FieldError):
    """The grammar of a request cannot be used (invalid, unsupported, too slow to compile).
    `field` is the SamplingParams field (json_schema, regex, ebnf, choice, structural_tag), so an
    HTTP layer can name its own parameter; the message starts with it too."""

