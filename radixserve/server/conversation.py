"""Prompts of /v1/responses turns as token ids: a first turn from its messages, a follow-up
(`previous_response_id`) from the previous turn's exact tokens plus the new messages.

A follow-up appends to the stored tokens only what the chat template puts between the end of
the previous assistant message and the new generation prompt (the end-of-turn marker, the new
messages, the assistant header). That text is found by rendering the whole conversation with a
sentinel in place of the previous answer and taking what follows the sentinel; the end-of-turn
token the model already emitted is not added twice. So the follow-up's prompt starts with every
token of the previous turn, and the radix tree serves all of them from cache.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from radixserve.server.errors import user_errors
from radixserve.server.response_store import StoredResponse

logger = logging.getLogger(__name__)

SENTINEL = "\u2063rs-previous-answer\u2063"  # invisible separators: text no template rewrites


class TurnPrompt(NamedTuple):
    ids: list[int]  # the prompt of this turn
    messages: list[dict]  # the conversation before this turn's answer, without the instructions
    continued: bool  # True when `ids` starts with the previous turn's exact tokens


def with_instructions(instructions: str | None, messages: Sequence[dict]) -> list[dict]:
    head = [{"role": "system", "content": instructions}] if instructions is not None else []
    return head + list(messages)


def first_turn(engine: Any, instructions: str | None, messages: list[dict]) -> TurnPrompt:
    with user_errors("input"):
        ids = list(engine.apply_chat_template(with_instructions(instructions, messages)))
    return TurnPrompt(ids, list(messages), False)


def follow_up(engine: Any, prev: StoredResponse, instructions: str | None, messages: list[dict]) -> TurnPrompt:
    """The next turn after `prev`. New instructions replace the old ones (OpenAI's rule: they are
    not carried over), which changes the conversation's first message: then it is re-rendered
    whole, and only the part before the system message can come from the cache."""
    history = list(prev.messages) + list(messages)
    if instructions != prev.instructions:
        return first_turn(engine, instructions, history)
    tail = _tail_after_answer(engine.tokenizer, with_instructions(instructions, prev.messages), messages)
    if tail is None:
        logger.warning("the chat template rewrites assistant messages; follow-ups are re-rendered in full "
                       "(correct, but the previous answer's tokens are not reused from the cache)")
        return first_turn(engine, instructions, history)
    prev_ids = list(prev.tokens)
    end = engine.tokenizer.decode(prev_ids[-1:], skip_special_tokens=False) if prev_ids else ""
    if end and prev_ids[-1] in engine.eos_ids and tail.startswith(end):
        tail = tail[len(end):]  # the model emitted the end-of-turn token already: do not add it again
    with user_errors("input"):
        ids = prev_ids + list(engine.tokenizer.encode(tail, add_special_tokens=False))
    return TurnPrompt(ids, history, True)


def _tail_after_answer(tokenizer: Any, history: list[dict], new: list[dict]) -> str | None:
    """What the template renders after the last (assistant) message of `history`, when `new`
    messages follow and a generation prompt ends it; None if the answer is not rendered verbatim."""
    if not history or history[-1]["role"] != "assistant":
        raise ValueError("a stored conversation ends with the assistant's answer")
    probe = history[:-1] + [{"role": "assistant", "content": SENTINEL}] + new
    with user_errors("input"):
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if text.count(SENTINEL) != 1:
        return None
    return text.split(SENTINEL)[1]
