"""The OpenAI Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id}.

A turn's prompt is its instructions (as the system message) and input messages through the chat
template; with `previous_response_id` it is the previous turn's stored tokens followed by the new
messages (see conversation.py), so everything the previous turn read or wrote is a cache hit.
Streams emit the events the openai SDK accumulates: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta...,
response.output_text.done, response.content_part.done, response.output_item.done, and
response.completed (or response.incomplete when max_output_tokens ended the answer).

Function tools go through the machinery of /v1/chat/completions (tools.py, tool_stream.py): the
same prompt, the same constraints for a required or named tool_choice, the same reading of calls
out of the text; calls come out as `function_call` items (responses_api/output_items.py), streamed with
response.function_call_arguments.delta / .done, and come back as `function_call_output` input
items (input_items.py), on a follow-up that continues from the stored tokens.
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
from radixserve.server.openai import bodies, field_policy, params, structured
from radixserve.server.responses_api import conversation, input_items
from radixserve.engine.interface import EngineHandle
from radixserve.server.engine_io import JSONResponse, generate_all, sse_response, stream_all
from radixserve.server.errors import APIError
from radixserve.server.metrics import RequestClock
from radixserve.server.prologue import prepare_all, read_openai
from radixserve.server.responses_api.store import ResponseStore, StoredResponse
from radixserve.server.responses_api.output_items import Event, OutputItems
from radixserve.server.responses_api.protocol import ResponsesRequest
from radixserve.server.openai.tool_stream import Piece, ToolReader
from radixserve.server.openai.tools import ToolPlan
from radixserve.server.openai.defaults import default_max_new

router = APIRouter()

LOGPROBS_INCLUDE = "message.output_text.logprobs"


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    st, req = await read_openai(request, ResponsesRequest, field_policy.RESPONSES_REFUSED)
    if req.text is not None:
        field_policy.refuse(req.text, "text.")
    want_logprobs = _check_include(req)
    plan = input_items.tool_plan(req, st.tools_native)
    constraint = _constraint(req, plan, want_logprobs)
    turn = _turn_prompt(st.engine, st.responses, req, plan)
    names = params.ParamNames({"max_new_tokens": "max_output_tokens", "logprobs": "top_logprobs"}, prompt="input",
                              constraint=constraint)
    sp = _sampling(req, len(turn.ids), st.engine.max_context_len, want_logprobs, names, st.default_max_tokens)
    prepared = prepare_all(st, [turn.ids], sp, names)
    turn_ctx = _Turn(req, turn, sp, st.model_name, st.engine.tokenizer, want_logprobs, plan)
    clock = st.metrics.clock()
    if req.stream:
        stream, ids = await stream_all(request, prepared, turn_ctx.id, req.cache_salt, names)
        return sse_response(request, _events(stream, turn_ctx, st.responses, clock), ids)
    out = (await generate_all(request, prepared, turn_ctx.id, req.cache_salt, clock, names))[0][0]
    turn_ctx.add(out.text, out.logprobs)
    body = turn_ctx.finish(out.token_ids, out.finish_reason, out.prompt_tokens, out.cached_tokens, st.responses)
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


def _turn_prompt(engine: EngineHandle, store: ResponseStore, req: ResponsesRequest, plan: ToolPlan) -> conversation.TurnPrompt:
    rendering = conversation.Rendering(req.instructions, plan)
    if req.previous_response_id is None:
        return conversation.first_turn(engine, rendering, input_items.messages(req, ()))
    prev = _stored(store, req.previous_response_id, "previous_response_id", (req.cache_salt,))
    return conversation.follow_up(engine, prev, rendering, input_items.messages(req, prev.messages))


def _constraint(req: ResponsesRequest, plan: ToolPlan, want_logprobs: bool) -> structured.Constraint | None:
    """text.format's constraint, or the one a required or named tool_choice puts on the answer."""
    text = _text_format(req)
    if plan.parses and text is not None:
        raise APIError(400, "'text.format' cannot be combined with tools unless tool_choice is 'none': "
                       "constraining the answer's text would leave no way to call a tool.", param="text.format")
    if plan.parses and want_logprobs:
        raise APIError(400, f"include {LOGPROBS_INCLUDE!r} is not available with tools (unless tool_choice is "
                       "'none'): the answer's tokens are split between text and function calls.", param="include",
                       code="unsupported_parameter")
    return text if text is not None else input_items.tool_constraint(plan)


def _text_format(req: ResponsesRequest) -> structured.Constraint | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return structured.Constraint("json_schema", structured.JSON_OBJECT, "text.format")
    return structured.Constraint("json_schema", fmt.schema_, "text.format.schema")


def _sampling(req: ResponsesRequest, prompt_len: int, max_context_len: int, want_logprobs: bool,
              names: params.ParamNames, default_max: int) -> SamplingParams:
    fields: dict[str, Any] = {
        **structured.sampling_fields(names.constraint),
        "max_new_tokens": req.max_output_tokens if req.max_output_tokens is not None
        else default_max_new(default_max, prompt_len, max_context_len),
        "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, "top_k": req.top_k,
        "min_p": req.min_p, "repetition_penalty": req.repetition_penalty, "logit_bias": req.logit_bias,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
    }
    if want_logprobs:
        fields["logprobs"] = req.top_logprobs or 0
    elif req.top_logprobs:
        raise APIError(400, f"top_logprobs needs include=[{LOGPROBS_INCLUDE!r}].", param="top_logprobs")
    return params.make_sampling({k: v for k, v in fields.items() if v is not None}, names)


