"""Pydantic models of the Ollama request bodies (/api/chat, /api/generate, /api/show).

Strict like the OpenAI bodies (a string is not a number, NaN refused), unknown top-level fields
refused with a 400 naming them. Which fields are honoured, accepted and ignored, or refused is
decided in `options.py` (the `options` object) and `routes.py` (the rest); README's "Ollama API"
section lists the decisions.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ToolCallFunction(_Strict):
    name: str
    arguments: dict[str, Any]
    index: int | None = None


class ToolCall(_Strict):
    function: ToolCallFunction


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None  # refused: text-only models
    thinking: str | None = None  # an earlier answer's thinking, passed back: refused unless empty
    tool_calls: list[ToolCall] | None = None  # refused unless empty (tools are not offered here)
    tool_name: str | None = None


class Options(_Strict):
    """Ollama's `options` (its Modelfile parameters). Every field is optional; what each one does
    here is in options.py."""

    # honoured: they change what is generated
    num_predict: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # accepted and ignored: how llama.cpp loads and runs the model (memory, threads, placement)
    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    # refused unless neutral: samplers this engine does not have
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    tfs_z: float | None = None
    typical_p: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None


Format = Literal["", "json"] | dict[str, Any]


class GenerateCommon(_Strict):
    model: str = Field(min_length=1)
    stream: bool = True  # Ollama streams unless told not to
    format: Format | None = None
    options: Options | None = None
    keep_alive: float | int | str | None = None  # accepted: the model is never unloaded
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatBody(GenerateCommon):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateBody(GenerateCommon):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None
    # image-generation models only
    width: int | None = None
    height: int | None = None
    steps: int | None = None


class ShowBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # `verbose`, older clients' `name`

    model: str | None = None
    name: str | None = None
