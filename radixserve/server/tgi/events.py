"""TGI's stream (/generate_stream, and POST / with stream true): one server-sent event per token,
`{"index", "token": {"id", "text", "logprob", "special"}, "top_tokens", "generated_text": null,
"details": null}`; the last event carries generated_text and details (finish_reason, generated_tokens,
seed, input_length). No `[DONE]` follows, as TGI sends none.

The engine streams deltas (a delta may carry several tokens and the text they completed). Each
token gets its own text where those texts make the delta's text; otherwise the delta's text goes
on its last token. Either way the tokens' texts concatenate to generated_text, as clients that
join them (InferenceClient.text_generation(stream=True)) expect.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from radixserve.outputs import StreamDelta, TokenLogprob
from radixserve.server.metrics import RequestClock
from radixserve.server.streaming import sse
from radixserve.server.tgi.bodies import Tokens, seed_of
from radixserve.server.tgi.params import TGIPlan


def _texts(d: StreamDelta, tokens: Tokens) -> list[str]:
    own = ["" if t in tokens.special else tokens.text(t) for t in d.token_ids]
    if "".join(own) == d.text:
        return own
    return [""] * (len(d.token_ids) - 1) + [d.text]


def _finish(reason: str | None, last_token: int | None, plan: TGIPlan, stop_ids: set[int]) -> str:
    """TGI's spelling of the reason; a delta does not carry the matched stop, so a "stop" whose
    last token is not a stop token ended on a stop string."""
    if reason == "length":
        return "length"
    if plan.sp.stop and last_token is not None and last_token not in stop_ids:
        return "stop_sequence"
    return "eos_token"


async def tgi_events(stream: AsyncIterator[tuple[int, StreamDelta]], plan: TGIPlan, tokens: Tokens,
                     eos_ids: set[int], clock: RequestClock) -> AsyncIterator[bytes]:
    stop_ids = set(eos_ids) | set(plan.sp.stop_token_ids or ())
    pending: dict | None = None  # held back one token, so the last can carry generated_text and details
    text, count, last = "", 0, None
    async for _, d in stream:
        clock.tokens(0, len(d.token_ids))
        text += d.text
        lps: list[TokenLogprob | None] = list(d.logprobs or [])
        lps += [None] * (len(d.token_ids) - len(lps))
        for t, piece, lp in zip(d.token_ids, _texts(d, tokens), lps):
            if pending is not None:
                yield sse(pending)
            count += 1
            last = t
            pending = {"index": count, "token": tokens.token(t, lp.logprob if lp else None, piece),
                       "top_tokens": tokens.top(lp) if plan.top_n and lp else None,
                       "generated_text": None, "details": None}
        if not d.token_ids and d.text and pending is not None:
            pending["token"]["text"] += d.text
        if d.finish_reason is not None and pending is not None:
            pending["generated_text"] = plan.prefix + text
            pending["details"] = {"finish_reason": _finish(d.finish_reason, last, plan, stop_ids),
                                  "generated_tokens": count, "seed": seed_of(plan), "input_length": len(plan.prompt)}
    clock.done()
    if pending is not None:
        yield sse(pending)
