"""Tool calling on /v1/chat/completions: the prompt, the constraint, and reading calls back.

The call format is the Hermes/Qwen one: a call is a JSON object {"name": ..., "arguments": {...}}
inside <tool_call></tool_call> tags; a result goes back to the model inside
<tool_response></tool_response>. When the model's chat template renders tools itself (Qwen2.5,
Qwen3, Hermes), the tools and the history go to the template as they are; when it does not (the
embedded SmolLM2), the tools and this format are described in the system message, and tool calls
and results in the history are written out in the same format.

tool_choice:
  "none"      no tools in the prompt, nothing parsed: a plain answer;
  "auto"      the answer is free text; every well-formed <tool_call> block naming a known tool
              becomes a tool call (the rest stays content);
  "required"  the output is constrained to a JSON array of one or more calls, each naming a tool and
              carrying arguments valid under its `parameters` schema: at most one call when
              parallel_tool_calls is false, else at most one per tool offered (len(tools)), so the
              array (and the answer: the grammar then admits only EOS) ends after the calls a
              task needs instead of repeating a call until max_tokens;
  {"type": "function", "function": {"name": N}}  the output is constrained to N's arguments.
parallel_tool_calls false asks the model for one call and returns at most one.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, NamedTuple

from radixserve.server.errors import APIError
from radixserve.server.openai.protocol import ChatMessage, ToolDef
from radixserve.server.openai.structured import Constraint

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PROBE_NAME = "rs_probe_tool_0f3a"
ONE_CALL = "Call at most one function."


class ToolPlan(NamedTuple):
    mode: str  # none | auto | required | named
    tools: list[ToolDef]
    named: str | None  # the function of a named tool_choice
    parallel: bool
    native: bool  # the chat template renders the tools itself

    @property
    def names(self) -> set[str]:
        return {t.function.name for t in self.tools}

    @property
    def parses(self) -> bool:
        return self.mode != "none" and bool(self.tools)


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template puts `tools` into the prompt (probed once per server)."""
    tool = {"type": "function", "function": {"name": PROBE_NAME, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[tool], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot take tools does not render them
        return False
    return PROBE_NAME in str(text)


def plan(req: Any, native: bool) -> ToolPlan:
    tools = list(req.tools or [])
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    parallel = req.parallel_tool_calls is not False
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t.function.name in seen:
            raise APIError(400, f"Two tools are named '{t.function.name}'; tool names must be unique.",
                           param=f"tools[{i}].function.name")
        seen.add(t.function.name)
    if isinstance(choice, str):
        if choice in ("required",) and not tools:
            raise APIError(400, "tool_choice 'required' needs at least one tool in 'tools'.", param="tool_choice")
        return ToolPlan(choice, tools, None, parallel, native)
    name = choice.function.name
    if name not in seen:
        known = ", ".join(sorted(seen)) or "none"
        raise APIError(400, f"tool_choice names the function '{name}', which is not in 'tools' (known: {known}).",
                       param="tool_choice.function.name")
    return ToolPlan("named", tools, name, parallel, native)


def _params_schema(t: ToolDef) -> dict:
    return t.function.parameters if t.function.parameters is not None else {"type": "object", "properties": {}}


def constraint(p: ToolPlan) -> Constraint | None:
    """The output constraint of a required or named tool_choice (a JSON Schema)."""
    if p.mode == "named":
        tool = next(t for t in p.tools if t.function.name == p.named)
        return Constraint("json_schema", _params_schema(tool), f"tools[{p.tools.index(tool)}].function.parameters")
    if p.mode != "required":
        return None
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _params_schema(t)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in p.tools]
    # NOTE: bounded, always: an unbounded array lets a small model append the same call until max_tokens
    schema: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                              "minItems": 1, "maxItems": max_parallel_calls(p)}
    return Constraint("json_schema", schema, "tools")


