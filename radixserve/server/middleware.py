"""ASGI guards that run before any route: API key, then request body size."""
from __future__ import annotations

import hmac
from typing import Any

from radixserve.server.errors import error_response

Scope = dict[str, Any]

# reachable without the API key: load-balancer probes, the version, and the API's own description
OPEN_PATHS = frozenset({"/health", "/version", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


class GuardMiddleware:
    """Rejects unauthenticated requests (401) and bodies over `max_body_bytes` (413).

    The body is read here, bounded, and replayed to the app, so a chunked upload without a
    Content-Length cannot grow past the limit either. Messages after the body (the client's
    `http.disconnect`) pass straight through, which is how streams notice a client leaving.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            resp = error_response(401, "Missing or invalid API key: send the header 'Authorization: Bearer <key>'.",
                                  headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                await error_response(400, "Content-Length header is not an integer.")(scope, receive, send)
                return
            if too_big:
                await self._too_large(scope, receive, send)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _too_large(self, scope: Scope, receive: Any, send: Any) -> None:
        resp = error_response(413, f"Request body is larger than this server's limit of {self.max_body_bytes} "
                                   "bytes; send a shorter prompt or raise --max-body-bytes.")
        await resp(scope, receive, send)
