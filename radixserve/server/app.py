"""The FastAPI application: configuration, guards, error handlers and routes around one Engine."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from radixserve.engine.interface import EngineHandle
from radixserve.server.errors import install_handlers
from radixserve.server.metrics import ServerMetrics
from radixserve.server.middleware import GuardMiddleware
from radixserve.server.responses_api.store import ResponseStore
from radixserve.server.openai.defaults import resolve_default_max_tokens
from radixserve.server.openai.tools import template_renders_tools


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing the server is an explicit choice
    port: int = 8000
    api_key: str | None = None  # when set, every route but /health needs 'Authorization: Bearer <key>'
    max_body_bytes: int = 8 * 1024 * 1024
    max_n: int = 64  # most samples per prompt (n) one request may ask for
    served_model_name: str | None = None  # the id /v1/models reports; default: the engine's model name
    graceful_shutdown_s: float = 30.0  # on SIGTERM, in-flight requests get this long before abort
    # /v1/responses keeps each response (its conversation's token ids) for previous_response_id, in
    # memory, least recently used out first, within both bounds:
    responses_max_stored: int = 1000
    responses_max_stored_tokens: int = 2_000_000
    log_level: str = "info"
    # browser origins allowed to call the API (CORS), e.g. ("http://localhost:3000",); "*" for any.
    # Empty: no CORS headers at all (browsers on other origins are refused by the browser).
    allowed_origins: tuple[str, ...] = ()
    # max_tokens of a chat (and responses) request that sets none; None: the model's generation
    # config max_new_tokens, else 4096 (openai/defaults.py). Always within the context left.
    default_max_tokens: int | None = None
    # Bounds on request parts whose cost grows with their size (each a 400 naming the limit):
    max_prompts: int = 256  # prompts in one request (a list prompt / text / input_ids)
    max_stop_strings: int = 16  # stop strings (and stop_token_ids) per request
    max_stop_string_chars: int = 1024  # characters in one stop string
    max_logit_bias: int = 1024  # logit_bias entries
    max_tools: int = 128  # tools offered in one request
    max_tools_bytes: int = 256 * 1024  # the tools list as JSON
    max_schema_bytes: int = 256 * 1024  # a structured-output constraint (schema, regex, grammar) as JSON

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {self.max_n}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty; leave it unset to disable authentication")
        if self.responses_max_stored < 0 or self.responses_max_stored_tokens < 0:
            raise ValueError("responses_max_stored and responses_max_stored_tokens must be >= 0 (0: store nothing)")
        for name in ("max_prompts", "max_stop_strings", "max_stop_string_chars", "max_logit_bias", "max_tools",
                     "max_tools_bytes", "max_schema_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.allowed_origins, tuple) or not all(
                isinstance(o, str) and o.strip() for o in self.allowed_origins):
            raise ValueError(f"allowed_origins must be a tuple of non-empty origins, got {self.allowed_origins!r}")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1 (or None), got {self.default_max_tokens}")
        if self.graceful_shutdown_s < 0:
            raise ValueError(f"graceful_shutdown_s must be >= 0, got {self.graceful_shutdown_s}")


def build_app(engine: EngineHandle, config: ServerConfig | None = None) -> FastAPI:
    """An ASGI app serving `engine`. The caller owns the engine (and shuts it down)."""
    from radixserve.server.ollama import routes as ollama
    from radixserve.server.routes import cache, chat, completions, native, responses
    from radixserve.server.tgi import routes as tgi

    config = config or ServerConfig()
    from radixserve import __version__

    # NOTE: /docs and /openapi.json describe the routes only (no data), so the guard lets them
    # through without the API key (middleware.OPEN_PATHS), as it does /health and /version.
    app = FastAPI(title="radixserve", version=__version__, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.engine = engine
    app.state.config = config
    app.state.model_name = config.served_model_name or engine.model_name
    app.state.metrics = ServerMetrics(engine)
    app.state.responses = ResponseStore(config.responses_max_stored, config.responses_max_stored_tokens)
    app.state.default_max_tokens = resolve_default_max_tokens(config.default_max_tokens, engine.config.model)
    app.state.tools_native = template_renders_tools(engine.tokenizer)  # else tools go in the system prompt
    install_handlers(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(native.router)
    app.include_router(cache.router)
    app.include_router(tgi.router)
    app.include_router(ollama.router)
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    if config.allowed_origins:
        # NOTE: added last, so outermost: a browser's preflight (OPTIONS, no Authorization header)
        # is answered before the API-key guard, and the guard's 401/413 bodies carry CORS headers.
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"])  # requested headers (Authorization) are echoed back
    return app
