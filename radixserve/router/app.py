"""The router's HTTP front: the server's routes, each forwarded to a replica unchanged.

A request body goes as it came to the same route of the replica the router picks, and the answer
comes back as the replica sent it: JSON whole, an event stream event by event. So everything a
single server does (structured output, tools, echo, best_of, logprobs, /v1/responses...) works
through the router, and a request the server refuses gets the server's own error. The router
reads a request only to route it (radixserve.router.prompts) and an answer only for its
statistics and stored response ids (radixserve.router.answers).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from radixserve.router.config import RouterConfig
from radixserve.router.metrics import RouterMetrics
from radixserve.router.prompts import route_key
from radixserve.router.router import Answer, Passthrough, ReplicaLost, Router, Upstream
from radixserve.server.openai import params
from radixserve.server.engine_io import JSONResponse
from radixserve.server.errors import APIError, error_body, error_response, install_handlers
from radixserve.server.middleware import GuardMiddleware
from radixserve.server.streaming import DONE, sse, until_disconnect

logger = logging.getLogger(__name__)
routes = APIRouter()
FORWARDED = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/generate")


def build_router_app(router: Router) -> FastAPI:
    """An ASGI app in front of `router`; its lifespan starts and stops the router's pollers."""
    config: RouterConfig = router.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(title="radixserve router", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.router = router
    app.state.config = config
    app.state.metrics = RouterMetrics(router)
    install_handlers(app)

    async def on_passthrough(request: Request, exc: Passthrough) -> Response:
        return Response(exc.body, status_code=exc.status, media_type=exc.media_type)

    app.add_exception_handler(Passthrough, on_passthrough)
    for path in FORWARDED:
        app.add_api_route(path, _forwarding(path), methods=["POST"])
    app.include_router(routes)
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app


def _model_name(request: Request) -> str:
    st = request.app.state
    return st.config.served_model_name or st.router.info["model"]


def _forwarding(path: str):
    async def forward(request: Request) -> Response:
        return await _forward(request, path)

    forward.__name__ = "forward_" + path.strip("/").replace("/", "_")
    return forward


async def _forward(request: Request, path: str) -> Response:
    rt: Router = request.app.state.router
    body = await request.body()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None  # NOTE: forwarded all the same: the replica answers the server's own 400
    key = route_key(rt.frontend, path, parsed)
    started = time.perf_counter()
    # NOTE: the client leaving cancels the forward: the replica sees its connection close and aborts
    answer = await until_disconnect(request, rt.forward(path, body, key), lambda: None)
    if isinstance(answer, Answer):
        request.app.state.metrics.e2e.observe(time.perf_counter() - started)
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type)
    return _relay(answer, request.app.state.metrics, started)


def _relay(upstream: Upstream, metrics: RouterMetrics, started: float) -> Response:
    """The replica's events as they come; a replica lost mid-way ends the stream with an in-band 503."""
    async def body() -> AsyncIterator[bytes]:
        last = None
        try:
            async for event in upstream:
                now = time.perf_counter()
                if last is None:
                    metrics.ttft.observe(now - started)
                else:
                    metrics.itl.observe(now - last)
                last = now
                yield event
            metrics.e2e.observe(time.perf_counter() - started)
        except ReplicaLost as exc:
            logger.warning("%s", exc)
            yield sse(error_body(503, "The replica serving this stream failed; retry the request.",
                                 code="replica_lost"))
            yield DONE
        finally:
            await upstream.aclose()  # NOTE: an unfinished upstream stream is closed: the replica aborts

    # NOTE: the background task runs even when the client left before the body started
    return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(upstream.aclose),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---- stored responses --------------------------------------------------------------------------------
@routes.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Response:
    return await _on_home(request, "GET", response_id)


@routes.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    resp = await _on_home(request, "DELETE", response_id)
    if resp.status_code == 200:
        request.app.state.router.homes.drop(response_id)
    return resp


