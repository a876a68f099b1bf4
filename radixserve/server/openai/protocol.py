"""Pydantic models of the request bodies the server accepts.

Strict types (a string is not a number, 2.0 is not an integer), unknown fields rejected, NaN and
infinity rejected. Range checks live in SamplingParams so that HTTP and Python users get the same
messages. OpenAI fields the server accepts but ignores, or refuses with a reason, are declared
here and decided in `openai/field_policy.py`. Responses are plain dicts built in `openai/bodies.py` and
serialised with orjson.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, ValidatorFunctionWrapHandler, create_model,
                      field_validator)

from radixserve.sampling_params import SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# Fields whose default is not None (those defaulting to None take null by their type).
DEFAULTED_FIELDS = ("n", "stream", "logprobs", "echo", "include_usage", "include_stop_str_in_output",
                    "continue_final_message")


class _NullMeansDefault(_Strict):
    """A request object where an explicit `null` means "the default", as OpenAI's API treats it
    (SDKs and frameworks send `"n": null`, `"stream": null`, ... for what they leave unset). Fields
    that default to None accept null by their type; the others (DEFAULTED_FIELDS, kept complete by
    tests/server/test_openai_lenient.py) map null to their default here."""

    # NOTE: only on those fields: a function validator makes pydantic validate its field as Python
    # data, and JSON's string keys ("logit_bias": {"504": ...}) would no longer read as integers.
    @field_validator(*DEFAULTED_FIELDS, mode="wrap", check_fields=False)
    @classmethod
    def _null_is_default(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return handler(value)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ToolCallFunction(_Strict):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only on an assistant message with tool_calls
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: which call this is the result of
    # what SDKs send back when an earlier answer is passed in as it was returned
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None  # arguments always follow `parameters` here (constrained decoding)


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(_Strict):
    type: Literal["json_object"]
    value: dict[str, Any] | str | None = None  # TGI's spelling: a JSON Schema (huggingface_hub sends it)


class ResponseFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class ResponseFormatTGIJSON(_Strict):
    """TGI's {"type": "json", "value": schema}."""

    type: Literal["json"]
    value: dict[str, Any] | str


class ResponseFormatTGIRegex(_Strict):
    """TGI's {"type": "regex", "value": pattern}."""

    type: Literal["regex"]
    value: str


ResponseFormat = Annotated[ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema
                           | ResponseFormatTGIJSON | ResponseFormatTGIRegex, Field(discriminator="type")]


class StructuredOutputs(_Strict):
    """vLLM's spelling of structured output: exactly one of these."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF
    json_object: bool | None = None
    structural_tag: dict[str, Any] | str | None = None
    backend: str | None = None  # accepted and ignored: one backend (xgrammar) serves every request


class _StructuredFields(_Strict):
    """Structured output on /v1/chat/completions and /v1/completions (mapped in structured.py)."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # extensions as other servers spell them (SGLang: regex / ebnf / json_schema; older vLLM: guided_*)
    regex: str | None = None
    ebnf: str | None = None
    json_schema: dict[str, Any] | str | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # accepted and ignored, as `structured_outputs.backend`


class StreamOptions(_NullMeansDefault):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted and ignored: nothing here is obfuscated


class _IgnoredFields(_NullMeansDefault):
    """OpenAI fields with no meaning for a self-hosted server: accepted and ignored (the list and
    the reasons are in `field_policy.IGNORED`)."""

    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None


class _ChatFields(_IgnoredFields):
    """Chat/completions fields whose meaning the server cannot honour, typed loosely here:
    `field_policy.refuse` answers 400 naming them unless their value asks for nothing."""

    prediction: Any = None
    audio: Any = None
    modalities: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None
    functions: Any = None
    function_call: Any = None
    # vLLM / SGLang extensions with no honest counterpart here (refused unless they ask for nothing)
    use_beam_search: Any = None
    length_penalty: Any = None
    prompt_logprobs: Any = None
    allowed_token_ids: Any = None
    bad_words: Any = None
    truncate_prompt_tokens: Any = None
    chat_template: Any = None
    documents: Any = None


class _OpenAIRequest(_ChatFields, _StructuredFields):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = None  # None or the served model's id
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extensions beyond the OpenAI API
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool = False  # vLLM: the matched stop string stays at the end of the text
    cache_salt: str | None = None  # namespaces the prefix cache: tenants never share cached prefixes


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vLLM / SGLang chat-template extensions
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables (Qwen3's enable_thinking)
    add_generation_prompt: bool | None = None  # default true; false with continue_final_message
    continue_final_message: bool = False  # the last (assistant) message is continued, not closed


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


# Fields of SamplingParams that /generate sets from its own top-level fields, not sampling_params.
_NATIVE_EXCLUDED = ("logprobs", "prompt_logprobs_start", "prompt_top_logprobs")


def _native_sampling_model() -> type[BaseModel]:
    """The user-settable fields of radixserve.SamplingParams, for POST /generate, derived from the
    dataclass itself (one source for names, types and defaults; ranges are checked by it)."""
    hints = typing.get_type_hints(SamplingParams)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(SamplingParams):
        if f.name in _NATIVE_EXCLUDED:
            continue
        if f.default is dataclasses.MISSING:
            raise TypeError(f"SamplingParams.{f.name} needs a plain default to be a /generate field")
        fields[f.name] = (hints[f.name], f.default)
    return create_model("NativeSamplingParams", __base__=_Strict, **fields)


NativeSamplingParams = _native_sampling_model()


class GenerateRequest(_Strict):
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: NativeSamplingParams | None = None  # type: ignore[valid-type]
    return_logprob: bool = False
    logprob_start_len: int = -1  # >= 0: also return prompt-token logprobs from this position
    top_logprobs_num: int = 0
    stream: bool = False
    cache_salt: str | None = None


class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]
