"""Native routes: /generate, /tokenize, /detokenize, /tokenizer_info, /health, /version, /metrics, /flush_cache."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from radixserve.outputs import StreamDelta
from radixserve.server import limits
from radixserve.server.openai import bodies, params
from radixserve.server.engine_io import JSONResponse, generate_all, sse_response, stream_all
from radixserve.server.errors import APIError, error_response, parse_body, user_errors
from radixserve.server.metrics import RequestClock
from radixserve.server.prologue import prepare_all
from radixserve.server.openai.protocol import DetokenizeRequest, GenerateRequest, TokenizeRequest
from radixserve.server.streaming import DONE, sse
from radixserve.server.tgi import routes as tgi
from radixserve.server.tgi.protocol import is_tgi_body

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    if request.app.state.engine.is_alive():
        return JSONResponse({"status": "ok"})
    return error_response(503, "The engine loop is not running; see the server log.")


@router.get("/version")
async def version() -> Response:
    from radixserve import __version__

    return JSONResponse({"version": __version__})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/flush_cache")
async def flush_cache(request: Request) -> Response:
    if not request.app.state.engine.flush_cache():
        return error_response(409, "Cannot flush the prefix cache while requests are running; retry when idle.",
                              code="requests_running")
    return JSONResponse({"flushed": True})


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    st = request.app.state
    req = await parse_body(request, TokenizeRequest)
    params.check_model(req.model, st.model_name)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "Give exactly one of 'prompt' or 'messages'.", param="prompt")
    if req.messages is not None:
        tokens = params.chat_prompt(st.engine, req.messages)
    else:
        tokens = list(st.engine.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens))
    return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": st.engine.max_context_len})


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> Response:
    """What a client needs to tokenise like the server (lm-evaluation-harness's remote tokenizer
    reads it, so it never has to fetch the tokenizer from a hub)."""
    tok = request.app.state.engine.tokenizer
    return JSONResponse({"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token,
                         "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                         "chat_template": getattr(tok, "chat_template", None),
                         "model_max_length": request.app.state.engine.max_context_len})


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    st = request.app.state
    req = await parse_body(request, DetokenizeRequest)
    params.check_model(req.model, st.model_name)
    vocab = len(st.engine.tokenizer)
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"Token ids must be in [0, {vocab}); got {bad[:5]}.", param="tokens")
    with user_errors("tokens"):
        text = st.engine.tokenizer.decode(req.tokens)
    return JSONResponse({"prompt": text})


@router.post("/generate")
async def generate(request: Request) -> Response:
    """SGLang's body (`text` / `input_ids`, `sampling_params`), or TGI's (`inputs`, `parameters`),
    told apart by their keys; each is validated once, by its own model."""
    if is_tgi_body(await request.body()):
        return await tgi.respond(request)
    st = request.app.state
    req = await parse_body(request, GenerateRequest)
    for field in ("text", "input_ids"):
        value = getattr(req, field)
        if isinstance(value, list) and value and not isinstance(value[0], int):
            limits.check_prompt_count(st.config, len(value), field)
    prompts, batched = params.native_prompts(st.engine, req)
    names = params.native_names(req)
    sp = params.native_sampling(req, names)
    prepared = prepare_all(st, prompts, sp, names)
    rid = f"gen-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    texts = bodies.TokenTexts(st.engine.tokenizer)
    if req.stream:
        stream, ids = await stream_all(request, prepared, rid, req.cache_salt)
        return sse_response(request, _native_events(stream, sp.n, clock), ids)
    groups = await generate_all(request, prepared, rid, req.cache_salt, clock)
    outs = [bodies.native(o, texts, req.return_logprob) for g in groups for o in g]
    for i, out in enumerate(outs):
        out["index"] = i
    return JSONResponse(outs if batched or sp.n > 1 else outs[0])


async def _native_events(stream: AsyncIterator[tuple[int, StreamDelta]], n: int,
                         clock: RequestClock) -> AsyncIterator[bytes]:
    """SGLang's stream shape: every chunk carries the text and ids so far, plus meta_info."""
    text: dict[int, str] = {}
    ids: dict[int, list[int]] = {}
    async for p, d in stream:
        index = p * n + d.index
        clock.tokens(index, len(d.token_ids))
        text[index] = text.get(index, "") + d.text
        ids.setdefault(index, []).extend(d.token_ids)
        meta = {"id": d.request_id, "prompt_tokens": d.prompt_tokens, "cached_tokens": d.cached_tokens,
                "completion_tokens": len(ids[index]), "finish_reason": d.finish_reason}
        yield sse({"text": text[index], "output_ids": ids[index], "index": index, "meta_info": meta})
    clock.done()
    yield DONE
