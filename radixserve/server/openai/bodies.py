"""Response bodies in OpenAI (and native /generate) shape, built as plain dicts for orjson."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple, Sequence, TypeVar

from radixserve.engine.detokenizer import IncrementalDetokenizer
from radixserve.outputs import RequestOutput, StreamDelta, TokenLogprob

O = TypeVar("O", RequestOutput, StreamDelta)


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


def with_stop_string(o: O, include: bool) -> O:
    """vLLM's include_stop_str_in_output: the stop string that ended `o` (an output, or a sample's
    finishing delta) put back at the end of its text. Stop tokens (EOS, stop_token_ids) are not text."""
    if include and o.finish_reason == "stop" and isinstance(o.matched_stop, str):
        return dataclasses.replace(o, text=o.text + o.matched_stop)
    return o


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


def char_offsets(tokenizer: Any, ids: Sequence[int], context: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> tuple[str, list[int]]:
    """Decode `ids` (after `context`) incrementally: (text, character offset in it where each
    token's text starts). A token that ends inside a multi-byte character gets the offset where
    that character starts; a skipped special token gets the offset of what follows."""
    detok = IncrementalDetokenizer(tokenizer, list(context), skip_special_tokens)
    pieces: list[str] = []
    offsets: list[int] = []
    n = 0  # characters emitted so far
    held: list[int] = []  # tokens whose text is held back (an incomplete character at its end)
    for i, t in enumerate(ids):
        if held:  # this token continues a held-back character: point past the complete ones before it
            left = (list(context) + list(ids[:i - len(held)]))[-4:]
            base = len(tokenizer.decode(left, skip_special_tokens=skip_special_tokens))
            text = tokenizer.decode(left + held, skip_special_tokens=skip_special_tokens)[base:]
            offsets.append(n + len(text.rstrip("\ufffd")))
        else:
            offsets.append(n)
        piece = detok.add([t])
        held = held + [t] if not piece else []
        pieces.append(piece)
        n += len(piece)
    pieces.append(detok.flush())
    return "".join(pieces), offsets


class EchoedPrompt(NamedTuple):
    """A prompt as /v1/completions echoes it: its text and each token's offset into that text."""

    ids: list[int]
    text: str
    offsets: list[int]


def echoed_prompt(tokenizer: Any, ids: list[int], skip_special_tokens: bool) -> EchoedPrompt:
    text, offsets = char_offsets(tokenizer, ids, (), skip_special_tokens)
    return EchoedPrompt(ids, text, offsets)


def completion_logprobs(logprobs: list[TokenLogprob] | None, texts: TokenTexts,
                        offsets: Sequence[int] | None = None, offset: int = 0) -> dict | None:
    """Legacy completions shape. text_offset: `offsets` (one per token) when given, else
    characters counted from `offset` over the tokens' own texts."""
    if logprobs is None:
        return None
    tokens, values, tops, offs = [], [], [], []
    for pos, lp in enumerate(logprobs):
        t = texts(lp.token_id)
        tokens.append(t)
        values.append(lp.logprob)
        tops.append({texts(i): v for i, v in lp.top})
        offs.append(offsets[pos] if offsets is not None else offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offs}


def prompt_logprobs_part(prompt: EchoedPrompt, lps: list[TokenLogprob] | None, texts: TokenTexts) -> dict:
    """The echoed prompt's share of `logprobs`: every prompt token, null for the first (nothing
    precedes it), the engine's prompt logprobs for the others."""
    if lps is None or len(lps) != len(prompt.ids) - 1:
        raise RuntimeError(f"expected {len(prompt.ids) - 1} prompt logprobs, got {None if lps is None else len(lps)}")
    return {"tokens": [texts(t) for t in prompt.ids],
            "token_logprobs": [None] + [lp.logprob for lp in lps],
            "top_logprobs": [None] + [{texts(i): v for i, v in lp.top} for lp in lps],
            "text_offset": list(prompt.offsets)}


def join_logprobs(first: dict | None, second: dict | None) -> dict | None:
    if first is None or second is None:
        return first or second
    return {key: first[key] + second[key] for key in first}


def completion_choice(index: int, o: RequestOutput, prompt_ids: list[int], prompt: EchoedPrompt | None,
                      want_logprobs: bool, tokenizer: Any, texts: TokenTexts, skip_special_tokens: bool) -> dict:
    """One choice of /v1/completions: with `prompt` (echo) the prompt text and tokens come first."""
    base = len(prompt.text) if prompt is not None else 0
    text = (prompt.text if prompt is not None else "") + o.text
    lps = None
    if want_logprobs:
        _, offs = char_offsets(tokenizer, o.token_ids, prompt_ids[-8:], skip_special_tokens)
        lps = completion_logprobs(o.logprobs, texts, [base + min(x, len(o.text)) for x in offs])
        if prompt is not None:
            lps = join_logprobs(prompt_logprobs_part(prompt, o.prompt_logprobs, texts), lps)
    return {"index": index, "text": text, "logprobs": lps, "finish_reason": o.finish_reason}


def best_of(group: list[RequestOutput], n: int) -> list[RequestOutput]:
    """The n samples with the highest total logprob (sum over their tokens), best first."""
    def score(o: RequestOutput) -> float:
        if o.logprobs is None:
            raise RuntimeError("best_of needs the samples' logprobs")
        return sum(lp.logprob for lp in o.logprobs)
    return sorted(group, key=lambda o: (-score(o), o.index))[:n]


def finish_reason(reason: str | None, reader: Any) -> str | None:
    """"tool_calls" when an answer that ended by itself called tools (OpenAI's rule)."""
    if reader is not None and reader.calls and reason == "stop":
        return "tool_calls"
    return reason


def chat_message(o: RequestOutput, reader: Any) -> dict:
    """The assistant message of one choice; with tools, calls are read out of its text."""
    if reader is None:
        return {"role": "assistant", "content": o.text}
    from radixserve.server.openai.tool_stream import assemble

    a = assemble(reader.feed(o.text) + reader.finish())
    if not a.tool_calls:
        return {"role": "assistant", "content": a.content or ""}
    return {"role": "assistant", "content": a.content, "tool_calls": a.tool_calls}


def chat_completion(rid: str, model: str, outputs: list[RequestOutput], texts: TokenTexts,
                    reader_factory: Any = None) -> dict:
    choices = []
    for o in outputs:
        reader = reader_factory() if reader_factory is not None else None
        choices.append({"index": o.index, "message": chat_message(o, reader),
                        "logprobs": chat_logprobs(o.logprobs, texts),
                        "finish_reason": finish_reason(o.finish_reason, reader)})
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of([outputs])}


def completion(rid: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}


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
