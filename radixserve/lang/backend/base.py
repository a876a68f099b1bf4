"""What the language needs from an engine: generate from token ids, score continuations with
prompt log-probs, abort; plus the tokenizer that turns a program's constant text into tokens."""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, NamedTuple, Sequence

from radixserve.lang.encode_cache import EncodeCache
from radixserve.lang.roles import RoleMarkers, derive_role_markers
from radixserve.sampling_params import SamplingParams

OnChunk = Callable[[str, list[int]], None]  # (new text, new token ids) of a streamed generation


class GenOutput(NamedTuple):
    """One finished generation (the `n = 1` case)."""

    token_ids: list[int]  # every generated token, the stop token included
    text: str  # detokenised output, special tokens and any matched stop string removed
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the radix tree
    logprobs: list[tuple[float, int]] | None = None  # (logprob, token id) per output token, when asked for


class ScoreOutput(NamedTuple):
    """Prompt log-probs of one scoring request (no tokens generated)."""

    logprobs: list[float]  # of the prompt tokens at positions >= the request's start
    prompt_tokens: int
    cached_tokens: int


class ScoreRequest(NamedTuple):
    input_ids: list[int]
    start: int  # first prompt position whose log-prob is wanted (>= 1)


class Backend:
    """Base of LocalBackend and RuntimeEndpoint. Subclasses provide `tokenizer` and the four
    engine calls; all may be called from many threads at once."""

    tokenizer: Any

    def __init__(self) -> None:
        self._markers: RoleMarkers | ValueError | None = None
        self._markers_lock = threading.Lock()
        self.encode_cache = EncodeCache(self._encode_uncached)

    # ---- engine calls -------------------------------------------------------------------------
    def generate(self, input_ids: list[int], params: SamplingParams, rid: str,
                 on_chunk: OnChunk | None = None) -> GenOutput:
        """Generate from `input_ids`; with `on_chunk`, stream the pieces to it as they come."""
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest], rid: str) -> list[ScoreOutput]:
        """Prompt log-probs of every request, submitted together, no decode steps."""
        raise NotImplementedError

    def abort(self, rid: str) -> None:
        """Stop the request(s) under `rid` (also if they have not been submitted yet)."""
        raise NotImplementedError

    @property
    def caches_prefixes(self) -> bool:
        """Whether computed prefixes are kept for later requests (else fork skips its prefill)."""
        return True

    def shutdown(self) -> None:
        """Release what the backend owns."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ---- tokens ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Constant text -> token ids, on its own (no special tokens added).

        NOTE: the boundary rule of the language: every appended string is tokenised by itself,
        so "a" + "b" gives the tokens of "a" then those of "b", which may differ from the tokens
        of "ab" (SmolLM2: "a"+"b" -> [81, 82], "ab" -> [369]). The state never re-tokenises.
        Each text is tokenised once per backend (EncodeCache), however many programs append it."""
        return self.encode_cache(text) if text else []

    def _encode_uncached(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    @functools.cached_property
    def initial_ids(self) -> list[int]:
        """What every program state starts with: the tokenizer's own leading special tokens (a
        BOS for Llama-style tokenizers, nothing for SmolLM2 or Qwen)."""
        return list(self.tokenizer.encode("", add_special_tokens=True))

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in getattr(self.tokenizer, "all_special_ids", []))

    def role_markers(self) -> RoleMarkers:
        """The chat template's role markers (ValueError when the model has no usable template)."""
        with self._markers_lock:
            if self._markers is None:
                try:
                    self._markers = derive_role_markers(self.tokenizer)
                except ValueError as exc:
                    self._markers = exc
            if isinstance(self._markers, ValueError):
                raise ValueError(str(self._markers))
            return self._markers


class Aborted(Exception):
    """A backend call was aborted (by `abort` or by the engine)."""
