"""The prologue the generating routes share: read the body, then prepare every prompt.

A route reads its body (`read_openai`: parse, model, stream_options, refused fields), builds its
prompts and its one SamplingParams (params.py), then `prepare_all` runs the server's bounds
(limits.py) and the engine's one validation (`engine.prepare` with the context rule "refuse")
and turns each FieldError into a 400 naming the route's own parameter (ParamNames). What comes
out are PreparedRequests, which the engine trusts (engine_io.py submits them).
"""
from __future__ import annotations

from typing import Any, TypeVar

from starlette.datastructures import State
from starlette.requests import Request

from radixserve.engine.errors import ContextLengthError, VocabularyError
from radixserve.engine.prepare import PreparedRequest
from radixserve.errors import FieldError
from radixserve.sampling_params import SamplingParams
from radixserve.server import limits
from radixserve.server.openai import field_policy, params
from radixserve.server.errors import APIError, parse_body
from radixserve.server.openai.params import ParamNames

M = TypeVar("M")


async def read_openai(request: Request, model: type[M], refused: dict[str, tuple[Any, str]] | None = None
                      ) -> tuple[State, M]:
    """The app's state and the validated body of an OpenAI route (a 400/404 for a bad one)."""
    st = request.app.state
    req = await parse_body(request, model)
    params.check_model(req.model, st.model_name)
    params.check_stream_options(req)
    field_policy.refuse(req, extra=refused)
    return st, req


def prepare_all(st: State, prompts: list[list[int]], sp: SamplingParams, names: ParamNames) -> list[PreparedRequest]:
    """Every prompt with `sp`, prepared by the engine; any error is a 400 naming its parameter."""
    params.check_n(sp.n, len(prompts), st.config.max_n)
    limits.check_sampling(st.config, sp, names.of)
    return [_prepare(st.engine, ids, sp, names, names.prompt_at(i, len(prompts))) for i, ids in enumerate(prompts)]


def _prepare(engine, ids: list[int], sp: SamplingParams, names: ParamNames, prompt_param: str) -> PreparedRequest:
    try:
        return engine.prepare(ids, sp, "refuse")
    except ContextLengthError as exc:
        total, param = exc.prompt_tokens + exc.max_new_tokens, names.context_param
        raise APIError(400, f"This model's maximum context length is {exc.max_context_len} tokens, but {total} "
                       f"were requested ({exc.prompt_tokens} in the prompt, {exc.max_new_tokens} for the "
                       f"completion); shorten the prompt or lower {param}.", param=param,
                       code="context_length_exceeded") from exc
    except VocabularyError as exc:
        if exc.field != "logit_bias":
            raise APIError(400, str(exc), param=prompt_param) from exc
        raise APIError(400, f"logit_bias has token id {exc.token_id}, outside the vocabulary [0, {exc.vocab_size}).",
                       param=names.of("logit_bias")) from exc
    except FieldError as exc:  # about the prompt, or the constraint
        raise APIError(400, str(exc), param=names.grammar(exc) or prompt_param) from exc
    except ValueError as exc:  # not about one field (e.g. structured output is not installed)
        raise APIError(400, str(exc) or "Invalid request.", param=prompt_param) from exc
