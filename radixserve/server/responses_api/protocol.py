"""Request body of POST /v1/responses (the OpenAI Responses API: text, structured output and
function calling).

`input` items and `tools` are validated one by one in responses_api/input_items.py, so that an error names
the item (`input[2].call_id`, `tools[0].type`) rather than the whole union."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from radixserve.server.openai.protocol import StreamOptions, _IgnoredFields, _Strict


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    """An earlier answer sent back as input (clients that keep the conversation themselves)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


ContentPart = Annotated[InputText | OutputText, Field(discriminator="type")]


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    # present on output items sent back as input; carried no meaning for generation
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Strict):
    """A call the model made, sent back as input (alone or as part of a returned output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # a JSON object, as a string
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Strict):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class FunctionTool(_Strict):
    """A function tool, flat as the Responses API spells it (chat nests it under `function`)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None  # arguments always follow `parameters` here (constrained decoding)


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJSONObject(_Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)

    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")]


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Any = None  # refused unless empty (field_policy.REFUSED)


class ResponsesRequest(_IgnoredFields):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    model: str | None = None
    input: str | list[dict[str, Any]]  # messages and function_call / function_call_output items
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool | None = None  # honoured: False = not kept for previous_response_id or GET
    text: TextConfig | None = None
    tools: list[Any] | None = None  # FunctionTool each; other types are refused by name
    tool_choice: Any = None  # "none" | "auto" | "required" | ToolChoiceFunction
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # refused unless empty or harmless (field_policy.REFUSED)
    reasoning: Any = None
    background: Any = None
    conversation: Any = None
    prompt: Any = None
    context_management: Any = None
    moderation: Any = None
    # extensions beyond the OpenAI API (as on the chat route)
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    cache_salt: str | None = None
