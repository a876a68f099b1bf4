"""RuntimeEndpoint: programs run on a `radixserve serve` server through its native /generate API.

The program's state is token ids, so requests carry `input_ids`, tokenised on the client with the
same tokenizer the server uses (checked against the server's /tokenize at construction, text and
chat template both). Generations are streamed, so `abort` can close the connection, which makes
the server abort the request and free its slots.
"""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any, Sequence

from radixserve.lang.backend.base import Aborted, Backend, GenOutput, OnChunk, ScoreOutput, ScoreRequest
from radixserve.lang.ir import grammar_fields
from radixserve.sampling_params import SamplingParams

# SamplingParams fields the native API takes inside `sampling_params` (structured output added
# when this build has it); logprob fields travel at the top level of the body instead.
_NATIVE_FIELDS = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p",
                  "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop",
                  "stop_token_ids", "ignore_eos", "skip_special_tokens")
_PROBE = "Token check: naïve café, 東京, 3.14159 — ok?\n  indented\tline"


class EndpointError(RuntimeError):
    """The server answered with an error that is not about the request's arguments."""


class RuntimeEndpoint(Backend):
    """`RuntimeEndpoint(base_url, api_key=None, tokenizer=None)`.

    `tokenizer`: the served model's tokenizer (a HF directory, a .gguf file, or a loaded
    tokenizer); None = the embedded SmolLM2 tokenizer. Construction fails with a ValueError when
    it does not tokenise like the server does."""

    def __init__(self, base_url: str, api_key: str | None = None, tokenizer: Any = None,
                 timeout_s: float | None = 600.0) -> None:
        super().__init__()
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # NOTE: many programs of a run_batch stream at once: no connection limit, so none waits for a slot.
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout_s, connect=10.0),
                                  limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._aborted: set[str] = set()
        try:
            self._http.get("/health").raise_for_status()
        except httpx.HTTPError as exc:
            self._http.close()
            raise ValueError(f"no radixserve server answers at {self.base_url} ({exc})") from exc
        self.tokenizer = _load_tokenizer(tokenizer)
        self._check_tokenizer()

    def shutdown(self) -> None:
        self._http.close()

    # ---- engine calls ---------------------------------------------------------------------------
    def generate(self, input_ids: list[int], params: SamplingParams, rid: str,
                 on_chunk: OnChunk | None = None) -> GenOutput:
        body: dict[str, Any] = {"input_ids": list(input_ids), "sampling_params": _native_params(params)}
        self._start(rid)
        try:
            if params.logprobs is not None:
                # NOTE: the native stream carries no logprobs; this call cannot be interrupted by abort.
                body.update(return_logprob=True, top_logprobs_num=params.logprobs)
                out = self._post("/generate", body)
                meta = out["meta_info"]
                if on_chunk is not None and (out["text"] or out["output_ids"]):
                    on_chunk(out["text"], list(out["output_ids"]))
                return GenOutput(list(out["output_ids"]), out["text"], meta["finish_reason"] or "abort",
                                 meta["prompt_tokens"], meta["cached_tokens"],
                                 [(lp, tid) for lp, tid, *_ in meta.get("output_token_logprobs", [])])
            return self._stream(rid, {**body, "stream": True}, on_chunk)
        finally:
            with self._lock:
                self._active.discard(rid)
                self._aborted.discard(rid)

    def score(self, requests: Sequence[ScoreRequest], rid: str) -> list[ScoreOutput]:
        by_start: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_start[r.start].append(i)
        results: list[ScoreOutput | None] = [None] * len(requests)
        self._start(rid)
        try:
            for start, idx in by_start.items():  # one batched request per distinct start
                body = {"input_ids": [list(requests[i].input_ids) for i in idx],
                        "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                        "return_logprob": True, "logprob_start_len": start}
                outs = self._post("/generate", body)
                for i, out in zip(idx, outs):
                    meta = out["meta_info"]
                    results[i] = ScoreOutput([lp for lp, *_ in meta["input_token_logprobs"]],
                                             meta["prompt_tokens"], meta["cached_tokens"])
                with self._lock:
                    if rid in self._aborted:
                        raise Aborted(rid)
        finally:
            with self._lock:
                self._active.discard(rid)
                self._aborted.discard(rid)
        return results  # type: ignore[return-value]

    def abort(self, rid: str) -> None:
        with self._lock:
            self._aborted.add(rid)

    # ---- internals ------------------------------------------------------------------------------
    def _start(self, rid: str) -> None:
        with self._lock:
            if rid in self._aborted:
                self._aborted.discard(rid)
                raise Aborted(rid)
            self._active.add(rid)

    def _stream(self, rid: str, body: dict, on_chunk: OnChunk | None) -> GenOutput:
        text, ids, meta = "", [], None
        with self._http.stream("POST", "/generate", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                _raise_for(resp)
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise EndpointError(f"the server failed mid-stream: {chunk['error'].get('message')}")
                new_text, new_ids = chunk["text"][len(text):], chunk["output_ids"][len(ids):]
                text, ids, meta = chunk["text"], list(chunk["output_ids"]), chunk["meta_info"]
                if on_chunk is not None and (new_text or new_ids):
                    on_chunk(new_text, new_ids)
                with self._lock:
                    aborted = rid in self._aborted
                if aborted:  # NOTE: closing the stream makes the server abort the request
                    return GenOutput(ids, text, "abort", meta["prompt_tokens"], meta["cached_tokens"])
        if meta is None:
            return GenOutput([], "", "abort", len(body["input_ids"]), 0)
        return GenOutput(ids, text, meta["finish_reason"] or "abort", meta["prompt_tokens"], meta["cached_tokens"])

    def _post(self, path: str, body: dict) -> Any:
        resp = self._http.post(path, json=body)
        if resp.status_code != 200:
            _raise_for(resp)
        return resp.json()

    def _check_tokenizer(self) -> None:
        local = list(self.tokenizer.encode(_PROBE, add_special_tokens=True))
        remote = self._post("/tokenize", {"prompt": _PROBE, "add_special_tokens": True})["tokens"]
        if local != remote:
            raise ValueError("the client's tokenizer does not tokenise like the server's; pass "
                             "RuntimeEndpoint(..., tokenizer=<the served model's tokenizer directory or .gguf>)")
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": _PROBE}]
            ids = self.tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)
            try:
                remote = self._post("/tokenize", {"messages": msgs})["tokens"]
            except ValueError:
                remote = None
            if ids != remote:
                raise ValueError("the client's chat template differs from the server's; pass "
                                 "RuntimeEndpoint(..., tokenizer=<the served model's tokenizer>)")


def _native_params(params: SamplingParams) -> dict[str, Any]:
    """The fields that differ from SamplingParams' defaults (a server that lacks an optional
    field then still accepts a request that does not use it)."""
    default = SamplingParams()
    out = {}
    for name in (*_NATIVE_FIELDS, *sorted(grammar_fields())):
        value = getattr(params, name)
        if value != getattr(default, name):
            out[name] = value
    if params.n != 1:
        raise ValueError("the language generates one sample per call (n = 1)")
    return out


def _raise_for(resp: Any) -> None:
    try:
        err = resp.json().get("error", {})
        message = err.get("message") or resp.text
    except ValueError:
        message = resp.text
    if 400 <= resp.status_code < 500 and resp.status_code not in (401, 404, 429):
        raise ValueError(message)
    raise EndpointError(f"HTTP {resp.status_code}: {message}")


def _load_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    from radixserve.models.loader import embedded_model_path
    from radixserve.models.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer or embedded_model_path())

