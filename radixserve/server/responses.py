"""Response bodies in OpenAI (and native /generate) shape, built as plain dicts for orjson."""
from __future__ import annotations

import time
from typing import Any

from radixserve.outputs import RequestOutput, TokenLogprob


class TokenTexts:
    """Token id -> its text (what OpenAI reports as `token`), memoised per tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tok.decode([token_id])
            if len(self._cache) < 200_000:
                self._cache[token_id] = text
        return text


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def usage_of(groups: list[list[RequestOutput]]) -> dict:
    """One group per prompt (its n samples): the prompt counts once, every sample's tokens count."""
    prompt = sum(g[0].prompt_tokens for g in groups)
    cached = sum(g[0].cached_tokens for g in groups)
    completion = sum(o.completion_tokens for g in groups for o in g)
    return usage(prompt, completion, cached)


def chat_logprobs(logprobs: list[TokenLogprob] | None, texts: TokenTexts) -> dict | None:
    if logprobs is None:
        return None

    def entry(token_id: int, logprob: float) -> dict:
        t = texts(token_id)
        return {"token": t, "logprob": logprob, "bytes": list(t.encode("utf-8"))}

    return {"content": [{**entry(lp.token_id, lp.logprob),
                         "top_logprobs": [entry(i, v) for i, v in lp.top]} for lp in logprobs]}


def completion_logprobs(logprobs: list[TokenLogprob] | None, texts: TokenTexts, offset: int = 0) -> dict | None:
    """Legacy completions shape; text_offset counts characters from `offset`."""
    if logprobs is None:
        return None
    tokens, values, tops, offsets = [], [], [], []
    for lp in logprobs:
        t = texts(lp.token_id)
        tokens.append(t)
        values.append(lp.logprob)
        tops.append({texts(i): v for i, v in lp.top})
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_completion(rid: str, model: str, outputs: list[RequestOutput], texts: TokenTexts) -> dict:
    choices = [{"index": o.index,
                "message": {"role": "assistant", "content": o.text},
                "logprobs": chat_logprobs(o.logprobs, texts),
                "finish_reason": o.finish_reason} for o in outputs]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of([outputs])}


def completion(rid: str, model: str, groups: list[list[RequestOutput]], texts: TokenTexts) -> dict:
    n = len(groups[0])
    choices = [{"index": p * n + o.index, "text": o.text,
                "logprobs": completion_logprobs(o.logprobs, texts),
                "finish_reason": o.finish_reason} for p, g in enumerate(groups) for o in g]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of(groups)}


def _native_logprobs(logprobs: list[TokenLogprob] | None, texts: TokenTexts) -> tuple[list, list]:
    """SGLang's shape: [logprob, token_id, text] per token, and the top alternatives per position."""
    if logprobs is None:
        return [], []
    tokens = [[lp.logprob, lp.token_id, texts(lp.token_id)] for lp in logprobs]
    tops = [[[v, i, texts(i)] for i, v in lp.top] for lp in logprobs]
    return tokens, tops


def native(o: RequestOutput, texts: TokenTexts, with_logprobs: bool) -> dict:
    meta: dict[str, Any] = {"id": o.request_id, "prompt_tokens": o.prompt_tokens,
                            "cached_tokens": o.cached_tokens, "completion_tokens": o.completion_tokens,
                            "finish_reason": o.finish_reason, "matched_stop": o.matched_stop}
    if with_logprobs:
        meta["output_token_logprobs"], meta["output_top_logprobs"] = _native_logprobs(o.logprobs, texts)
        meta["input_token_logprobs"], meta["input_top_logprobs"] = _native_logprobs(o.prompt_logprobs, texts)
    return {"text": o.text, "output_ids": list(o.token_ids), "index": o.index, "meta_info": meta}
