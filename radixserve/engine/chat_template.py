"""Chat templating: messages -> prompt token ids through the tokenizer's own chat template.

A tokenizer concern, not the engine's: the in-process Engine, the split server's EngineClient and
the router's Frontend all call this one function on their tokenizer, so a chat prompt is the same
tokens wherever it is built (the router's cache-aware routing depends on it).
"""
from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool", "developer")


def apply_chat_template(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
                        template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, with the generation prompt;
    `tools`: tool definitions, for a template that renders them itself; `template_kwargs`: extra
    variables for the template (Qwen3's `enable_thinking`, ...). ValueError on bad messages."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] must have a role in {ROLES}")
        if not isinstance(m.get("content", ""), (str, list)) and m.get("content") is not None:
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; use generate() with a prompt")
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise ValueError("chat_template_kwargs must be a dict of template variables")
    reserved = sorted(set(template_kwargs or {}) & {"tokenize", "add_generation_prompt", "tools", "conversation"})
    if reserved:
        raise ValueError(f"chat_template_kwargs cannot set {reserved}: radixserve sets them itself")
    extra = dict(template_kwargs or {}) | ({} if tools is None else {"tools": tools})
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **extra)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)
