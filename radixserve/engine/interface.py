"""The engine interface: what the server, the router and radixserve.lang may use of an engine.

Two implementations: `Engine` (in process) and `EngineClient` (the split server's handle on an
engine process). Callers type against these Protocols, never against a concrete class, and use
nothing else of an engine (no private method).

- `ChatTokenizer`: the prompt-building part (the tokenizer and the chat template). The router's
  `Frontend` is one too: it builds prompts exactly as a replica would, and serves nothing.
- `EngineHandle`: a serving engine. `prepare` is the one validation (radixserve/engine/prepare.py);
  `agenerate` / `generate_stream` take a PreparedRequest (trusted: not checked again) or token ids
  with SamplingParams (prepared there, with the context rule "clamp").
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from radixserve.config import EngineConfig
from radixserve.engine.prepare import OverContext, PreparedRequest, RequestLimits
from radixserve.outputs import RequestOutput, StreamDelta
from radixserve.sampling_params import SamplingParams


@runtime_checkable
class ChatTokenizer(Protocol):
    """Turns text and chat messages into the engine's prompt token ids."""

    tokenizer: Any  # a transformers tokenizer

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None, *,
                            template_kwargs: dict[str, Any] | None = None, add_generation_prompt: bool = True,
                            continue_final_message: bool = False) -> list[int]:
        """Token ids of `messages` (radixserve/engine/chat_template.py): with the generation prompt
        unless told otherwise; `tools` for a template that renders them."""
        ...


@runtime_checkable
class EngineHandle(ChatTokenizer, Protocol):
    """A serving engine, in process or across a process boundary."""

    config: EngineConfig
    model_name: str
    max_context_len: int
    vocab_size: int
    eos_ids: set[int]
    limits: RequestLimits

    def prepare(self, input_ids: Sequence[int], params: SamplingParams,
                over_context: OverContext = "clamp") -> PreparedRequest:
        """The one validation: FieldError (naming its field) for a request this engine cannot serve."""
        ...

    async def agenerate(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                        sampling_params: SamplingParams | None = None, request_id: str | None = None,
                        cache_salt: str | None = None, prompt: str | None = None) -> list[RequestOutput]:
        """All n outputs of one prompt, once finished."""
        ...

    def generate_stream(self, input_ids: Sequence[int] | PreparedRequest | None = None,
                        sampling_params: SamplingParams | None = None, request_id: str | None = None,
                        cache_salt: str | None = None, prompt: str | None = None) -> AsyncIterator[StreamDelta]:
        """StreamDeltas as tokens arrive; closing the iterator aborts the request."""
        ...

    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 cache_salt: str | None = None) -> list[RequestOutput]:
        """Blocking: one or many prompts; n > 1 yields n consecutive outputs."""
        ...

    def abort(self, request_id: str, reason: str = "abort") -> None: ...

    def abort_all(self) -> None: ...

    def stats(self) -> dict: ...

    def flush_cache(self) -> bool: ...

    def check_integrity(self) -> None: ...

    async def cache_events(self, after: int, epoch: str | None, limit: int) -> dict: ...

    async def save_cache(self) -> dict:
        """Snapshot the radix cache into cache_dir (ValueError when none is configured)."""
        ...

    def is_alive(self) -> bool: ...

    def shutdown(self) -> Any: ...
