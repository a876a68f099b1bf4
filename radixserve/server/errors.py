"""OpenAI-style error bodies and the exception handlers that produce them.

Status codes (one rule, applied everywhere):
  400 invalid_request_error  malformed JSON, wrong types, unknown fields, out-of-range values,
                             prompt over the context, bad token ids (OpenAI uses 400, not 422,
                             for all of these; the SDK maps it to BadRequestError)
  401 authentication_error   missing or wrong API key
  404 not_found_error        unknown route or unknown model
  405 invalid_request_error  wrong HTTP method
  409 conflict_error         /flush_cache while requests are running
  413 invalid_request_error  request body larger than the server's limit
  429 rate_limit_error       the engine's waiting queue is full
  503 service_unavailable    the engine loop is not alive
  500 internal_error         a bug on our side; the body never carries a traceback
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


_TAGS = {"str", "int", "float", "bool", "TextPart"}
_UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "content": "a string or a list of {'type': 'text', 'text': ...} parts",
    "stop": "a string or a list of strings",
    "text": "a string or a list of strings",
    "input_ids": "a list of token ids or a list of lists of token ids",
}


class APIError(Exception):
    """An error to answer with an OpenAI error body. Raise it anywhere in a route."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "internal_error"), "param": param,
                      "code": code if code is not None else _default_code(status)}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(error_body(status, message, param, code)), status_code=status,
                    media_type="application/json", headers=headers)


def _default_code(status: int) -> str | None:
    return {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "queue_full",
            503: "engine_unavailable"}.get(status)


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """Turn pydantic's error list into one readable 400 that names the offending field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "Invalid request body.")
    first = errors[0]
    if first["type"] == "json_invalid":
        return APIError(400, f"Request body is not valid JSON (UTF-8): {first['msg']}", code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if not loc:
        return APIError(400, f"Request body must be a JSON object: {first['msg']}")
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):  # e.g. response_format.type
        path = ".".join(loc + [first.get("ctx", {}).get("discriminator", "'type'").strip("'")])
        return APIError(400, f"Invalid value for '{path}': {first['msg']}.", param=path)
    if loc[-1] == "[key]" and len(loc) >= 3:  # a dict key of the wrong type, e.g. logit_bias {"a": 1}
        path = ".".join(loc[:-2])
        return APIError(400, f"Invalid key {loc[-2]!r} in '{path}': {first['msg']}.", param=path)
    # NOTE: members of a union appear in loc as type tags (e.g. 'list[int]'); name the field instead.
    tag = next((i for i, p in enumerate(loc) if "[" in p or p in _TAGS), None)
    if tag is not None:
        path = ".".join(loc[:tag])
        hint = _UNION_HINTS.get(loc[tag - 1] if tag else "", "a value of another type")
        return APIError(400, f"Invalid value for '{path}': expected {hint}.", param=path)
    path = ".".join(loc)
    if first["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {path}", param=path)
    if first["type"] == "missing":
        return APIError(400, f"Missing required parameter: {path}", param=path)
    return APIError(400, f"Invalid value for '{path}': {first['msg']}", param=path)


@contextmanager
def user_errors(param: str | None = None, param_of: Callable[[ValueError], str | None] | None = None
                ) -> Iterator[None]:
    """Around calls into the engine: its ValueError means bad input (400), a full queue means 429.
    `param_of(error)` may name the request field an error is about, from its `field` (else `param`)."""
    from radixserve.engine.errors import EngineDeadError, QueueFullError

    try:
        yield
    except ValueError as exc:
        message = str(exc) or "Invalid request."
        named = param_of(exc) if param_of is not None else None
        raise APIError(400, message, param=named or param) from exc
    except QueueFullError as exc:
        raise APIError(429, f"The server's request queue is full ({exc}); retry later.") from exc
    except EngineDeadError as exc:
        raise APIError(503, f"The engine is not running ({exc}); the server is shutting down.") from exc


async def parse_body(request: Request, model: type[M]) -> M:
    """Validate the raw body against `model`: malformed JSON and invalid UTF-8 included, all 400."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


def install_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        err = validation_error(exc)
        return error_response(err.status, err.message, err.param, err.code)

    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 404:
            message = f"Route {request.method} {request.url.path} not found."
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return error_response(status, message, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("internal error while serving %s %s", request.method, request.url.path)
        return error_response(500, f"Internal server error ({type(exc).__name__}); see the server log.")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
