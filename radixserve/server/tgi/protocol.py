"""Pydantic models of TGI's request bodies (`{"inputs": ..., "parameters": {...}, "stream": ...}`).

Strict and closed as our OpenAI bodies are (openai/protocol.py): unknown fields are a 400 naming
them. A TGI body is told from a native /generate body by its `inputs` key (`is_tgi_body`).
"""
from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Grammar(_Strict):
    """TGI's structured output: a JSON Schema ("json"; "json_object" is the same in TGI's chat
    route) or a regular expression ("regex")."""

    type: Literal["json", "json_object", "regex"]
    value: dict[str, Any] | str


class Parameters(_Strict):
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    do_sample: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool | None = None
    best_of: int | None = None  # only 1: see params.py
    grammar: Grammar | None = None
    truncate: int | None = None
    watermark: bool = False  # only false: see params.py
    top_n_tokens: int | None = None
    adapter_id: str | None = None  # refused: no adapters are served


class TGIRequest(_Strict):
    inputs: str
    parameters: Parameters | None = None
    stream: bool = False


def is_tgi_body(raw: bytes) -> bool:
    """True when `raw` is a JSON object with TGI's `inputs` key (native /generate bodies use
    `text` / `input_ids`). Anything unparsable is left to the native route's validation."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "inputs" in body
