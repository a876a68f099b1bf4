"""Chat templating: messages -> prompt token ids through the tokenizer's own chat template.

A tokenizer concern, not the engine's: the in-process Engine, the split server's EngineClient and
the router's Frontend all call this one function on their tokenizer, so a chat prompt is the same
tokens wherever it is built (the router's cache-aware routing depends on it).
"""
from __future__ import annotations

from typing import Any

from radixserve.errors import FieldError

ROLES = ("system", "user", "assistant", "tool", "developer")


def apply_chat_template(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
                        template_kwargs: dict[str, Any] | None = None, *, add_generation_prompt: bool = True,
                        continue_final_message: bool = False) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template; `tools`: tool definitions, for
    a template that renders them itself; `template_kwargs`: extra variables for the template
    (Qwen3's `enable_thinking`, ...). `add_generation_prompt`: end with the assistant's turn
    header; `continue_final_message`: the last message (the assistant's) is left open, to be
    continued (no end-of-turn after it; exclusive with `add_generation_prompt`). ValueError on bad
    messages, FieldError naming the option for a bad option."""
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
        raise FieldError("chat_template_kwargs", "chat_template_kwargs must be a dict of template variables")
    reserved = sorted(set(template_kwargs or {}) & {"tokenize", "add_generation_prompt", "tools", "conversation",
                                                    "continue_final_message", "messages"})
    if reserved:
        raise FieldError("chat_template_kwargs", f"chat_template_kwargs cannot set {reserved}: radixserve sets "
                         "them itself (add_generation_prompt and continue_final_message are options of their own)")
    if continue_final_message:
        if add_generation_prompt:
            raise FieldError("continue_final_message", "continue_final_message and add_generation_prompt cannot "
                             "both be true: a continued message has no new turn after it; set "
                             "add_generation_prompt to false")
        if messages[-1].get("role") != "assistant":
            raise FieldError("continue_final_message", "continue_final_message needs the last message to be the "
                             f"assistant's (it is '{messages[-1].get('role')}')")
    extra = dict(template_kwargs or {}) | ({} if tools is None else {"tools": tools})
    if continue_final_message:
        extra["continue_final_message"] = True  # NOTE: only when asked: older templates' callers never pass it
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, **extra)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


class ChatTemplating:
    """`apply_chat_template` over `self.tokenizer`: the one implementation Engine and EngineClient share."""

    tokenizer: Any

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None, *,
                            template_kwargs: dict[str, Any] | None = None, add_generation_prompt: bool = True,
                            continue_final_message: bool = False) -> list[int]:
        return apply_chat_template(self.tokenizer, messages, tools, template_kwargs,
                                   add_generation_prompt=add_generation_prompt,
                                   continue_final_message=continue_final_message)
