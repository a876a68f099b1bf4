"""The router's tokenizer: the replicas' own, so that the router tokenises once and exactly as
they would (the router checks this against each replica with a probe chat)."""
from __future__ import annotations

import os

from transformers import PreTrainedTokenizerBase

from radixserve.engine.chat_template import ChatTemplating


def load_router_tokenizer(model: str | None, tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer the engine would load for `model` (same resolution, no weights)."""
    from radixserve.models.loader import embedded_model_path
    from radixserve.models.tokenizer import load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if model is None:
        return load_tokenizer(embedded_model_path())
    if model.startswith("dummy:"):
        spec = model.removeprefix("dummy:")
        has_own = os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, f))
                                              for f in ("tokenizer.json", "tokenizer.model"))
        return load_tokenizer(spec if has_own else embedded_model_path())
    return load_tokenizer(model)


class Frontend(ChatTemplating):  # NOTE: the engines' own templating: the router's prompts are theirs to the token
    """A ChatTokenizer (radixserve/engine/interface.py): what the server's prompt builders
    (radixserve.server.openai.params, .tools, .conversation) need from an engine: the tokenizer and the
    chat template, and whether the template renders tools. It serves nothing."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        from radixserve.server.openai.tools import template_renders_tools

        self.tokenizer = tokenizer
        self.tools_native = template_renders_tools(tokenizer)  # as the server probes it

