"""Tools on /api/chat: Ollama's shapes in and out of the OpenAI route's tool machinery.

In: Ollama's messages (tool_calls with `arguments` as an object, results as role "tool" with
`tool_name` and no call ids) become the OpenAI route's ChatMessages, and its tools ToolDefs; the
prompt is then rendered by `openai/tools.py` exactly as /v1/chat/completions renders it. Ollama has
no tool_choice: offering tools is "auto" (the model may answer or call).
Out: the OpenAI route's ToolReader reads calls out of the generated text; each call becomes
Ollama's `{"function": {"name", "arguments": {...}}}` (arguments an object, not a string).
"""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from radixserve.server.errors import APIError, validation_error
from radixserve.server.ollama.protocol import Message
from radixserve.server.openai import tools
from radixserve.server.openai.protocol import ChatMessage, ToolCall, ToolCallFunction, ToolDef
from radixserve.server.openai.tool_stream import Piece, ToolReader


def tool_defs(raw: list[dict[str, Any]]) -> list[ToolDef]:
    out = []
    for i, t in enumerate(raw):
        try:
            out.append(ToolDef.model_validate({"type": "function", **t}))
        except ValidationError as exc:
            err = validation_error(exc)
            raise APIError(400, f"tools[{i}]: {err.message}", param=f"tools[{i}]") from None
    return out


def plan(raw_tools: list[dict[str, Any]] | None, native: bool) -> tools.ToolPlan:
    req = SimpleNamespace(tools=tool_defs(raw_tools or []), tool_choice=None, parallel_tool_calls=None)
    return tools.plan(req, native)


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """Ollama's conversation as the OpenAI route's messages. A tool result answers the earliest
    unanswered call of its `tool_name` (else the earliest unanswered call); ids are made up here,
    since Ollama's history carries none."""
    out: list[ChatMessage] = []
    pending: list[tuple[str, str]] = []  # (call id, function name), oldest first
    for i, m in enumerate(messages):
        if m.images:
            raise APIError(400, f"'messages[{i}].images' is not supported by this server: it serves a "
                           "text-only model", param=f"messages[{i}].images")
        calls = []
        for j, c in enumerate(m.tool_calls or []):
            call_id = f"call_{i}_{j}"
            calls.append(ToolCall(id=call_id, function=ToolCallFunction(
                name=c.function.name, arguments=json.dumps(c.function.arguments, ensure_ascii=False))))
            pending.append((call_id, c.function.name))
        call_id = None
        if m.role == "tool":
            match = next((p for p in pending if p[1] == m.tool_name), pending[0] if pending else None)
            if match is None:
                raise APIError(400, f"messages[{i}] is a tool result, but no earlier assistant message has a "
                               "tool call it could answer.", param=f"messages[{i}]")
            pending.remove(match)
            call_id = match[0]
        # NOTE: `thinking` passed back from an earlier answer is dropped, as Ollama does for a
        # template without thinking.
        out.append(ChatMessage(role=m.role, content=m.content if m.content or not calls else None,
                               tool_calls=calls or None, tool_call_id=call_id))
    return out


def ollama_calls(pieces: list[Piece]) -> list[dict]:
    """The calls among `pieces` (auto mode: each call whole in one piece), in Ollama's shape."""
    return [{"function": {"name": p.name, "arguments": json.loads(p.arguments or "{}")}}
            for p in pieces if p.index is not None]


def reader_of(p: tools.ToolPlan) -> ToolReader | None:
    return ToolReader(p) if p.parses else None
