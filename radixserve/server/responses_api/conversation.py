"""Prompts of /v1/responses turns as token ids: a first turn from its messages, a follow-up
(`previous_response_id`) from the previous turn's exact tokens plus the new messages.

Messages here are chat-completions message dicts (role, content, and for function calling
`tool_calls` on an assistant message and `tool_call_id` on a `tool` one); they go through the same
tool weaving as /v1/chat/completions (tools.template_messages) before the chat template.

A turn's HEAD is what precedes its conversation: the instructions (as the system message) and the
tools it offers. A follow-up with the same head appends to the stored tokens only what the chat
template puts between the end of the previous assistant message and the new generation prompt
(the end-of-turn marker, the new messages, the assistant header). That text is found by rendering
the whole conversation with a sentinel in place of the previous answer and taking what follows
the sentinel; the end-of-turn token the model already emitted is not added twice. So the
follow-up's prompt starts with every token of the previous turn, and the radix tree serves all of
them from cache.

NOTE: the head must not depend on the turn's tool_choice or parallel_tool_calls, or a turn that
must call a tool would not be continued by the turn that sends the tool's result. So where the
tools are described in the system message (a template without a tools section), what a required
or named tool_choice, or parallel_tool_calls false, asks of the answer is appended to the turn's
last message instead.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

import orjson

from radixserve.engine.interface import ChatTokenizer, EngineHandle
from radixserve.server.openai import params, tools
from radixserve.server.errors import APIError, user_errors
from radixserve.server.openai.protocol import ChatMessage
from radixserve.server.responses_api.store import StoredResponse

logger = logging.getLogger(__name__)

SENTINEL = "\u2063rs-previous-answer\u2063"  # invisible separators: text no template rewrites


class TurnPrompt(NamedTuple):
    ids: list[int]  # the prompt of this turn
    messages: list[dict]  # the conversation before this turn's answer, without the instructions
    continued: bool  # True when `ids` starts with the previous turn's exact tokens
    head: str  # the key of the turn's head (instructions and offered tools)


class Rendering(NamedTuple):
    """How a turn renders its conversation: the system message and the tools on offer."""

    instructions: str | None
    plan: tools.ToolPlan

    def head(self) -> str:
        """Equal for two turns exactly when their prompts start the same way before the conversation."""
        dicts, tool_defs = self.render([], with_directive=False)
        return orjson.dumps([dicts, tool_defs]).decode()

    def render(self, messages: Sequence[dict], with_directive: bool = True) -> tuple[list[dict], list[dict] | None]:
        """(the template's messages, its `tools=` or None) for the conversation `messages`."""
        chat = [ChatMessage.model_validate(m) for m in with_instructions(self.instructions, messages)]
        p = self.plan
        order = _turn_order(p)
        dicts = tools.template_messages(chat, p if order is None else p._replace(mode="auto", parallel=True))
        if order is not None and with_directive:
            if dicts and dicts[-1]["role"] == "user":
                dicts[-1] = {**dicts[-1], "content": dicts[-1]["content"] + "\n\n" + order}
            else:
                dicts.append({"role": "user", "content": order})
        return dicts, tools.template_tools(p)


def _turn_order(p: tools.ToolPlan) -> str | None:
    """What this turn's tool_choice and parallel_tool_calls ask of the answer, where the system
    message describes the tools (None when it asks nothing beyond what the description says)."""
    if not p.parses or p.native:
        return None
    lines = ([] if p.parallel else [tools.ONE_CALL]) + [d for d in [tools.directive(p)] if d is not None]
    return "\n".join(lines) or None


def with_instructions(instructions: str | None, messages: Sequence[dict]) -> list[dict]:
    head = [{"role": "system", "content": instructions}] if instructions is not None else []
    return head + list(messages)


def first_turn(engine: ChatTokenizer, r: Rendering, messages: list[dict]) -> TurnPrompt:
    dicts, tool_defs = r.render(messages)
    try:
        ids = params.chat_prompt(engine, dicts, tool_defs)
    except APIError as exc:  # the chat route's names for the fields; here the conversation is `input`
        raise APIError(exc.status, exc.message, "input", exc.code) from exc
    return TurnPrompt(ids, list(messages), False, r.head())


def follow_up(engine: EngineHandle, prev: StoredResponse, r: Rendering, messages: list[dict]) -> TurnPrompt:
    """The next turn after `prev`. New instructions or tools replace the old ones (OpenAI's rule:
    they are not carried over), which changes the conversation's first message: then it is
    re-rendered whole, and only the part before the system message can come from the cache."""
    history = list(prev.messages) + list(messages)
    head = r.head()
    if head != prev.head:
        return first_turn(engine, r, history)
    tail = _tail_after_answer(engine.tokenizer, r, list(prev.messages), messages)
    if tail is None:
        logger.warning("the chat template rewrites assistant messages; follow-ups are re-rendered in full "
                       "(correct, but the previous answer's tokens are not reused from the cache)")
        return first_turn(engine, r, history)
    prev_ids = list(prev.tokens)
    end = engine.tokenizer.decode(prev_ids[-1:], skip_special_tokens=False) if prev_ids else ""
    if end and prev_ids[-1] in engine.eos_ids and tail.startswith(end):
        tail = tail[len(end):]  # the model emitted the end-of-turn token already: do not add it again
    with user_errors("input"):
        ids = prev_ids + list(engine.tokenizer.encode(tail, add_special_tokens=False))
    return TurnPrompt(ids, history, True, head)


def _tail_after_answer(tokenizer: Any, r: Rendering, history: list[dict], new: list[dict]) -> str | None:
    """What the template renders after the last (assistant) message of `history`, when `new`
    messages follow and a generation prompt ends it; None if the answer is not rendered verbatim."""
    if not history or history[-1]["role"] != "assistant":
        raise ValueError("a stored conversation ends with the assistant's answer")
    probe = history[:-1] + [{"role": "assistant", "content": SENTINEL}] + new
    dicts, tool_defs = r.render(probe)
    with user_errors("input"):
        text = tokenizer.apply_chat_template(dicts, tools=tool_defs, tokenize=False, add_generation_prompt=True)
    if text.count(SENTINEL) != 1:
        return None
    return text.split(SENTINEL)[1]
