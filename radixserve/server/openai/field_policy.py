"""The policy for OpenAI request fields that have no counterpart in a self-hosted engine.

Three kinds of field exist:
- honoured: they change what is generated, and the server does what they say (README lists them);
- accepted and ignored (IGNORED): billing, storage, telemetry, routing and provider-side caching
  knobs. Ignoring them cannot change what a correct answer looks like, and SDKs and agent
  frameworks send them routinely, so refusing them would break a client before its first token;
- refused (REFUSED): fields that ask for something the server cannot do. Silently ignoring them
  would return an answer the client did not ask for, so they get a 400 naming the field and
  saying why, unless their value asks for nothing (e.g. `modalities: ["text"]`).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from radixserve.server.errors import APIError

IGNORED: dict[str, str] = {
    "store": "OpenAI-side storage of chat completions (the Responses API's `store` is honoured)",
    "metadata": "tags for OpenAI's dashboard",
    "service_tier": "OpenAI's processing tiers; one engine serves every request alike",
    "user": "an end-user id for OpenAI's abuse monitoring",
    "safety_identifier": "an end-user id for OpenAI's abuse monitoring",
    "prompt_cache_key": "routing hint for OpenAI's prompt cache; the radix tree caches every prefix by itself",
    "prompt_cache_retention": "OpenAI's prompt-cache lifetime; cached prefixes here live until evicted (LRU)",
    "prompt_cache_options": "OpenAI's prompt-cache breakpoints; the radix tree needs none",
    "stream_options.include_obfuscation": "nothing in these streams is obfuscated",
    "prediction (empty)": "a predicted output with no content asks for nothing",
}


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def _text_only(value: Any) -> bool:
    return value is None or value == ["text"] or value == []


def _empty_prediction(value: Any) -> bool:
    if _empty(value):
        return True
    return isinstance(value, dict) and value.get("type") == "content" and _empty(value.get("content"))


def _no_reasoning(value: Any) -> bool:
    return _empty(value) or (isinstance(value, dict) and value.get("effort") in (None, "none")
                             and _empty(value.get("summary")) and _empty(value.get("generate_summary")))


def _false(value: Any) -> bool:
    return value is None or value is False


# field -> (is the value harmless?, why a non-harmless value is refused)
REFUSED: dict[str, tuple[Any, str]] = {
    "prediction": (_empty_prediction, "predicted outputs (speculative decoding against a given text) are not "
                   "implemented; send no prediction, or an empty one"),
    "audio": (_empty, "this server generates text only; audio output is not available"),
    "modalities": (_text_only, "this server generates text only; use modalities [\"text\"] or leave it out"),
    "web_search_options": (_empty, "this server has no web search tool"),
    "reasoning_effort": (_empty, "this model has no reasoning mode to configure"),
    "verbosity": (_empty, "this model has no verbosity control; ask for brevity in the prompt or set max_tokens"),
    "moderation": (_empty, "this server runs no moderation model"),
    "functions": (_empty, "the deprecated `functions` field is not supported; send `tools` instead"),
    "function_call": (_empty, "the deprecated `function_call` field is not supported; send `tool_choice` instead"),
    # vLLM / SGLang extensions the sampler or server cannot honour
    "use_beam_search": (_false, "beam search is not supported; use temperature 0 for greedy decoding"),
    "length_penalty": (lambda v: v is None or v == 1, "length_penalty applies to beam search, which is not "
                       "supported"),
    "prompt_logprobs": (_empty, "prompt logprobs are served by /v1/completions with echo and logprobs"),
    "allowed_token_ids": (_empty, "use logit_bias to favour or ban tokens"),
    "bad_words": (_empty, "use logit_bias with -100 on the words' token ids"),
    "truncate_prompt_tokens": (_empty, "the server never drops prompt tokens; shorten the prompt"),
    "chat_template": (_empty, "a per-request chat template is not accepted (a template is code run on the "
                      "server); the model's own template renders every chat"),
    "documents": (_empty, "documents for the chat template are not supported; put them in a message"),
    # the Responses API
    "reasoning": (_no_reasoning, "this model has no reasoning mode to configure"),
    "background": (_false, "background responses (polled later) are not supported; stream instead"),
    "conversation": (_empty, "server-side conversation objects are not supported; chain turns with "
                     "previous_response_id"),
    "context_management": (_empty, "server-side context compaction is not supported"),
    "truncation": (lambda v: v in (None, "disabled"), "the server never drops parts of a conversation; "
                   "use 'disabled' (a conversation over the context is a 400)"),
}

# Refused on /v1/responses only (the chat route honours its own fields of these names).
RESPONSES_REFUSED: dict[str, tuple[Any, str]] = {
    "prompt": (_empty, "stored prompt templates are not supported; send instructions and input"),
}


def refuse(req: BaseModel, prefix: str = "", extra: dict[str, tuple[Any, str]] | None = None) -> None:
    """400 naming the first field of `req` whose value the server cannot honour."""
    for name, (harmless, reason) in {**REFUSED, **(extra or {})}.items():
        if name in type(req).model_fields and not harmless(getattr(req, name)):
            raise APIError(400, f"'{prefix}{name}' is not supported by this server: {reason}.",
                           param=prefix + name, code="unsupported_parameter")
