"""Ollama-style errors on the /api/* routes: `{"error": "<message>"}` with the same status codes
as the OpenAI routes (400 bad body, 404 unknown route, 429 queue full, 503 engine down).

The shared helpers (body parsing, the engine's one validation, limits) raise APIError; this route
class renders it in Ollama's shape instead of OpenAI's, so the ollama client's ResponseError
carries the message itself.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from radixserve.server.errors import APIError
from radixserve.server.ollama.ndjson import error_response

logger = logging.getLogger(__name__)


def message_of(exc: APIError) -> str:
    """The message, naming the request field when the message itself does not (Ollama's body has
    no `param`): 'options.temperature: temperature must be >= 0 ...'."""
    if exc.param is None or exc.param in exc.message:
        return exc.message
    return f"{exc.param}: {exc.message}"


class OllamaRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as exc:
                return error_response(exc.status, message_of(exc))
            except Exception as exc:
                logger.exception("internal error while serving %s %s", request.method, request.url.path)
                return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")

        return route
