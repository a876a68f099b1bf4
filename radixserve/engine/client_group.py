"""What the front end (engine/client.py) keeps of one submitted request: its samples as their caller
sees them, and the queue the caller reads the engine's messages from."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Union

from radixserve.engine import wire
from radixserve.engine.text import RequestText
from radixserve.sample_id import SampleId
from radixserve.sampling_params import SamplingParams

GroupMessage = Union[wire.Tokens, wire.Finished, wire.Failed, wire.EngineDead]  # what a request's caller is handed


class ClientSample:
    """One sample (rid, index) as its caller sees it."""

    __slots__ = ("text_state", "text", "token_ids", "logprobs", "prompt_logprobs", "finish_reason", "matched_stop",
                 "prompt_len", "cached", "done", "index", "name")

    def __init__(self, sample: SampleId, n: int, text_state: RequestText) -> None:
        self.index = sample.index
        self.name = sample.name(n)  # the request_id its caller sees
        self.text_state = text_state
        self.text = ""
        self.token_ids: list[int] = []
        self.logprobs: list = []
        self.prompt_logprobs = None
        self.finish_reason: str | None = None
        self.matched_stop: str | int | None = None
        self.prompt_len = 0
        self.cached = 0
        self.done = False  # finished for the caller (the engine may still be computing: see tokens_after_stop)


class ClientGroup:
    """All samples of one submitted prompt, and the queue its caller reads deltas from."""

    def __init__(self, rid: str, n: int, params: SamplingParams, prompt_ids: list[int], tokenizer: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.rid = rid
        self.params = params
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.samples = [ClientSample(SampleId(rid, i), n,
                                RequestText(tokenizer, prompt_ids, params.skip_special_tokens, params.stop))
                        for i in range(n)]
        self.engine_open = n  # samples the engine has not reported finished yet
        self.caller_open = n
        self.detached = False  # the caller is gone: what still comes is accounted, not queued
        self.orphan: Callable[[ClientGroup, list[GroupMessage]], None] | None = None

    def receive(self, msgs: list[GroupMessage]) -> None:
        """On the caller's event loop (so `detached` needs no lock)."""
        if self.detached:
            self.orphan(self, msgs)
        else:
            self.queue.put_nowait(msgs)


def deliver(g: ClientGroup, msgs: list[GroupMessage]) -> None:
    try:
        g.loop.call_soon_threadsafe(g.receive, msgs)
    except RuntimeError:  # the caller's event loop closed: nobody is listening any more
        g.orphan(g, msgs)