async def _on_home(request: Request, method: str, response_id: str) -> Response:
    """On the replica that stored the response (the server's own 404 when none did)."""
    rt: Router = request.app.state.router
    home = await rt.home_of(response_id)
    r = rt.replicas[home] if home is not None else _any_replica(rt)
    return await _simple(rt, r, method, f"/v1/responses/{response_id}", None)


# ---- routes any replica answers alike ----------------------------------------------------------------
@routes.post("/tokenize")
async def tokenize(request: Request) -> Response:
    rt: Router = request.app.state.router
    return await _simple(rt, _any_replica(rt), "POST", "/tokenize", await request.body())


@routes.post("/detokenize")
async def detokenize(request: Request) -> Response:
    rt: Router = request.app.state.router
    return await _simple(rt, _any_replica(rt), "POST", "/detokenize", await request.body())


@routes.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> Response:
    rt: Router = request.app.state.router
    return await _simple(rt, _any_replica(rt), "GET", "/tokenizer_info", None)


def _any_replica(rt: Router):
    usable = [r for r in rt.replicas if r.usable]
    if not usable:
        raise APIError(503, "No replica is available; retry later.", code="no_replica")
    return min(usable, key=lambda r: (r.load, r.index))


async def _simple(rt: Router, r, method: str, path: str, body: bytes | None) -> Response:
    headers = {**r.headers, "Content-Type": "application/json"}
    try:
        resp = await rt.client.request(method, r.url + path, content=body, headers=headers)
    except httpx.TransportError as exc:
        r.mark_down(f"{type(exc).__name__}: {exc}")
        raise APIError(503, f"Replica {r.index} did not answer; retry.", code="no_replica") from exc
    return Response(resp.content, status_code=resp.status_code,
                    media_type=resp.headers.get("content-type", "application/json"))


@routes.get("/v1/models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request)]})


@routes.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    params.check_model(model_id, _model_name(request))
    return JSONResponse(_model_card(request))


def _model_card(request: Request) -> dict:
    return {"id": _model_name(request), "object": "model", "created": 0, "owned_by": "radixserve",
            "max_model_len": request.app.state.router.max_context_len}


# ---- native routes --------------------------------------------------------------------------------
@routes.get("/health")
async def health(request: Request) -> Response:
    reps = request.app.state.router.replicas
    usable = sum(r.usable for r in reps)
    if usable:
        return JSONResponse({"status": "ok", "replicas": len(reps), "available": usable})
    return error_response(503, f"None of the {len(reps)} replicas is available; see the router log.",
                          code="no_replica")


@routes.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@routes.get("/router/replicas")
async def replicas(request: Request) -> Response:
    """Each replica's state: health, load, mirror size, hit rate, routing decisions."""
    out = []
    for r in request.app.state.router.replicas:
        s = r.stats
        out.append({"index": r.index, "url": r.url, "healthy": r.healthy, "compatible": r.compatible,
                    "load": r.load, "last_error": r.last_error, "info": r.info, "epoch": r.mirror.epoch,
                    "mirror_tokens": r.mirror.num_tokens, "mirror_footprint_tokens": r.mirror.footprint,
                    "requests": s.requests, "reported": s.reported, "prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
                    "predicted_cached_tokens": s.predicted_cached_tokens, "exact_predictions": s.exact_predictions,
                    "failed": s.failed, "events": s.events, "resyncs": s.resyncs, "decisions": s.decisions})
    return JSONResponse({"policy": request.app.state.config.policy, "replicas": out,
                         "failovers": request.app.state.router.failovers})


@routes.post("/flush_cache")
async def flush_cache(request: Request) -> Response:
    """Flush every available replica's cache (409 if any has requests running)."""
    rt: Router = request.app.state.router
    refused = []
    for r in rt.replicas:
        if not r.usable:
            continue
        resp = await rt.client.post(r.url + "/flush_cache", headers=r.headers)
        if resp.status_code != 200:
            refused.append(f"replica {r.index}: HTTP {resp.status_code}")
    if refused:
        raise APIError(409, "Some replicas could not flush their cache (requests running?): " + "; ".join(refused)
                       + ". Retry when idle.", code="requests_running")
    return JSONResponse({"flushed": True})
