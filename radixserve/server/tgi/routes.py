"""TGI routes: POST / (TGI's compat route: generate, or stream when `stream` is true),
POST /generate_stream and GET /info. POST /generate takes a TGI body too: the native route
hands a body with `inputs` to `respond` (routes/native.py)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from starlette.responses import Response

import radixserve
from radixserve.server.engine_io import JSONResponse, generate_all, sse_response, stream_all
from radixserve.server.errors import parse_body
from radixserve.server.prologue import prepare_all
from radixserve.server.tgi import bodies, params
from radixserve.server.tgi.events import tgi_events
from radixserve.server.tgi.protocol import TGIRequest

router = APIRouter()


@router.post("/")
async def compat_generate(request: Request) -> Response:
    return await respond(request)


@router.post("/generate_stream")
async def generate_stream(request: Request) -> Response:
    return await respond(request, stream=True)


@router.get("/info")
async def info(request: Request) -> Response:
    """The fields of TGI's /info that describe this server (model, token limits, request bounds)."""
    st = request.app.state
    total = st.engine.limits.max_sequence_len
    return JSONResponse({
        "model_id": st.model_name, "model_sha": None, "model_pipeline_tag": "text-generation",
        "model_dtype": None, "model_device_type": None,
        "max_input_tokens": total - 1, "max_input_length": total - 1, "max_total_tokens": total,
        "max_batch_total_tokens": st.engine.limits.kv_capacity, "max_best_of": 1,
        "max_stop_sequences": st.config.max_stop_strings, "max_client_batch_size": 1,
        "router": "radixserve", "version": radixserve.__version__, "sha": None, "docker_label": None,
    })


async def respond(request: Request, stream: bool | None = None) -> Response:
    """Serve one TGI body; `stream` forces streaming (/generate_stream), else the body's `stream` decides."""
    st = request.app.state
    req = await parse_body(request, TGIRequest)
    plan = params.plan(st.engine, req)
    prepared = prepare_all(st, [plan.prompt], plan.sp, plan.names)
    rid = f"tgi-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    tokens = bodies.Tokens(st.engine.tokenizer)
    if req.stream if stream is None else stream:
        merged, ids = await stream_all(request, prepared, rid, None, plan.names)
        return sse_response(request, tgi_events(merged, plan, tokens, st.engine.eos_ids, clock), ids)
    groups = await generate_all(request, prepared, rid, None, clock, plan.names)
    return JSONResponse(bodies.generate(groups[0][0], plan, tokens))
