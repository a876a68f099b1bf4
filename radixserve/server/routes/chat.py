"""OpenAI-compatible routes: /v1/chat/completions (with structured output and tools) and /v1/models."""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from radixserve.outputs import StreamDelta
from radixserve.server import limits
from radixserve.server.openai import bodies, params, structured, tools
from radixserve.server.engine_io import JSONResponse, UsageTracker, generate_all, sse_response, stream_all
from radixserve.server.errors import APIError
from radixserve.server.metrics import RequestClock
from radixserve.server.prologue import prepare_all, read_openai
from radixserve.server.openai.protocol import ChatCompletionRequest
from radixserve.server.streaming import DONE, sse
from radixserve.server.openai.tool_stream import ToolReader

router = APIRouter()

Merged = AsyncIterator[tuple[int, StreamDelta]]


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request)]})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    params.check_model(model_id, request.app.state.model_name)
    return JSONResponse(_model_card(request))


def _model_card(request: Request) -> dict:
    st = request.app.state
    return {"id": st.model_name, "object": "model", "created": 0, "owned_by": "radixserve",
            "max_model_len": st.engine.max_context_len}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    st, req = await read_openai(request, ChatCompletionRequest)
    params.check_n(req.n, 1, st.config.max_n)
    limits.check_tools(st.config, req.tools)
    plan = tools.plan(req, st.tools_native)
    found = structured.constraints_of(req)
    if plan.parses and found:
        raise APIError(400, f"'{found[0].param}' cannot be combined with tools unless tool_choice is 'none': "
                       "constraining the answer's text would leave no way to call a tool.", param=found[0].param)
    tool_constraint = tools.constraint(plan)
    constraint = structured.one_constraint(found + ([tool_constraint] if tool_constraint else []))
    prompt = params.chat_prompt(st.engine, tools.template_messages(req.messages, plan), tools.template_tools(plan),
                                req)
    names = params.chat_names(req, constraint)
    sp = params.chat_sampling(req, len(prompt), st.engine.max_context_len, names, st.default_max_tokens)
    prepared = prepare_all(st, [prompt], sp, names)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    texts = bodies.TokenTexts(st.engine.tokenizer)
    reader = (lambda: ToolReader(plan)) if plan.parses else None
    if req.stream:
        stream, ids = await stream_all(request, prepared, rid, req.cache_salt, names)
        usage = req.stream_options is not None and req.stream_options.include_usage
        events = _chat_events(stream, rid, st.model_name, usage, req.logprobs, texts, clock, reader,
                              req.include_stop_str_in_output)
        return sse_response(request, events, ids)
    groups = await generate_all(request, prepared, rid, req.cache_salt, clock, names)
    outputs = [bodies.with_stop_string(o, req.include_stop_str_in_output) for o in groups[0]]
    return JSONResponse(bodies.chat_completion(rid, st.model_name, outputs, texts, reader))


async def _chat_events(stream: Merged, rid: str, model: str, include_usage: bool, logprobs: bool,
                       texts: bodies.TokenTexts, clock: RequestClock,
                       reader: Callable[[], ToolReader] | None = None, keep_stop: bool = False
                       ) -> AsyncIterator[bytes]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    tracker, readers = UsageTracker(), {}

    def chunk(index: int, delta: dict, finish: str | None = None, lps: dict | None = None) -> bytes:
        body = {**base, "choices": [{"index": index, "delta": delta, "logprobs": lps, "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    async for p, d in stream:
        d = bodies.with_stop_string(d, keep_stop)
        tracker.add(p, d)
        clock.tokens(d.index, len(d.token_ids))
        if d.index not in readers:
            readers[d.index] = reader() if reader is not None else None
            yield chunk(d.index, {"role": "assistant", "content": ""})
        lps = bodies.chat_logprobs(d.logprobs, texts) if logprobs and d.token_ids else None
        tr = readers[d.index]
        if tr is None:
            if d.text or d.token_ids:
                yield chunk(d.index, {"content": d.text}, lps=lps)
        else:  # tool calls are read out of the text; logprobs travel in chunks of their own
            pieces = tr.feed(d.text) + (tr.finish() if d.finish_reason is not None else [])
            for piece in pieces:
                yield chunk(d.index, piece.delta())
            if lps is not None:
                yield chunk(d.index, {}, lps=lps)
        if d.finish_reason is not None:
            yield chunk(d.index, {}, finish=bodies.finish_reason(d.finish_reason, tr))
    clock.done()
    if include_usage:
        yield sse({**base, "choices": [], "usage": tracker.usage()})
    yield DONE
