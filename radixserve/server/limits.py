"""Bounds on the parts of a request whose cost grows with their size: stop strings (matched on
every step's text), logit_bias entries (a row built on the device), prompts per request, tools and
structured-output schemas (rendered into the prompt / compiled against the whole vocabulary).

Each bound is a ServerConfig field; a request past one is a 400 naming the field and the limit.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from radixserve.sampling_params import CONSTRAINT_FIELDS, SamplingParams
from radixserve.server.errors import APIError


def check_prompt_count(config: Any, count: int, param: str) -> None:
    """Before tokenising: a request may carry at most `max_prompts` prompts."""
    if count > config.max_prompts:
        raise APIError(400, f"{param} has {count} prompts; this server takes at most {config.max_prompts} per "
                       "request (max_prompts): split the batch over several requests.", param=param)


def check_sampling(config: Any, sp: SamplingParams, param: Callable[[str], str] = str) -> None:
    """Stop strings, stop token ids, logit_bias and the structured-output constraint of `sp`. An
    error names the request field `param(field)` (e.g. ParamNames.of) of the SamplingParams field."""

    stops = list(sp.stop or [])
    if len(stops) > config.max_stop_strings:
        raise APIError(400, f"{param('stop')} has {len(stops)} strings; this server takes at most "
                       f"{config.max_stop_strings} (max_stop_strings).", param=param("stop"))
    longest = max((len(s) for s in stops), default=0)
    if longest > config.max_stop_string_chars:
        raise APIError(400, f"{param('stop')} has a string of {longest} characters; this server takes at most "
                       f"{config.max_stop_string_chars} per stop string (max_stop_string_chars).",
                       param=param("stop"))
    if len(sp.stop_token_ids or ()) > config.max_stop_strings:
        raise APIError(400, f"{param('stop_token_ids')} has {len(sp.stop_token_ids)} ids; this server takes at "
                       f"most {config.max_stop_strings} (max_stop_strings).", param=param("stop_token_ids"))
    bias = sp.logit_bias or {}
    if len(bias) > config.max_logit_bias:
        raise APIError(400, f"{param('logit_bias')} has {len(bias)} entries; this server takes at most "
                       f"{config.max_logit_bias} (max_logit_bias).", param=param("logit_bias"))
    for field in CONSTRAINT_FIELDS:
        check_json_size(config, getattr(sp, field), param(field))


def check_json_size(config: Any, value: Any, param: str, limit_name: str = "max_schema_bytes") -> None:
    """`value` (a schema, a tool list, a grammar) serialised must fit `limit_name` bytes."""
    if value is None:
        return
    limit = getattr(config, limit_name)
    size = len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value, default=_plain))
    if size > limit:
        raise APIError(400, f"{param} is {size} bytes as JSON; this server takes at most {limit} "
                       f"({limit_name}).", param=param)


def check_tools(config: Any, tools: list | None, param: str = "tools") -> None:
    if not tools:
        return
    if len(tools) > config.max_tools:
        raise APIError(400, f"{param} has {len(tools)} tools; this server takes at most {config.max_tools} "
                       "(max_tools).", param=param)
    check_json_size(config, tools, param, "max_tools_bytes")


def _plain(obj: Any) -> Any:
    """pydantic models inside a request (tool definitions) as plain JSON values."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(by_alias=True, exclude_none=True)
    raise TypeError(f"cannot measure a {type(obj).__name__}")
