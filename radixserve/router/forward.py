"""What the router sends to a replica and how it reads the answers.

Every request reaches a replica as POST /generate with token ids (`input_ids`), the sampling
parameters the router computed with the server's own functions, and the cache_salt: the router
tokenises once, and the native answer carries the output token ids the mirror needs. OpenAI
answers (chat and completions, plain or streamed) are rebuilt at the router from the native ones
with the server's own response builders, so they are the ones a single server gives.
"""
from __future__ import annotations

from typing import Any

from radixserve.outputs import RequestOutput, StreamDelta, TokenLogprob
from radixserve.sampling_params import SamplingParams
from radixserve.server.protocol import NativeSamplingParams

_NATIVE_FIELDS = tuple(NativeSamplingParams.model_fields)


def native_body(prompts: list[list[int]], batched: bool, sp: SamplingParams, stream: bool,
                cache_salt: str | None) -> dict[str, Any]:
    """A /generate body that makes the replica build exactly `sp`."""
    body: dict[str, Any] = {
        "input_ids": prompts if batched else prompts[0],
        "sampling_params": {f: getattr(sp, f) for f in _NATIVE_FIELDS},
        "stream": stream, "cache_salt": cache_salt,
    }
    if sp.logprobs is not None:
        body["return_logprob"] = True
        body["top_logprobs_num"] = sp.logprobs
    if sp.prompt_logprobs_start is not None:
        if sp.logprobs is None or sp.prompt_top_logprobs != sp.logprobs:
            raise ValueError("prompt logprobs go through /generate only with return_logprob and the same top count")
        body["logprob_start_len"] = sp.prompt_logprobs_start
    return body


def _logprobs(tokens: list | None, tops: list | None) -> list[TokenLogprob] | None:
    """SGLang's native shape ([logprob, id, text] per token; alternatives as [logprob, id, text])."""
    if tokens is None:
        return None
    tops = tops or [[] for _ in tokens]
    return [TokenLogprob(tok[1], tok[0], [(alt[1], alt[0]) for alt in top]) for tok, top in zip(tokens, tops)]


def request_outputs(outputs: list[dict], n: int, with_logprobs: bool) -> list[list[RequestOutput]]:
    """Native results (flat index p * n + sample) -> one list per prompt, by sample index."""
    groups: dict[int, list[RequestOutput]] = {}
    for out in outputs:
        meta = out["meta_info"]
        p, i = divmod(out["index"], n)
        lps = _logprobs(meta.get("output_token_logprobs"), meta.get("output_top_logprobs")) if with_logprobs else None
        groups.setdefault(p, []).append(RequestOutput(
            request_id=meta["id"], text=out["text"], token_ids=list(out["output_ids"]),
            finish_reason=meta["finish_reason"], prompt_tokens=meta["prompt_tokens"],
            cached_tokens=meta["cached_tokens"], logprobs=lps, index=i, matched_stop=meta.get("matched_stop")))
    return [sorted(groups[p], key=lambda o: o.index) for p in sorted(groups)]


def whole_deltas(groups: list[list[RequestOutput]]) -> list[tuple[int, StreamDelta]]:
    """Finished outputs as one delta per sample (a stream that asked for logprobs is answered this
    way: the native stream carries no logprobs)."""
    return [(p, StreamDelta(o.request_id, o.index, o.text, o.token_ids, o.logprobs, o.finish_reason,
                            o.prompt_tokens, o.cached_tokens, o.completion_tokens))
            for p, g in enumerate(groups) for o in g]


class StreamDecoder:
    """Native stream chunks (text and ids so far, per flat index) -> (prompt index, StreamDelta)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._text: dict[int, int] = {}
        self._ids: dict[int, int] = {}
        self.last: dict[int, dict] = {}  # flat index -> its latest chunk

    def __call__(self, chunk: dict) -> tuple[int, StreamDelta]:
        flat = chunk["index"]
        meta = chunk["meta_info"]
        text, ids = chunk["text"], chunk["output_ids"]
        t0, i0 = self._text.get(flat, 0), self._ids.get(flat, 0)
        self._text[flat], self._ids[flat] = len(text), len(ids)
        self.last[flat] = chunk
        p, i = divmod(flat, self.n)
        return p, StreamDelta(meta["id"], i, text[t0:], list(ids[i0:]), None, meta["finish_reason"],
                              meta["prompt_tokens"], meta["cached_tokens"], meta["completion_tokens"])

    def finished(self, num_prompts: int) -> list[dict] | None:
        """The final chunk of every sample (as native results), or None if some did not finish."""
        if len(self.last) != num_prompts * self.n or any(c["meta_info"]["finish_reason"] is None
                                                         for c in self.last.values()):
            return None
        return [self.last[k] for k in sorted(self.last)]
