"""The OpenAI Responses API for text: POST /v1/responses, GET and DELETE /v1/responses/{id}.

A turn's prompt is its instructions (as the system message) and input messages through the chat
template; with `previous_response_id` it is the previous turn's stored tokens followed by the new
messages (see conversation.py), so everything the previous turn read or wrote is a cache hit.
Streams emit the events the openai SDK accumulates: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta...,
response.output_text.done, response.content_part.done, response.output_item.done, and
response.completed (or response.incomplete when max_output_tokens ended the answer).
"""
from __future__ import annotations

import time
import uuid
from array import array
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from radixserve.outputs import TokenLogprob
from radixserve.sampling_params import SamplingParams
from radixserve.server import conversation, limits, openai_fields, params, responses, structured
from radixserve.server.engine_io import JSONResponse, generate_all, sse_response, stream_all
from radixserve.server.errors import APIError, parse_body
from radixserve.server.metrics import RequestClock
from radixserve.server.response_store import ResponseStore, StoredResponse
from radixserve.server.responses_protocol import ResponsesRequest

router = APIRouter()

LOGPROBS_INCLUDE = "message.output_text.logprobs"


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    st = request.app.state
    req = await parse_body(request, ResponsesRequest)
    params.check_model(req.model, st.model_name)
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true.", param="stream_options")
    openai_fields.refuse(req, extra=openai_fields.RESPONSES_REFUSED)
    if req.text is not None:
        openai_fields.refuse(req.text, "text.")
    want_logprobs = _check_include(req)
    constraint = _text_format(req)
    turn = _turn_prompt(st.engine, st.responses, req)
    sp = _sampling(req, len(turn.ids), st.engine.max_context_len, want_logprobs, constraint)

    def param_of(message: str) -> str | None:
        return structured.request_param(constraint, message)

    limits.check_sampling(st.config, sp, {"max_new_tokens": "max_output_tokens", **params.constraint_names(constraint)})
    params.check_requests(st.engine, [turn.ids], sp, prompt_param="input", max_tokens_param="max_output_tokens",
                          param_of=param_of)
    turn_ctx = _Turn(req, turn, sp, st.model_name, st.engine.tokenizer, want_logprobs)
    clock = st.metrics.clock()
    if req.stream:
        stream, ids = await stream_all(request, [turn.ids], sp, turn_ctx.id, req.cache_salt, param_of)
        return sse_response(request, _events(stream, turn_ctx, st.responses, clock), ids)
    out = (await generate_all(request, [turn.ids], sp, turn_ctx.id, req.cache_salt, clock, param_of))[0][0]
    body = turn_ctx.finish(out.token_ids, out.text, out.logprobs, out.finish_reason, out.prompt_tokens,
                           out.cached_tokens, st.responses)
    return JSONResponse(body)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Response:
    return JSONResponse(_stored(request.app.state.responses, response_id, "response_id").body)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    store: ResponseStore = request.app.state.responses
    _stored(store, response_id, "response_id")
    store.delete(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


def _stored(store: ResponseStore, response_id: str, param: str, namespace: tuple[str | None] | None = None
            ) -> StoredResponse:
    """The stored response, or 404. With `namespace` = (cache_salt,), only one stored under that
    salt: a follow-up never continues another namespace's conversation."""
    item = store.get(response_id)
    if item is None or (namespace is not None and item.cache_salt != namespace[0]):
        raise APIError(404, f"Response '{response_id}' is not stored on this server: it was created with "
                       f"store=false, deleted, or evicted (the server keeps the {store.max_responses} most "
                       f"recently used responses, {store.max_tokens} conversation tokens in all, in memory "
                       "until restart), or it never existed here. Send the whole conversation as input instead.",
                       param=param, code="response_not_found")
    return item


def _check_include(req: ResponsesRequest) -> bool:
    for i, item in enumerate(req.include or []):
        if item != LOGPROBS_INCLUDE:
            raise APIError(400, f"include value {item!r} is not supported; this server can include only "
                           f"{LOGPROBS_INCLUDE!r}.", param=f"include[{i}]", code="unsupported_parameter")
    return LOGPROBS_INCLUDE in (req.include or [])


def _messages(req: ResponsesRequest) -> list[dict]:
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    if not req.input and req.previous_response_id is None:
        raise APIError(400, "input must contain at least one message.", param="input")
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.input]


def _turn_prompt(engine: Any, store: ResponseStore, req: ResponsesRequest) -> conversation.TurnPrompt:
    messages = _messages(req)
    if req.previous_response_id is None:
        return conversation.first_turn(engine, req.instructions, messages)
    prev = _stored(store, req.previous_response_id, "previous_response_id", (req.cache_salt,))
    return conversation.follow_up(engine, prev, req.instructions, messages)


def _text_format(req: ResponsesRequest) -> structured.Constraint | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return structured.Constraint("json_schema", structured.JSON_OBJECT, "text.format")
    return structured.Constraint("json_schema", fmt.schema_, "text.format.schema")