class _Turn:
    """One response being made: its ids, its output items as the answer arrives, the response
    object in each state, and storing it."""

    def __init__(self, req: ResponsesRequest, turn: conversation.TurnPrompt, sp: SamplingParams, model: str,
                 tokenizer: Any, want_logprobs: bool, plan: ToolPlan) -> None:
        self.req, self.turn, self.sp, self.model, self.plan = req, turn, sp, model, plan
        self.texts = bodies.TokenTexts(tokenizer)
        self.want_logprobs = want_logprobs
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.reader = ToolReader(plan) if plan.parses else None
        self.output = OutputItems(eager_message=self.reader is None)
        self.closing: list[Event] = []  # the events that close the output, once `finish` ran

    def body(self, status: str, output: list[dict], usage: dict | None, incomplete: str | None = None) -> dict:
        req = self.req
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls, "metadata": req.metadata or {}, "model": self.model,
            "output": output, "parallel_tool_calls": self.plan.parallel,
            "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": req.store is not False,
            "temperature": self.sp.temperature, "text": self.text_config(),
            "tool_choice": self.tool_choice(), "tools": input_items.tool_dicts(req),
            "top_logprobs": req.top_logprobs or 0, "top_p": self.sp.top_p,
            "truncation": "disabled", "usage": usage, "user": req.user,
        }

    def tool_choice(self) -> str | dict:
        if self.plan.mode == "named":
            return {"type": "function", "name": self.plan.named}
        return self.req.tool_choice if isinstance(self.req.tool_choice, str) else "auto"

    def text_config(self) -> dict:
        fmt = self.req.text.format if self.req.text is not None else None
        return {"format": {"type": "text"} if fmt is None else fmt.model_dump(by_alias=True, exclude_none=True)}

    def output_logprobs(self, lps: list[TokenLogprob] | None) -> list[dict]:
        def entry(token_id: int, logprob: float) -> dict:
            t = self.texts(token_id)
            return {"token": t, "bytes": list(t.encode("utf-8")), "logprob": logprob}
        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
                for lp in lps or []]

    def add(self, text: str, lps: list[TokenLogprob] | None, final: bool = True) -> list[Event]:
        """Generated text (and its tokens' logprobs): the events it makes. `final` = the answer ended."""
        if self.reader is None:
            if not (text or (self.want_logprobs and lps)):
                return []
            entries = self.output_logprobs(lps) if self.want_logprobs else []
            delta_lps = [{k: v for k, v in e.items() if k != "bytes"} | {
                "top_logprobs": [{"token": x["token"], "logprob": x["logprob"]} for x in e["top_logprobs"]]}
                for e in entries]
            return self.output.text(text, entries, delta_lps)
        pieces: list[Piece] = self.reader.feed(text) + (self.reader.finish() if final else [])
        return [e for p in pieces for e in self.output.piece(p)]

    def finish(self, token_ids: list[int], finish_reason: str | None, prompt_tokens: int, cached_tokens: int,
               store: ResponseStore) -> dict:
        """The final response object (after the last `add`); stored (unless store=false) for
        follow-ups and GET."""
        incomplete = "max_output_tokens" if finish_reason == "length" else None
        status = "incomplete" if incomplete else "completed"
        # NOTE: only a named tool_choice streams a call's arguments before they are whole
        self.closing = self.output.finish(status, status if self.plan.mode == "named" else "completed")
        usage = {"input_tokens": prompt_tokens,
                 "input_tokens_details": {"cached_tokens": cached_tokens,
                                          "cache_write_tokens": prompt_tokens - cached_tokens},
                 "output_tokens": len(token_ids), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt_tokens + len(token_ids)}
        body = self.body(status, self.output.items, usage, incomplete)
        if self.req.store is not False and finish_reason in ("stop", "length"):
            answer = self.output.as_message()
            message: dict = {"role": "assistant", "content": answer.content}
            if answer.tool_calls:
                message["tool_calls"] = answer.tool_calls
            store.put(StoredResponse(
                id=self.id, tokens=array("l", self.turn.ids + list(token_ids)),
                messages=tuple(self.turn.messages + [message]), head=self.turn.head,
                cache_salt=self.req.cache_salt, body=body))
        return body


async def _events(stream: AsyncIterator, t: _Turn, store: ResponseStore, clock: RequestClock) -> AsyncIterator[bytes]:
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    yield event("response.created", response=t.body("in_progress", [], None))
    yield event("response.in_progress", response=t.body("in_progress", [], None))
    for kind, fields in t.output.start():
        yield event(kind, **fields)
    ids: list[int] = []
    finish, prompt_tokens, cached = None, 0, 0
    async for _, d in stream:
        clock.tokens(0, len(d.token_ids))
        prompt_tokens, cached = d.prompt_tokens, d.cached_tokens
        ids += d.token_ids
        for kind, fields in t.add(d.text, d.logprobs, final=d.finish_reason is not None):
            yield event(kind, **fields)
        if d.finish_reason is not None:
            finish = d.finish_reason
    clock.done()
    body = t.finish(ids, finish, prompt_tokens, cached, store)
    for kind, fields in t.closing:
        yield event(kind, **fields)
    yield event("response.incomplete" if body["status"] == "incomplete" else "response.completed", response=body)
