"""How long an answer may be when the client sets no limit (chat and responses routes).

OpenAI's rule, "up to the rest of the context", lets one request without `max_tokens` generate
thousands of tokens (8192 on the embedded model, at a few tokens a second on a CPU). The default
here, resolved once when the app is built, is in order:
1. `ServerConfig.default_max_tokens` (`--default-max-tokens`), if set;
2. `max_new_tokens` of the model's `generation_config.json`, if the model is a directory that has one;
3. DEFAULT_MAX_TOKENS.
A request gets min(that default, the context left after its prompt), at least 1, so no request
that was valid without a limit is refused because of it. /v1/completions keeps OpenAI's 16.
"""
from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4096


def generation_config_max_new_tokens(model: str | None) -> int | None:
    """`max_new_tokens` from `<model>/generation_config.json`, or None (no directory, file or key)."""
    if not model or not os.path.isdir(model):
        return None
    path = os.path.join(model, "generation_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("max_new_tokens")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if value is not None:
        logger.warning("%s: max_new_tokens %r is not a positive integer; ignored", path, value)
    return None


def resolve_default_max_tokens(configured: int | None, model: str | None) -> int:
    if configured is not None:
        return configured
    return generation_config_max_new_tokens(model) or DEFAULT_MAX_TOKENS


def default_max_new(default: int, prompt_len: int, max_context_len: int) -> int:
    """The answer length of a request that set none: the default, within the context left."""
    return max(1, min(default, max_context_len - prompt_len))