def _sampling(req: ResponsesRequest, prompt_len: int, max_context_len: int, want_logprobs: bool,
              constraint: structured.Constraint | None) -> SamplingParams:
    fields: dict[str, Any] = {
        **structured.sampling_fields(constraint),
        "max_new_tokens": req.max_output_tokens if req.max_output_tokens is not None
        else max(1, max_context_len - prompt_len),
        "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, "top_k": req.top_k,
        "min_p": req.min_p, "repetition_penalty": req.repetition_penalty, "logit_bias": req.logit_bias,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
    }
    if want_logprobs:
        fields["logprobs"] = req.top_logprobs or 0
    elif req.top_logprobs:
        raise APIError(400, f"top_logprobs needs include=[{LOGPROBS_INCLUDE!r}].", param="top_logprobs")
    return params.make_sampling({k: v for k, v in fields.items() if v is not None},
                                {"max_new_tokens": "max_output_tokens", "logprobs": "top_logprobs",
                                 **params.constraint_names(constraint)})


class _Turn:
    """One response being made: its ids, the response object in each state, and storing it."""

    def __init__(self, req: ResponsesRequest, turn: conversation.TurnPrompt, sp: SamplingParams, model: str,
                 tokenizer: Any, want_logprobs: bool) -> None:
        self.req, self.turn, self.sp, self.model = req, turn, sp, model
        self.texts = responses.TokenTexts(tokenizer)
        self.want_logprobs = want_logprobs
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())

    def body(self, status: str, output: list[dict], usage: dict | None, incomplete: str | None = None) -> dict:
        req = self.req
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls, "metadata": req.metadata or {}, "model": self.model,
            "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": req.store is not False,
            "temperature": self.sp.temperature, "text": self.text_config(),
            "tool_choice": "auto", "tools": [], "top_logprobs": req.top_logprobs or 0, "top_p": self.sp.top_p,
            "truncation": "disabled", "usage": usage, "user": req.user,
        }

    def text_config(self) -> dict:
        fmt = self.req.text.format if self.req.text is not None else None
        return {"format": {"type": "text"} if fmt is None else fmt.model_dump(by_alias=True, exclude_none=True)}

    def message(self, text: str, status: str, lps: list[TokenLogprob] | None) -> dict:
        part = {"type": "output_text", "text": text, "annotations": [],
                "logprobs": self.output_logprobs(lps) if self.want_logprobs else []}
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": [part]}

    def output_logprobs(self, lps: list[TokenLogprob] | None) -> list[dict]:
        def entry(token_id: int, logprob: float) -> dict:
            t = self.texts(token_id)
            return {"token": t, "bytes": list(t.encode("utf-8")), "logprob": logprob}
        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
                for lp in lps or []]

    def finish(self, token_ids: list[int], text: str, lps: list[TokenLogprob] | None, finish_reason: str | None,
               prompt_tokens: int, cached_tokens: int, store: ResponseStore) -> dict:
        """The final response object; stored (unless store=false) for follow-ups and GET."""
        incomplete = "max_output_tokens" if finish_reason == "length" else None
        status = "incomplete" if incomplete else "completed"
        usage = {"input_tokens": prompt_tokens,
                 "input_tokens_details": {"cached_tokens": cached_tokens,
                                          "cache_write_tokens": prompt_tokens - cached_tokens},
                 "output_tokens": len(token_ids), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt_tokens + len(token_ids)}
        body = self.body(status, [self.message(text, status, lps)], usage, incomplete)
        if self.req.store is not False and finish_reason in ("stop", "length"):
            store.put(StoredResponse(
                id=self.id, tokens=array("l", self.turn.ids + list(token_ids)),
                messages=tuple(self.turn.messages + [{"role": "assistant", "content": text}]),
                instructions=self.req.instructions, cache_salt=self.req.cache_salt, body=body))
        return body


async def _events(stream: AsyncIterator, t: _Turn, store: ResponseStore, clock: RequestClock) -> AsyncIterator[bytes]:
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    at = {"item_id": t.message_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=t.body("in_progress", [], None))
    yield event("response.in_progress", response=t.body("in_progress", [], None))
    yield event("response.output_item.added", output_index=0,
                item={**t.message("", "in_progress", None), "content": []})
    yield event("response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": [],
                                                            "logprobs": []})
    text, ids, lps = "", [], []
    finish, prompt_tokens, cached = None, 0, 0
    async for _, d in stream:
        clock.tokens(0, len(d.token_ids))
        prompt_tokens, cached = d.prompt_tokens, d.cached_tokens
        ids += d.token_ids
        lps += d.logprobs or []
        text += d.text
        if d.text or (t.want_logprobs and d.logprobs):
            delta_lps = [{k: v for k, v in e.items() if k != "bytes"} | {
                "top_logprobs": [{"token": x["token"], "logprob": x["logprob"]} for x in e["top_logprobs"]]}
                for e in t.output_logprobs(d.logprobs)] if t.want_logprobs else []
            yield event("response.output_text.delta", **at, delta=d.text, logprobs=delta_lps)
        if d.finish_reason is not None:
            finish = d.finish_reason
    clock.done()
    body = t.finish(ids, text, lps if t.want_logprobs else None, finish, prompt_tokens, cached, store)
    item = body["output"][0]
    yield event("response.output_text.done", **at, text=text, logprobs=item["content"][0]["logprobs"])
    yield event("response.content_part.done", **at, part=item["content"][0])
    yield event("response.output_item.done", output_index=0, item=item)
    yield event("response.incomplete" if body["status"] == "incomplete" else "response.completed", response=body)
