"""The router's HTTP front: the server's routes, served by forwarding token ids to replicas.

Requests are parsed and checked with the server's own models and helpers, tokenised here once
(the chat template applied here), and sent to a replica's /generate as token ids. Answers come
back in the shape a single server gives: OpenAI chat and completions are rebuilt from the native
results with the server's response builders; /generate answers pass through as they are.
A stream that asks for logprobs is answered in one piece once done (the native stream carries no
logprobs). A multi-prompt request goes to one replica as a whole.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from radixserve.outputs import StreamDelta
from radixserve.router.config import RouterConfig
from radixserve.router.forward import StreamDecoder, native_body, request_outputs, whole_deltas
from radixserve.router.metrics import RouterMetrics
from radixserve.router.router import Passthrough, ReplicaLost, Router, Upstream
from radixserve.server import openai_routes, params, responses
from radixserve.server.engine_io import JSONResponse
from radixserve.server.errors import APIError, error_body, error_response, install_handlers, parse_body
from radixserve.server.middleware import GuardMiddleware
from radixserve.server.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest
from radixserve.server.streaming import DONE, sse, until_disconnect

logger = logging.getLogger(__name__)
routes = APIRouter()


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
        return Response(exc.body, status_code=exc.status, media_type="application/json")

    app.add_exception_handler(Passthrough, on_passthrough)
    app.include_router(routes)
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app


def _model_name(request: Request) -> str:
    st = request.app.state
    return st.config.served_model_name or st.router.info["model"]


def _frontend(request: Request):
    rt: Router = request.app.state.router
    rt.frontend.max_context_len = rt.max_context_len  # NOTE: 503 when no replica is usable
    return rt.frontend


async def _call(request: Request, prompts: list[list[int]], salt: str | None, n: int, body: dict) -> list[dict]:
    """Non-streamed: the client leaving cancels the forward (the replica then aborts)."""
    rt: Router = request.app.state.router
    return await until_disconnect(request, rt.generate(prompts, salt, n, body), lambda: None)


async def _aiter(items):
    for item in items:
        yield item


async def _deltas(chunks: AsyncIterator[dict], decoder: StreamDecoder) -> AsyncIterator[tuple[int, StreamDelta]]:
    async for chunk in chunks:
        if "error" in chunk:
            raise _ReplicaError(chunk)
        yield decoder(chunk)


class _ReplicaError(Exception):
    """An error event a replica sent mid-stream; relayed as it is."""

    def __init__(self, body: dict) -> None:
        super().__init__(str(body))
        self.body = body


def _sse(events: AsyncIterator[bytes], upstream: Upstream | None) -> Response:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield chunk
        except _ReplicaError as exc:
            yield sse(exc.body)
            yield DONE
        except ReplicaLost as exc:
            logger.warning("%s", exc)
            yield sse(error_body(503, "The replica serving this stream failed; retry the request.",
                                 code="replica_lost"))
            yield DONE
        finally:
            await events.aclose()
            if upstream is not None:
                await upstream.aclose()  # NOTE: an unfinished upstream stream is closed: the replica aborts

    # NOTE: the background task runs even when the client left before the body started
    return StreamingResponse(body(), media_type="text/event-stream", background=_closer(upstream),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _closer(upstream: Upstream | None) -> BackgroundTask | None:
    return None if upstream is None else BackgroundTask(upstream.aclose)


# ---- OpenAI routes ---------------------------------------------------------------------------------
@routes.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    st = request.app.state
    rt: Router = st.router
    req = await parse_body(request, ChatCompletionRequest)
    frontend = _frontend(request)
    model = _model_name(request)
    params.check_model(req.model, model)
    params.check_stream_options(req)
    params.check_n(req.n, 1, st.config.max_n)
    prompt = params.chat_prompt(frontend, req.messages)
    sp = params.chat_sampling(req, len(prompt), frontend.max_context_len)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    texts = responses.TokenTexts(frontend.tokenizer)
    usage = req.stream_options is not None and req.stream_options.include_usage
    if req.stream and not req.logprobs:
        chunks = await rt.stream([prompt], req.cache_salt, sp.n, native_body([prompt], False, sp, True, req.cache_salt))
        deltas = _deltas(chunks, StreamDecoder(sp.n))
        events = openai_routes._chat_events(deltas, rid, model, usage, False, texts, clock)
        return _sse(events, chunks)
    outs = await _call(request, [prompt], req.cache_salt, sp.n, native_body([prompt], False, sp, False, req.cache_salt))
    groups = request_outputs(outs, sp.n, req.logprobs)
    if req.stream:
        events = openai_routes._chat_events(_aiter(whole_deltas(groups)), rid, model, usage, True, texts, clock)
        return _sse(events, None)
    clock.done()
    return JSONResponse(responses.chat_completion(rid, model, groups[0], texts))


@routes.post("/v1/completions")
async def completions(request: Request) -> Response:
    st = request.app.state
    rt: Router = st.router
    req = await parse_body(request, CompletionRequest)
    frontend = _frontend(request)
    model = _model_name(request)
    params.check_model(req.model, model)
    params.check_stream_options(req)
    prompts = params.completion_prompts(frontend, req.prompt)
    params.check_n(req.n, len(prompts), st.config.max_n)
    sp = params.completion_sampling(req)
    batched = len(prompts) > 1
    rid = f"cmpl-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    texts = responses.TokenTexts(frontend.tokenizer)
    usage = req.stream_options is not None and req.stream_options.include_usage
    if req.stream and req.logprobs is None:
        body = native_body(prompts, batched, sp, True, req.cache_salt)
        chunks = await rt.stream(prompts, req.cache_salt, sp.n, body)
        events = openai_routes._completion_events(_deltas(chunks, StreamDecoder(sp.n)), rid, model, sp.n, usage,
                                                  texts, clock)
        return _sse(events, chunks)
    outs = await _call(request, prompts, req.cache_salt, sp.n, native_body(prompts, batched, sp, False, req.cache_salt))
    groups = request_outputs(outs, sp.n, req.logprobs is not None)
    if req.stream:
        events = openai_routes._completion_events(_aiter(whole_deltas(groups)), rid, model, sp.n, usage, texts, clock)
        return _sse(events, None)
    clock.done()
    return JSONResponse(responses.completion(rid, model, groups, texts))


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
@routes.post("/generate")
async def generate(request: Request) -> Response:
    st = request.app.state
    rt: Router = st.router
    req = await parse_body(request, GenerateRequest)
    prompts, batched = params.native_prompts(_frontend(request), req)
    sp = params.native_sampling(req)
    params.check_n(sp.n, len(prompts), st.config.max_n)
    body = {**req.model_dump(), "text": None, "input_ids": prompts if batched else prompts[0]}
    if req.stream:
        chunks = await rt.stream(prompts, req.cache_salt, sp.n, body)

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield sse(chunk)
            yield DONE

        return _sse(relay(), chunks)
    outs = await _call(request, prompts, req.cache_salt, sp.n, body)
    return JSONResponse(outs if batched or sp.n > 1 else outs[0])


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
                    "requests": s.requests, "prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
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
