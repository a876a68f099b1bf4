"""TGI's response bodies: generated_text with details (tokens, prefill, finish reason as TGI
spells it), and the tokens of a stream event."""
from __future__ import annotations

from typing import Any

from radixserve.outputs import RequestOutput, TokenLogprob
from radixserve.server.openai.bodies import TokenTexts
from radixserve.server.tgi.params import TGIPlan


class Tokens:
    """Token id -> TGI's token object ({"id", "text", "logprob", "special"})."""

    def __init__(self, tokenizer: Any) -> None:
        self.text = TokenTexts(tokenizer)
        self.special = frozenset(getattr(tokenizer, "all_special_ids", ()))

    def token(self, token_id: int, logprob: float | None, text: str | None = None) -> dict:
        return {"id": token_id, "text": self.text(token_id) if text is None else text, "logprob": logprob,
                "special": token_id in self.special}

    def top(self, lp: TokenLogprob) -> list[dict]:
        return [self.token(i, v) for i, v in lp.top]


def finish_reason(reason: str | None, matched_stop: str | int | None) -> str:
    """Ours ("length" | "stop") as TGI's: "length", "stop_sequence" (a stop string matched) or
    "eos_token" (EOS, a stop token, or a grammar that completed)."""
    if reason == "length":
        return "length"
    return "stop_sequence" if isinstance(matched_stop, str) else "eos_token"


def seed_of(plan: TGIPlan) -> int | None:
    return None if plan.sp.greedy else plan.sp.seed


def generate(o: RequestOutput, plan: TGIPlan, tokens: Tokens) -> dict:
    body: dict[str, Any] = {"generated_text": plan.prefix + o.text}
    if plan.details:
        body["details"] = details(o, plan, tokens)
    return body


def details(o: RequestOutput, plan: TGIPlan, tokens: Tokens) -> dict:
    lps = o.logprobs or []
    out = {"finish_reason": finish_reason(o.finish_reason, o.matched_stop), "generated_tokens": len(o.token_ids),
           "seed": seed_of(plan), "prefill": prefill(plan.prompt, o.prompt_logprobs, tokens) if plan.prefill else [],
           "tokens": [tokens.token(t, lp.logprob if lp else None) for t, lp in _paired(o.token_ids, lps)],
           "best_of_sequences": None}
    if plan.top_n:
        out["top_tokens"] = [tokens.top(lp) for lp in lps]
    return out


def prefill(prompt: list[int], lps: list[TokenLogprob] | None, tokens: Tokens) -> list[dict]:
    """Every prompt token; the first has no logprob (nothing precedes it)."""
    values = [None] + [lp.logprob for lp in (lps or [])]
    return [{"id": t, "text": tokens.text(t), "logprob": v} for t, v in zip(prompt, values + [None] * len(prompt))]


def _paired(ids: list[int], lps: list[TokenLogprob]) -> list[tuple[int, TokenLogprob | None]]:
    return [(t, lps[i] if i < len(lps) else None) for i, t in enumerate(ids)]
