"""Ollama's HTTP API: /api/chat and /api/generate (NDJSON streams by default), /api/tags,
/api/show, /api/ps, /api/version; any other /api/* path is a 404 saying what is served.

Per request field (README "Ollama API" lists the same):
- model: any name is accepted (clients send "llama3"); responses name the served model.
- format ("json" | a JSON Schema), options (options.py), stream, logprobs/top_logprobs: honoured.
- keep_alive: accepted, nothing to do (the model stays loaded for the server's lifetime).
- think: false is accepted; true or a level is a 400 (this engine has no thinking mode to switch).
- tools: offered as /v1/chat/completions offers them with tool_choice "auto" (tools.py); calls
  come back as message.tool_calls; tool results go back as role "tool" messages.
- images (top level or in a message), template, suffix, and the image
  generation fields (width, height, steps): a 400 saying why.
- generate: `system` and the prompt are rendered with the model's chat template (as a system and
  a user message), `raw: true` sends the prompt's tokens as they are; `context` (token ids of an
  earlier exchange, as returned in the last object) is prepended; the last object returns the new
  `context` (none with raw, as Ollama does).
- An empty prompt (generate) or no messages (chat) answers at once with done_reason "load", which
  clients use to preload a model.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from radixserve.server.engine_io import JSONResponse, stream_all
from radixserve.server.errors import APIError, parse_body
from radixserve.server.ollama import ndjson, options, tools
from radixserve.server.ollama.errors import OllamaRoute
from radixserve.server.ollama.model_facts import ModelFacts, read_facts
from radixserve.server.ollama.protocol import ChatBody, GenerateBody, GenerateCommon, ShowBody
from radixserve.server.openai import bodies, params
from radixserve.server.openai import tools as openai_tools
from radixserve.server.openai.params import ParamNames
from radixserve.server.openai.tool_stream import ToolReader
from radixserve.server.prologue import prepare_all
from radixserve.server.streaming import until_disconnect

# NOTE: the Ollama server release whose API these routes follow; clients gate features on it
# (structured outputs need >= 0.5), so it is Ollama's version line, not radixserve's.
OLLAMA_API_VERSION = "0.13.0"
NEVER = "9999-12-31T23:59:59Z"  # /api/ps expires_at: the model is never unloaded

router = APIRouter(route_class=OllamaRoute)


def _refuse(param: str, reason: str) -> APIError:
    return APIError(400, f"'{param}' is not supported by this server: {reason}", param=param)


def _check_common(body: GenerateCommon) -> None:
    if body.think not in (None, False):
        raise _refuse("think", "this model has no thinking mode; leave think out or set it to false")


async def _respond(request: Request, prompt: list[int], body: GenerateCommon, names: ParamNames, kind: str,
                   shape: Callable[[ndjson.Part], dict],
                   extra_final: Callable[[ndjson.Generation], dict] | None = None,
                   reader: ToolReader | None = None) -> Response:
    """Run `prompt` with the body's options; stream NDJSON lines or answer one object. `shape(part)`
    is the route's content fields, `extra_final(gen)` more fields of the last object, `reader`
    reads tool calls out of the text."""
    st = request.app.state
    sp = options.sampling(body, len(prompt), st.engine.max_context_len, names)
    prepared = prepare_all(st, [prompt], sp, names)
    rid = f"ollama-{kind}-{uuid.uuid4().hex}"
    gen = ndjson.Generation(bodies.TokenTexts(st.engine.tokenizer), bool(body.logprobs), st.metrics.clock(), reader)
    stream, ids = await stream_all(request, prepared, rid, None, names)
    base = {"model": st.model_name}

    def final(g: ndjson.Generation) -> dict:
        return {**g.done(), **(extra_final(g) if extra_final is not None else {})}

    if body.stream:
        return ndjson.ndjson_response(st.engine, ndjson.stream_lines(stream, gen, shape, base, final), ids)

    def abort_all() -> None:
        for req_id in ids:
            st.engine.abort(req_id)

    await until_disconnect(request, ndjson.collect(stream, gen), abort_all)
    return JSONResponse({**base, "created_at": ndjson.created_at(), **shape(gen.whole()), **final(gen)})


def _loaded(request: Request, body: GenerateCommon, content: dict) -> Response:
    """The answer to a request with nothing to generate: the model is loaded (it always is)."""
    obj = {"model": request.app.state.model_name, "created_at": ndjson.created_at(), **content,
           "done": True, "done_reason": "load"}
    return Response(ndjson.line(obj), media_type=ndjson.MEDIA_TYPE) if body.stream else JSONResponse(obj)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    st = request.app.state
    body = await parse_body(request, ChatBody)
    _check_common(body)
    if not body.messages:
        return _loaded(request, body, {"message": {"role": "assistant", "content": ""}})
    plan = tools.plan(body.tools, st.tools_native)
    constraint = options.constraint(body.format)
    if plan.parses and constraint is not None:
        raise APIError(400, "'format' cannot be combined with tools: constraining the answer's text would leave "
                       "no way to call a tool.", param="format")
    messages = openai_tools.template_messages(tools.chat_messages(body.messages), plan)
    prompt = params.chat_prompt(st.engine, messages, openai_tools.template_tools(plan))
    names = options.names(constraint, "messages")

    def shape(part: ndjson.Part) -> dict:
        message = {"role": "assistant", "content": part["text"]}
        if part["tool_calls"]:
            message["tool_calls"] = part["tool_calls"]
        return {"message": message, **({"logprobs": part["logprobs"]} if part["logprobs"] else {})}

    return await _respond(request, prompt, body, names, "chat", shape, reader=tools.reader_of(plan))


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    st = request.app.state
    body = await parse_body(request, GenerateBody)
    _check_common(body)
    if body.images:
        raise _refuse("images", "this server serves a text-only model")
    for name in ("width", "height", "steps"):
        if getattr(body, name) is not None:
            raise _refuse(name, "this server serves a text model, not an image-generation model")
    if body.template:
        raise _refuse("template", "prompts are rendered with the model's own chat template (a Jinja template, "
                      "not a Go one); send raw: true with a prompt you formatted yourself instead")
    if body.suffix:
        raise _refuse("suffix", "fill-in-the-middle prompts are not built here; send raw: true with the "
                      "model's own FIM format instead")
    if body.raw and body.system:
        raise APIError(400, "'system' cannot be combined with raw: true: a raw prompt is sent as it is, so put "
                       "the system text in the prompt yourself.", param="system")
    if not body.prompt and not body.context:
        return _loaded(request, body, {"response": ""})
    if body.raw:
        ids = params.encode(st.engine, body.prompt or "")
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
                   [{"role": "user", "content": body.prompt or ""}]
        ids = params.chat_prompt(st.engine, messages)
    prompt = list(body.context or []) + ids
    names = options.names(options.constraint(body.format), "context" if body.context else "prompt")

    def shape(part: ndjson.Part) -> dict:
        return {"response": part["text"], **({"logprobs": part["logprobs"]} if part["logprobs"] else {})}

    def context(g: ndjson.Generation) -> dict:
        return {} if body.raw else {"context": prompt + g.token_ids}

    return await _respond(request, prompt, body, names, "generate", shape, context)


# ---- the model: list, show, ps, version ------------------------------------------------------------

async def _facts(request: Request) -> ModelFacts:
    st = request.app.state
    facts = getattr(st, "ollama_facts", None)
    if facts is None:
        facts = st.ollama_facts = await asyncio.to_thread(read_facts, st.engine)
    return facts


def _known(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    st, facts = request.app.state, await _facts(request)
    return JSONResponse({"models": [_known({"name": st.model_name, "model": st.model_name,
                                            "modified_at": facts.modified_at, "size": facts.size,
                                            "details": facts.details()})]})


@router.post("/api/show")
async def show(request: Request) -> Response:
    st = request.app.state
    body = await parse_body(request, ShowBody)
    if not (body.model or body.name):
        raise APIError(400, "Missing required parameter: model", param="model")
    facts = await _facts(request)
    info: dict[str, Any] = {**facts.extra_info, "general.parameter_count": facts.parameter_count}
    if facts.family is not None:
        info["general.architecture"] = facts.family
        info[f"{facts.family}.context_length"] = st.engine.max_context_len
    return JSONResponse(_known({"modified_at": facts.modified_at, "details": facts.details(),
                                "model_info": _known(info), "capabilities": ["completion"],
                                "template": getattr(st.engine.tokenizer, "chat_template", None)}))


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    st, facts = request.app.state, await _facts(request)
    return JSONResponse({"models": [_known({"name": st.model_name, "model": st.model_name, "size": facts.size,
                                            "details": facts.details(), "expires_at": NEVER,
                                            "context_length": st.engine.max_context_len})]})


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    """Ollama answers its root with a line of text; clients probe it to see a server is up."""
    return Response("radixserve is running (Ollama API under /api, OpenAI API under /v1)\n", media_type="text/plain")


@router.get("/api/version")
async def version() -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION})


@router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
async def unsupported(rest: str, request: Request) -> Response:
    return ndjson.error_response(404, f"{request.method} /api/{rest} is not served here: radixserve serves one "
                                 "model, loaded at start (no pull, push, create, copy, delete, embed); served: "
                                 "/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version")
