"""From validated request bodies to what the engine takes: prompt token ids and SamplingParams,
and ParamNames, which names the request parameter of an error's field."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from radixserve.engine.interface import ChatTokenizer
from radixserve.errors import FieldError
from radixserve.grammar.errors import GrammarError
from radixserve.sampling_params import SamplingParams
from radixserve.server.errors import APIError, user_errors
from radixserve.server.openai.defaults import default_max_new
from radixserve.server.openai.structured import Constraint, sampling_fields
from radixserve.server.openai.protocol import (ChatCompletionRequest, ChatMessage, CompletionRequest,
                                        GenerateRequest, _OpenAIRequest)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI default for /v1/completions
# SamplingParams field -> the OpenAI request field that sets it, where the names differ
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "prompt_top_logprobs": "logprobs"}


@dataclass(frozen=True)
class ParamNames:
    """Where one route's request puts each field: a FieldError's `field` (a SamplingParams field,
    or the prompt) -> the request parameter its error body names. Fields renamed by the route are in
    `renamed`, the others are `prefix` + their own name."""

    renamed: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""
    prompt: str = "prompt"  # the parameter that holds the prompt(s)
    constraint: Constraint | None = None  # the structured-output constraint, where the client put it
    context: str | None = None  # the parameter a context-length error names, if not max_new_tokens' own

    def of(self, name: str) -> str:
        if self.constraint is not None and name == self.constraint.field:
            return self.constraint.param
        return self.renamed.get(name, self.prefix + name)

    def prompt_at(self, index: int, count: int) -> str:
        return self.prompt if count == 1 else f"{self.prompt}[{index}]"

    def grammar(self, exc: BaseException) -> str | None:
        """The request field of an error about the request's constraint (None for other errors)."""
        c = self.constraint
        return c.param if c is not None and isinstance(exc, GrammarError) and exc.field == c.field else None

    @property
    def context_param(self) -> str:
        return self.context or self.of("max_new_tokens")


# Model ids clients send when they were given no model: huggingface_hub's InferenceClient sends
# "dummy" (chat_completion with a base_url), TGI's own docs "tgi"; TGI serves any of them.
PLACEHOLDER_MODELS = frozenset({"tgi", "dummy", ""})


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served and requested not in PLACEHOLDER_MODELS:
        raise APIError(404, f"The model '{requested}' does not exist; this server serves '{served}'.",
                       param="model", code="model_not_found")


def check_n(n: int, num_prompts: int, max_n: int) -> None:
    if n < 1 or n > max_n:
        raise APIError(400, f"n must be between 1 and {max_n} on this server, got {n}.", param="n")
    if n * num_prompts > max_n * 4:
        raise APIError(400, f"{num_prompts} prompts x n={n} asks for {n * num_prompts} completions; "
                       f"this server allows at most {max_n * 4} per request.", param="n")


def check_stream_options(req: _OpenAIRequest) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true.", param="stream_options")


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the chat template takes them, with no tools offered."""
    from radixserve.server.openai import tools

    return tools.template_messages(messages, tools.ToolPlan("none", [], None, True, False))


def chat_prompt(engine: ChatTokenizer, messages: list[ChatMessage] | list[dict], tool_defs: list[dict] | None = None,
                req: ChatCompletionRequest | None = None) -> list[int]:
    """Token ids of the conversation through the model's chat template (`tool_defs` for a template
    that renders tools itself), with `req`'s template options (chat_template_kwargs,
    add_generation_prompt, continue_final_message) when given."""
    if not messages:
        raise APIError(400, "messages must contain at least one message.", param="messages")
    dicts = chat_messages(messages) if isinstance(messages[0], ChatMessage) else messages
    options: dict[str, Any] = {}  # only those that differ from the defaults
    if req is not None and req.chat_template_kwargs is not None:
        options["template_kwargs"] = req.chat_template_kwargs
    if req is not None and req.continue_final_message:
        options["continue_final_message"] = True
        options["add_generation_prompt"] = req.add_generation_prompt is True  # unset: off (nothing follows)
    elif req is not None and req.add_generation_prompt is False:
        options["add_generation_prompt"] = False
    with user_errors("messages", lambda exc: getattr(exc, "field", None)):
        return list(engine.apply_chat_template(dicts, tool_defs, **options))


def completion_prompts(engine: ChatTokenizer, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """The four OpenAI prompt shapes, as lists of token ids (one list per prompt)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty.", param="prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if isinstance(prompt[0], str):
        return [encode(engine, p) for p in prompt]
    if any(not p for p in prompt):
        raise APIError(400, "prompt must not contain an empty list of token ids.", param="prompt")
    return [list(p) for p in prompt]


