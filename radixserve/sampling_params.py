"""User-facing sampling parameters, validated when constructed."""
from __future__ import annotations

from dataclasses import dataclass

CONSTRAINT_FIELDS = ("json_schema", "regex", "ebnf", "choice", "structural_tag")


@dataclass
class SamplingParams:
    """How to sample one request. Invalid values raise ValueError at construction."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_k: int = -1  # -1 or 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    n: int = 1
    logprobs: int | None = None  # None = off; k >= 0: sampled token's logprob plus top-k alternatives
    prompt_logprobs_start: int | None = None  # None = off; else logprobs of prompt tokens at positions >= start
    prompt_top_logprobs: int = 0
    # Structured output (at most one; see radixserve/grammar). json_schema {"type": "object"} is
    # JSON-object mode: any JSON object.
    json_schema: dict | str | None = None  # a JSON Schema, as a dict or a JSON string
    regex: str | None = None  # the whole output matches this regular expression
    ebnf: str | None = None  # an EBNF grammar (GBNF dialect) with a `root` rule
    choice: list[str] | None = None  # the output is exactly one of these strings
    structural_tag: dict | str | None = None  # xgrammar's structural tag (free text with constrained tags)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
               f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        _check(isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens,
               f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        _check(self.min_new_tokens <= self.max_new_tokens,
               f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")
        _check(_is_num(self.temperature) and self.temperature >= 0,
               f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        _check(isinstance(self.top_k, int) and (self.top_k >= 0 or self.top_k == -1),
               f"top_k must be -1 (off), 0 (off) or a positive integer, got {self.top_k!r}")
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _check(_is_num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        _check(_is_num(self.repetition_penalty) and self.repetition_penalty > 0,
               f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        _check(_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
               f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        _check(_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
               f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        _check(self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _check(isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings")
        _check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
               "stop_token_ids must be non-negative integers")
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
               f"logprobs must be None or an integer in [0, 20], got {self.logprobs!r}")
        _check(self.prompt_logprobs_start is None
               or (isinstance(self.prompt_logprobs_start, int) and self.prompt_logprobs_start >= 0),
               f"prompt_logprobs_start must be None or an integer >= 0, got {self.prompt_logprobs_start!r}")
        _check(isinstance(self.prompt_top_logprobs, int) and 0 <= self.prompt_top_logprobs <= 20,
               f"prompt_top_logprobs must be an integer in [0, 20], got {self.prompt_top_logprobs!r}")
        self._check_constraint()

    def _check_constraint(self) -> None:
        """Types and combinations only; the content (schema, regex, grammar) is checked by the Engine."""
        if isinstance(self.choice, tuple):
            self.choice = list(self.choice)
        given = [name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{given[0]} and {given[1]} cannot be combined: give at most one of "
                             f"{', '.join(CONSTRAINT_FIELDS)}")
        _check(self.json_schema is None or isinstance(self.json_schema, (dict, str)),
               f"json_schema must be a JSON Schema as a dict or a JSON string, got {type(self.json_schema).__name__}")
        _check(self.structural_tag is None or isinstance(self.structural_tag, (dict, str)),
               f"structural_tag must be a dict or a JSON string, got {type(self.structural_tag).__name__}")
        for name in ("regex", "ebnf"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value != ""),
                   f"{name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            _check(isinstance(self.choice, list) and len(self.choice) > 0,
                   f"choice must be a non-empty list of strings, got {self.choice!r}")
            _check(all(isinstance(c, str) for c in self.choice), "choice must hold strings only")
        if given:
            # NOTE: a grammar admits only EOS once it is complete; blocking EOS would leave nothing to sample.
            _check(not self.ignore_eos, f"ignore_eos cannot be combined with {given[0]}: the grammar decides "
                                        "where the output ends")
            _check(self.min_new_tokens == 0, f"min_new_tokens cannot be combined with {given[0]}: the grammar "
                                             "decides where the output ends")

    @property
    def constraint(self) -> str | None:
        """The name of the structured-output field in use, or None."""
        return next((name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None), None)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
