"""What a /v1/responses request gives the chat machinery: its input items as chat messages, and
its function tools and tool_choice as the tool plan of /v1/chat/completions (tools.py).

Input items: messages (`type` "message" or none), `function_call` (a call the model made, e.g.
sent back from an earlier response's output) and `function_call_output` (the call's result). A
run of function calls becomes one assistant message with `tool_calls` (joined to the assistant
message just before it); a result becomes a `tool` message. A result must answer a call that
comes before it, in this input or in the conversation of `previous_response_id`.

Tools are flat on this API (`{"type": "function", "name", "parameters", ...}`) and nested on chat
(`{"type": "function", "function": {...}}`); the plan is built from the nested form, and the
field names in its errors are put back into the flat form the client sent.
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from radixserve.server.openai import tools
from radixserve.server.errors import APIError, validation_error
from radixserve.server.openai.protocol import FunctionDef, NamedFunction, NamedToolChoice, ToolDef
from radixserve.server.responses_api.protocol import (
    FunctionCallItem, FunctionCallOutputItem, FunctionTool, InputMessage, ResponsesRequest, ToolChoiceFunction)
from radixserve.server.openai.structured import Constraint

M = TypeVar("M", bound=BaseModel)
CHOICES = ("none", "auto", "required")


class _ToolFields(NamedTuple):
    """The three request fields tools.plan reads, in chat's nested form."""

    tools: list[ToolDef]
    tool_choice: str | NamedToolChoice | None
    parallel_tool_calls: bool | None


def _validate(model: type[M], value: Any, where: str) -> M:
    """`value` as `model`, or a 400 naming the field inside `where` (e.g. input[2].call_id)."""
    if not isinstance(value, dict):
        raise APIError(400, f"'{where}' must be an object, not {type(value).__name__}.", param=where)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = validation_error(exc)
        param = where if err.param is None else f"{where}.{err.param}"
        raise APIError(400, f"In '{where}': {err.message}", param=param) from None


def flat(param: str | None) -> str | None:
    """A chat field name (tools[0].function.parameters) as this API spells it (tools[0].parameters)."""
    return None if param is None else param.replace(".function.", ".")


# ---- tools ------------------------------------------------------------------------------------

def tool_plan(req: ResponsesRequest, native: bool) -> tools.ToolPlan:
    defs = [_tool(t, f"tools[{i}]") for i, t in enumerate(req.tools or [])]
    fields = _ToolFields(defs, _tool_choice(req.tool_choice), req.parallel_tool_calls)
    try:
        return tools.plan(fields, native)
    except APIError as exc:
        raise APIError(exc.status, exc.message, flat(exc.param), exc.code) from None


def _tool(value: Any, where: str) -> ToolDef:
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(value, dict) and kind != "function":
        raise APIError(400, f"Tools of type {kind!r} are not supported by this server: it runs no built-in tools "
                       "(web search, file search, code interpreter, MCP, ...). Offer functions "
                       "({'type': 'function', 'name': ..., 'parameters': ...}) that your code executes.",
                       param=f"{where}.type", code="unsupported_parameter")
    if isinstance(value, dict) and "function" in value:
        raise APIError(400, f"'{where}' has the chat completions shape; on /v1/responses a function tool is flat: "
                       "{'type': 'function', 'name': ..., 'description': ..., 'parameters': {...}}.",
                       param=f"{where}.function")
    t = _validate(FunctionTool, value, where)
    return ToolDef(type="function", function=FunctionDef(name=t.name, description=t.description,
                                                         parameters=t.parameters, strict=t.strict))


def _tool_choice(value: Any) -> str | NamedToolChoice | None:
    if value is None or value in CHOICES:
        return value
    if not isinstance(value, dict):
        raise APIError(400, f"Invalid value for 'tool_choice': {value!r}; use 'none', 'auto', 'required' or "
                       "{'type': 'function', 'name': ...}.", param="tool_choice")
    if value.get("type") != "function":
        raise APIError(400, f"tool_choice of type {value.get('type')!r} is not supported: this server has function "
                       "tools only; use {'type': 'function', 'name': ...}, 'auto', 'required' or 'none'.",
                       param="tool_choice.type", code="unsupported_parameter")
    c = _validate(ToolChoiceFunction, value, "tool_choice")
    return NamedToolChoice(type="function", function=NamedFunction(name=c.name))


def tool_constraint(p: tools.ToolPlan) -> Constraint | None:
    c = tools.constraint(p)
    return None if c is None else c._replace(param=flat(c.param))


def tool_dicts(req: ResponsesRequest) -> list[dict]:
    """The request's tools as the response object echoes them (already validated)."""
    return [FunctionTool.model_validate(t).model_dump() for t in req.tools or []]


# ---- input items ------------------------------------------------------------------------------

def messages(req: ResponsesRequest, history: Sequence[dict]) -> list[dict]:
    """The request's input as chat messages (role, content, tool_calls, tool_call_id)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    if not req.input and req.previous_response_id is None:
        raise APIError(400, "input must contain at least one message.", param="input")
    known = {c["id"] for m in history for c in m.get("tool_calls") or []}
    out: list[dict] = []
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message" or kind is None:
            m = _validate(InputMessage, item, where)
            out.append({"role": "system" if m.role == "developer" else m.role, "content": m.text()})
        elif kind == "function_call":
            c = _validate(FunctionCallItem, item, where)
            _check_arguments(c.arguments, f"{where}.arguments")
            call = {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            if out and out[-1]["role"] == "assistant":  # NOTE: out[-1] came from the item just before this one
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            known.add(c.call_id)
        elif kind == "function_call_output":
            o = _validate(FunctionCallOutputItem, item, where)
            if o.call_id not in known:
                raise APIError(400, f"No function call with call_id {o.call_id!r} comes before this output, in "
                               "input or in the previous response; send the function_call item (or "
                               "previous_response_id) it answers.", param=f"{where}.call_id")
            out.append({"role": "tool", "tool_call_id": o.call_id, "content": o.text()})
        else:
            raise APIError(400, f"Input items of type {kind!r} are not supported by this server; send messages, "
                           "function_call and function_call_output items.", param=f"{where}.type",
                           code="unsupported_parameter")
    return out


def _check_arguments(text: str, where: str) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"The arguments of a function call must be a JSON object ({exc.msg}).",
                       param=where) from None
    if not isinstance(value, dict):
        raise APIError(400, "The arguments of a function call must be a JSON object.", param=where)