def native_prompts(engine: ChatTokenizer, req: GenerateRequest) -> tuple[list[list[int]], bool]:
    """Returns (prompts, batched): batched is True when the caller sent a list of prompts."""
    if (req.text is None) == (req.input_ids is None):
        raise APIError(400, "Give exactly one of 'text' or 'input_ids'.", param="text")
    if req.text is not None:
        texts = [req.text] if isinstance(req.text, str) else req.text
        if not texts:
            raise APIError(400, "text must not be an empty list.", param="text")
        return [encode(engine, t) for t in texts], isinstance(req.text, list)
    ids = req.input_ids
    if not ids:
        raise APIError(400, "input_ids must not be empty.", param="input_ids")
    if isinstance(ids[0], int):
        return [list(ids)], False
    return [list(p) for p in ids], True


def encode(engine: ChatTokenizer, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=True))


def _common(req: _OpenAIRequest, max_new_tokens: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "n": req.n, "stop": req.stop, "seed": req.seed,
        "temperature": req.temperature, "top_p": req.top_p, "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty, "top_k": req.top_k, "min_p": req.min_p,
        "typical_p": req.typical_p,
        "repetition_penalty": req.repetition_penalty, "min_new_tokens": req.min_tokens,
        "ignore_eos": req.ignore_eos, "stop_token_ids": req.stop_token_ids,
        "skip_special_tokens": req.skip_special_tokens, "logit_bias": req.logit_bias,
    }
    return {k: v for k, v in fields.items() if v is not None}


def chat_names(req: ChatCompletionRequest, constraint: Constraint | None) -> ParamNames:
    # NOTE: a context-length error names max_tokens even when max_completion_tokens was given (as
    # the server always has; its bodies are pinned by tests/test_server_errors.py).
    given = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return ParamNames({"max_new_tokens": given, "min_new_tokens": "min_tokens", "logprobs": "top_logprobs"},
                      constraint=constraint, context="max_tokens")


def completion_names(constraint: Constraint | None) -> ParamNames:
    return ParamNames(OPENAI_NAMES, constraint=constraint)


def native_names(req: GenerateRequest) -> ParamNames:
    return ParamNames({"logprobs": "top_logprobs_num", "prompt_top_logprobs": "top_logprobs_num",
                       "prompt_logprobs_start": "logprob_start_len"}, prefix="sampling_params.",
                      prompt="text" if req.text is not None else "input_ids")


def chat_sampling(req: ChatCompletionRequest, prompt_len: int, max_context_len: int, names: ParamNames,
                  default_max: int) -> SamplingParams:
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_new is None:  # the server's default, within the rest of the context (openai/defaults.py)
        max_new = default_max_new(default_max, prompt_len, max_context_len)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs")
    fields = {**_common(req, max_new), **sampling_fields(names.constraint)}
    if req.logprobs:
        fields["logprobs"] = req.top_logprobs or 0
    return make_sampling(fields, names)


def completion_sampling(req: CompletionRequest, max_n: int, names: ParamNames) -> SamplingParams:
    """`best_of` > n runs best_of samples (with their logprobs, to rank them); `echo` with
    `logprobs` asks for the logprobs of every prompt token after the first."""
    max_new = req.max_tokens if req.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    fields = {**_common(req, max_new), **sampling_fields(names.constraint)}
    if req.suffix:
        raise APIError(400, "'suffix' is not supported: inserting text before a given suffix needs a model "
                       "trained for fill-in-the-middle, and this server does not rewrite prompts into such a "
                       "format; put the whole context in 'prompt' instead.", param="suffix",
                       code="unsupported_parameter")
    if req.best_of is not None:
        if not 1 <= req.best_of <= max_n:
            raise APIError(400, f"best_of must be between 1 and {max_n} on this server, got {req.best_of}.",
                           param="best_of")
        if req.best_of < req.n:
            raise APIError(400, f"best_of ({req.best_of}) must be greater than or equal to n ({req.n}).",
                           param="best_of")
        if req.stream and req.best_of > req.n:
            raise APIError(400, "best_of > n cannot be streamed: the best samples are known only when all have "
                           "finished; set stream to false.", param="best_of")
        fields["n"] = req.best_of
    if req.logprobs is not None:
        fields["logprobs"] = req.logprobs
    elif fields["n"] > req.n:
        fields["logprobs"] = 0  # best_of ranks by the sampled tokens' logprobs
    if req.echo and req.logprobs is not None:
        fields["prompt_logprobs_start"] = 0
        fields["prompt_top_logprobs"] = req.logprobs
    return make_sampling(fields, names)


def native_sampling(req: GenerateRequest, names: ParamNames) -> SamplingParams:
    fields = (req.sampling_params.model_dump() if req.sampling_params is not None else {})
    if req.return_logprob:
        fields["logprobs"] = req.top_logprobs_num
        if req.logprob_start_len >= 0:
            fields["prompt_logprobs_start"] = req.logprob_start_len
            fields["prompt_top_logprobs"] = req.top_logprobs_num
    return make_sampling(fields, names)


def make_sampling(fields: dict[str, Any], names: ParamNames) -> SamplingParams:
    """SamplingParams(**fields), built once per request; its FieldError becomes a 400 naming the
    request parameter of the error's field."""
    try:
        return SamplingParams(**fields)
    except FieldError as exc:
        raise APIError(400, str(exc), param=names.of(exc.field)) from exc