def max_parallel_calls(p: ToolPlan) -> int:
    """How many calls a required tool_choice may make in one answer: 1 without parallel calls, else
    one per tool offered."""
    return len(p.tools) if p.parallel else 1


# ---- the prompt -------------------------------------------------------------------------------

def _system_text(p: ToolPlan) -> str:
    order = directive(p)
    return tools_text(p) + ("" if order is None else "\n" + order)


def tools_text(p: ToolPlan) -> str:
    """The tools and the call format, as the system message describes them (whatever the mode)."""
    lines = ["You can call functions to help you answer. They are listed below inside <tools></tools>, "
             "one JSON object per line:", "<tools>"]
    lines += [json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False) for t in p.tools]
    lines += ["</tools>", "",
              f"To call a function, write its name and arguments as one JSON object inside {OPEN}{CLOSE} tags:",
              OPEN, '{"name": "<function name>", "arguments": {<arguments as a JSON object>}}', CLOSE,
              "You may call several functions, one block each." if p.parallel else ONE_CALL,
              "Each result comes back to you inside <tool_response></tool_response> tags."]
    return "\n".join(lines)


def directive(p: ToolPlan) -> str | None:
    """What a required or named tool_choice asks of this answer (None for auto and none)."""
    if p.mode == "required":
        return ('Now call at least one function: reply with a JSON array of calls, like '
                '[{"name": "<function name>", "arguments": {...}}], and nothing else.')
    if p.mode == "named":
        return f"Now call the function {p.named}: reply with its arguments as a JSON object, and nothing else."
    return None


def _args(call: Any, i: int, j: int) -> Any:
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"The arguments of a tool call in the history are not JSON ({exc.msg}).",
                       param=f"messages[{i}].tool_calls[{j}].function.arguments") from None


def template_messages(messages: list[ChatMessage], p: ToolPlan) -> list[dict]:
    """The conversation as the chat template takes it, with tools woven in per the plan."""
    out: list[dict] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None and not (role == "assistant" and m.tool_calls):
            raise APIError(400, "content may be null only on an assistant message with tool_calls.",
                           param=f"messages[{i}].content")
        if role == "tool" and m.tool_call_id is None:
            raise APIError(400, "A message with role 'tool' needs 'tool_call_id'.", param=f"messages[{i}].tool_call_id")
        calls = [{"name": c.function.name, "arguments": _args(c, i, j)} for j, c in enumerate(m.tool_calls or [])]
        if p.native:
            d: dict[str, Any] = {"role": role, "content": m.text()}
            if calls:
                d["tool_calls"] = [{"id": c.id, "type": "function", "function": f}
                                   for c, f in zip(m.tool_calls or [], calls)]
            if role == "tool":
                d["tool_call_id"] = m.tool_call_id
            out.append(d)
        elif role == "tool":
            block = f"<tool_response>\n{m.text()}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            text = m.text()
            for c in calls:
                text += ("\n" if text else "") + f"{OPEN}\n{json.dumps(c, ensure_ascii=False)}\n{CLOSE}"
            out.append({"role": role, "content": text})
    for d in out:
        d.pop("_tool_results", None)
    if p.parses and not p.native:
        tools_text = _system_text(p)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + tools_text}
        else:
            out.insert(0, {"role": "system", "content": tools_text})
    return out


def template_tools(p: ToolPlan) -> list[dict] | None:
    """`tools=` for a template that renders them (None when it does not, or none are offered)."""
    if not (p.native and p.parses):
        return None
    return [t.model_dump(exclude_none=True) for t in p.tools]


# ---- reading calls back -----------------------------------------------------------------------

class Call(NamedTuple):
    id: str
    name: str
    arguments: str  # JSON text

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call(name: str, arguments: Any) -> Call:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return Call(f"call_{uuid.uuid4().hex[:24]}", name, args)


def call_from_json(text: str, names: set[str]) -> Call | None:
    """A call object {"name", "arguments"} naming a known tool, or None."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return new_call(obj["name"], args)
