"""`LLM`: vLLM's offline API over one in-process Engine.

A thin layer: prompts become token ids exactly as Engine.generate makes them, every call is one
Engine.generate of the whole batch (so its validation, scheduling and sampling are the Engine's),
and the results are regrouped into vLLM's shape (radixserve/offline/outputs.py). Nothing here
decides what is generated.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Mapping, Sequence, Union

from radixserve.engine.chat_template import apply_chat_template
from radixserve.engine.engine import Engine
from radixserve.engine.prepare import per_prompt, prompts_to_ids
from radixserve.offline.outputs import LLMOutput, to_llm_output
from radixserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

VLLM_DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams().max_tokens: what generate/chat give without params
# vLLM's LLM(...) arguments that have an Engine option of another name -> (option, value map)
_ENGINE_NAMES = {
    "max_model_len": ("max_context_len", lambda v: v),
    "tensor_parallel_size": ("tp", lambda v: v),
    "enforce_eager": ("cuda_graph", lambda v: not v),
    "enable_prefix_caching": ("disable_radix_cache", lambda v: not v),
}

Prompt = Union[str, Sequence[int], Mapping[str, Any]]
Conversation = Sequence[Mapping[str, Any]]


class LLM:
    """`LLM(model=None, **options)`: model None = the embedded SmolLM2-135M-Instruct; options are
    radixserve.EngineConfig fields (vLLM's max_model_len, tensor_parallel_size, enforce_eager and
    enable_prefix_caching are understood too)."""

    def __init__(self, model: str | None = None, **options: Any) -> None:
        for vllm_name, (ours, convert) in _ENGINE_NAMES.items():
            if vllm_name in options:
                if ours in options:
                    raise ValueError(f"{vllm_name} and {ours} are the same setting; give only one of them")
                options[ours] = convert(options.pop(vllm_name))
        self.engine = Engine(model, **options)
        self._ids = itertools.count()

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[LLMOutput]:
        """One LLMOutput per prompt, in order. A prompt is a string, a list of token ids, or a dict
        with "prompt" (text) or "prompt_token_ids". `sampling_params`: one for all prompts or one
        each; None = SamplingParams(max_tokens=16), vLLM's default. `use_tqdm` is accepted for
        vLLM's signature; no progress bar is shown (the batch is one blocking Engine call)."""
        items = [self._parse(p, i) for i, p in enumerate(_as_list(prompts))]
        return self._run(items, sampling_params, use_tqdm)

    def chat(self, messages: Conversation | Sequence[Conversation],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, *, chat_template_kwargs: dict[str, Any] | None = None,
             tools: list[dict] | None = None) -> list[LLMOutput]:
        """One LLMOutput per conversation (a list of {"role", "content"} messages; a single
        conversation gives a list of one), through the model's chat template with the generation
        prompt. `chat_template_kwargs`: extra template variables (e.g. enable_thinking)."""
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise ValueError("messages must be a conversation (a list of {'role', 'content'} dicts) "
                             "or a non-empty list of conversations")
        batch = [messages] if isinstance(messages[0], Mapping) else list(messages)
        items = []
        for conv in batch:
            ids = apply_chat_template(self.engine.tokenizer, list(conv), tools, chat_template_kwargs)
            items.append((self.engine.tokenizer.decode(ids, skip_special_tokens=False), ids))
        return self._run(items, sampling_params, use_tqdm)

    def get_tokenizer(self):
        return self.engine.tokenizer

    # ---- lifetime ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- internals -----------------------------------------------------------------------------------
    def _parse(self, prompt: Prompt, i: int) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of one prompt; text is tokenised as Engine.generate does."""
        if isinstance(prompt, Mapping):
            extra = sorted(set(prompt) - {"prompt", "prompt_token_ids"})
            if extra:  # e.g. multi_modal_data: refused, never silently dropped
                raise ValueError(f"prompts[{i}] has keys radixserve does not support: {extra}; give only "
                                 "'prompt' or 'prompt_token_ids'")
            if prompt.get("prompt_token_ids") is not None:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if isinstance(prompt.get("prompt"), str):
                prompt = prompt["prompt"]
            else:
                raise ValueError(f"prompts[{i}] must have 'prompt' (text) or 'prompt_token_ids'; "
                                 f"got keys {sorted(prompt)}")
        if isinstance(prompt, str):
            return prompt, prompts_to_ids(self.engine.tokenizer, [prompt], None)[0]
        if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError(f"prompts[{i}] must be a string, a list of token ids or a dict with 'prompt' or "
                         f"'prompt_token_ids', got {type(prompt).__name__}")

    def _run(self, items: list[tuple[str | None, list[int]]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None, use_tqdm: bool) -> list[LLMOutput]:
        if not items:
            return []
        if sampling_params is None:
            sampling_params = SamplingParams(max_tokens=VLLM_DEFAULT_MAX_TOKENS)
        params = per_prompt(sampling_params, len(items))
        if use_tqdm:
            logger.debug("use_tqdm: no progress bar; %d prompts run as one batch", len(items))
        flat = self.engine.generate(input_ids=[ids for _, ids in items], sampling_params=params)
        decode = self._decode_one
        out, at = [], 0
        for (text, ids), p in zip(items, params):
            out.append(to_llm_output(str(next(self._ids)), text, ids, p, flat[at:at + p.n], decode))
            at += p.n
        return out

    def _decode_one(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])


def _as_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """A batch of prompts: one prompt (text, token ids, dict) becomes a batch of one."""
    if isinstance(prompts, (str, Mapping)):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a string, a list of token ids, a dict, or a non-empty list of these")
    return list(prompts)
