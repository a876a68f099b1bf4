"""POST /v1/completions: the legacy text completion API, with echo, prompt logprobs and best_of.

`echo` puts the prompt (as the model saw it: its tokens decoded) in front of each choice's text;
with `logprobs` it also reports every prompt token, null for the first (nothing precedes it).
That is what evaluation harnesses use to score a continuation (`max_tokens` 0 or 1).
`best_of` > n samples best_of candidates per prompt and returns the n with the highest total
logprob; usage counts every candidate's tokens, as they were all generated.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response

from radixserve.outputs import StreamDelta
from radixserve.server import limits
from radixserve.server.openai import bodies, params, structured
from radixserve.server.engine_io import JSONResponse, UsageTracker, generate_all, sse_response, stream_all
from radixserve.server.metrics import RequestClock
from radixserve.server.prologue import prepare_all, read_openai
from radixserve.server.openai.protocol import CompletionRequest
from radixserve.server.streaming import DONE, sse

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    st, req = await read_openai(request, CompletionRequest)
    if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int):
        limits.check_prompt_count(st.config, len(req.prompt), "prompt")
    prompts = params.completion_prompts(st.engine, req.prompt)
    params.check_n(req.n, len(prompts), st.config.max_n)
    names = params.completion_names(structured.one_constraint(structured.constraints_of(req)))
    sp = params.completion_sampling(req, st.config.max_n, names)
    prepared = prepare_all(st, prompts, sp, names)
    rid = f"cmpl-{uuid.uuid4().hex}"
    clock = st.metrics.clock()
    tok = st.engine.tokenizer
    texts = bodies.TokenTexts(tok)
    echoed = [bodies.echoed_prompt(tok, p, sp.skip_special_tokens) for p in prompts] if req.echo else None
    if req.stream:
        stream, ids = await stream_all(request, prepared, rid, req.cache_salt, names)
        usage = req.stream_options is not None and req.stream_options.include_usage
        events = _events(stream, rid, st.model_name, req.n, usage, texts, echoed, req.logprobs is not None, clock,
                         req.include_stop_str_in_output)
        return sse_response(request, events, ids)
    groups = await generate_all(request, prepared, rid, req.cache_salt, clock, names)
    usage = bodies.usage_of(groups)  # every best_of candidate was generated, so every one counts
    choices = []
    for p, group in enumerate(groups):
        kept = bodies.best_of(group, req.n) if len(group) > req.n else group
        for i, o in enumerate(kept):
            o = bodies.with_stop_string(o, req.include_stop_str_in_output)
            choices.append(bodies.completion_choice(
                p * req.n + i, o, prompts[p], echoed[p] if echoed else None, req.logprobs is not None,
                tok, texts, sp.skip_special_tokens))
    return JSONResponse(bodies.completion(rid, st.model_name, choices, usage))


async def _events(stream: AsyncIterator[tuple[int, StreamDelta]], rid: str, model: str, n: int,
                  include_usage: bool, texts: bodies.TokenTexts, echoed: list[bodies.EchoedPrompt] | None,
                  want_logprobs: bool, clock: RequestClock, keep_stop: bool = False) -> AsyncIterator[bytes]:
    base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    tracker, offsets = UsageTracker(), {}

    def chunk(index: int, text: str, lps: dict | None, finish: str | None) -> bytes:
        body = {**base, "choices": [{"index": index, "text": text, "logprobs": lps, "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    async for p, d in stream:
        d = bodies.with_stop_string(d, keep_stop)
        tracker.add(p, d)
        index = p * n + d.index
        clock.tokens(index, len(d.token_ids))
        if index not in offsets:
            offsets[index] = 0
            if echoed is not None:  # the prompt goes first, in a chunk of its own
                prompt = echoed[p]
                lps = bodies.prompt_logprobs_part(prompt, d.prompt_logprobs, texts) if want_logprobs else None
                yield chunk(index, prompt.text, lps, None)
                offsets[index] = len(prompt.text)
        lps = bodies.completion_logprobs(d.logprobs or [], texts, offset=offsets[index]) if want_logprobs else None
        offsets[index] += len(d.text)
        yield chunk(index, d.text, lps, d.finish_reason)
    clock.done()
    if include_usage:
        yield sse({**base, "choices": [], "usage": tracker.usage()})
    yield DONE
