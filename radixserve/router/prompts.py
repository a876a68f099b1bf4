"""What the router reads of a request to route it: its prompts as token ids, its cache namespace,
how many sequences it runs, and, for a /v1/responses follow-up, the response it continues.

The router never answers a request itself: it forwards the body unchanged, and the replica
checks it. So this module only tokenises, with the server's own prompt-building functions (the
chat template with tools when the request has them), and never fails: a body it cannot read
routes by load instead (the replica then answers the error a single server gives).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import ValidationError

from radixserve.server.openai import params, tools
from radixserve.server.responses_api import conversation, input_items
from radixserve.server.errors import APIError
from radixserve.server.openai.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest
from radixserve.server.responses_api.protocol import ResponsesRequest

if TYPE_CHECKING:
    from radixserve.router.frontend import Frontend

logger = logging.getLogger(__name__)

# what building a prompt may raise on a body the replica will refuse (or one the router reads
# differently): routing then goes by load
_UNREADABLE = (APIError, ValidationError, ValueError, TypeError, KeyError, IndexError, AttributeError)


class RouteKey(NamedTuple):
    prompts: list[list[int]]  # token ids per prompt; empty when the router could not build them
    namespace: str | None  # the cache_salt
    seqs: int  # sequences the request runs (prompts x samples), its weight in a replica's load
    previous_response_id: str | None = None  # a /v1/responses follow-up: its replica holds the state


def _positive(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def route_key(frontend: Frontend, path: str, body: Any) -> RouteKey:
    """The routing key of a request body (already parsed JSON) sent to `path`."""
    if not isinstance(body, dict):
        return RouteKey([], None, 1)
    salt = body.get("cache_salt") if isinstance(body.get("cache_salt"), str) else None
    try:
        if path == "/v1/chat/completions":
            req = ChatCompletionRequest.model_validate(body)
            return RouteKey([_chat_prompt(frontend, req)], salt, _positive(req.n))
        if path == "/v1/completions":
            req = CompletionRequest.model_validate(body)
            prompts = params.completion_prompts(frontend, req.prompt)
            samples = max(_positive(req.n), _positive(getattr(req, "best_of", None)))
            return RouteKey(prompts, salt, samples * len(prompts))
        if path == "/generate":
            req = GenerateRequest.model_validate(body)
            prompts, _ = params.native_prompts(frontend, req)
            n = _positive(getattr(req.sampling_params, "n", 1)) if req.sampling_params is not None else 1
            return RouteKey(prompts, salt, n * len(prompts))
        if path == "/v1/responses":
            return _responses_key(frontend, body, salt)
    except _UNREADABLE as exc:
        logger.debug("routing %s by load: its prompt could not be built here (%s)", path, exc)
    prev = body.get("previous_response_id") if path == "/v1/responses" else None
    return RouteKey([], salt, 1, prev if isinstance(prev, str) else None)


def _chat_prompt(frontend: Frontend, req: ChatCompletionRequest) -> list[int]:
    """The replica's own chat prompt: tools rendered as the server renders them. If the tools part
    cannot be built here, the conversation without tools (its prefix still finds the cache)."""
    try:
        plan = tools.plan(req, frontend.tools_native)
        return params.chat_prompt(frontend, tools.template_messages(req.messages, plan), tools.template_tools(plan),
                                  req)
    except _UNREADABLE as exc:
        logger.debug("routing a chat on its messages without tools (%s)", exc)
        return params.chat_prompt(frontend, req.messages)


def _responses_key(frontend: Frontend, body: dict, salt: str | None) -> RouteKey:
    req = ResponsesRequest.model_validate(body)
    if req.previous_response_id is not None:
        # NOTE: the prompt continues the stored turn's tokens, which only its replica has
        return RouteKey([], salt, 1, req.previous_response_id)
    # NOTE: the server's own first-turn rendering (instructions, tools, input items), so the key is
    # the replica's prompt token for token
    rendering = conversation.Rendering(req.instructions, input_items.tool_plan(req, frontend.tools_native))
    return RouteKey([conversation.first_turn(frontend, rendering, input_items.messages(req, ())).ids], salt, 1)
