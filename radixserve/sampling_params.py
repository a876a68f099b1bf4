"""User-facing sampling parameters, validated when constructed (a bad value raises FieldError
naming the field).

vLLM's spelling is accepted too, so `SamplingParams(max_tokens=32, min_tokens=4)` works as vLLM
users write it: `max_tokens` and `min_tokens` are init-only aliases of `max_new_tokens` and
`min_new_tokens` (never stored, so nothing downstream sees two names), and vLLM's names we cannot
honour are refused with a FieldError naming them and saying what to use instead.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass

from radixserve.errors import FieldError

CONSTRAINT_FIELDS = ("json_schema", "regex", "ebnf", "choice", "structural_tag")
# vLLM SamplingParams fields we do not serve -> what to do instead
UNSUPPORTED = {
    "best_of": "use n and rank the samples yourself (request logprobs to score them)",
    "use_beam_search": "beam search is not supported; use temperature=0 for greedy decoding",
    "length_penalty": "beam search is not supported",
    "early_stopping": "beam search is not supported",
    "prompt_logprobs": "use prompt_logprobs_start=0 and prompt_top_logprobs=k",
    "include_stop_str_in_output": "the matched stop string is in RequestOutput.matched_stop; append it yourself",
    "guided_decoding": "use json_schema, regex, ebnf, choice or structural_tag",
    "structured_outputs": "use json_schema, regex, ebnf, choice or structural_tag",
    "allowed_token_ids": "use logit_bias to favour or ban tokens",
    "bad_words": "use logit_bias with -100 on the words' token ids",
    "logits_processors": "custom logits processors are not supported",
    "truncate_prompt_tokens": "truncate the prompt's token ids before generating",
    "detokenize": "text is always made; read token_ids and ignore text",
    "output_kind": "use Engine.generate_stream for incremental output",
}


@dataclass
class SamplingParams:
    """How to sample one request. Invalid values raise FieldError (a ValueError) at construction."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_k: int = -1  # -1 or 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0  # locally typical sampling (Meister et al. 2022); 1 = off
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
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit before sampling, in [-100, 100]
    # Structured output (at most one; see radixserve/grammar). json_schema {"type": "object"} is
    # JSON-object mode: any JSON object.
    json_schema: dict | str | None = None  # a JSON Schema, as a dict or a JSON string
    regex: str | None = None  # the whole output matches this regular expression
    ebnf: str | None = None  # an EBNF grammar (GBNF dialect) with a `root` rule
    choice: list[str] | None = None  # the output is exactly one of these strings
    structural_tag: dict | str | None = None  # xgrammar's structural tag (free text with constrained tags)
    # vLLM's names for max_new_tokens / min_new_tokens: read in __post_init__, never stored.
    # NOTE: None means "not given" here (vLLM's max_tokens=None, "up to the context", is not offered).
    max_tokens: InitVar[int | None] = None
    min_tokens: InitVar[int | None] = None

    def __new__(cls, *args, **kwargs):
        # NOTE: runs before the generated __init__, so a name it does not know is refused with a
        # FieldError that says what to use, not a bare TypeError.
        for name in kwargs:
            if name not in _INIT_NAMES:
                hint = UNSUPPORTED.get(name, "see radixserve.SamplingParams for the fields it takes")
                raise FieldError(name, f"SamplingParams does not support {name!r}: {hint}")
        return super().__new__(cls)

    def __post_init__(self, max_tokens: int | None = None, min_tokens: int | None = None) -> None:
        self._alias("max_tokens", max_tokens, "max_new_tokens")
        self._alias("min_tokens", min_tokens, "min_new_tokens")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
               f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        _check("min_new_tokens", isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens,
               f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        _check("min_new_tokens", self.min_new_tokens <= self.max_new_tokens,
               f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")
        _check("temperature", _is_num(self.temperature) and self.temperature >= 0,
               f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        _check("top_k", isinstance(self.top_k, int) and (self.top_k >= 0 or self.top_k == -1),
               f"top_k must be -1 (off), 0 (off) or a positive integer, got {self.top_k!r}")
        _check("top_p", _is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _check("typical_p", _is_num(self.typical_p) and 0 < self.typical_p <= 1,
               f"typical_p must be in (0, 1], got {self.typical_p!r}")
        _check("min_p", _is_num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        _check("repetition_penalty", _is_num(self.repetition_penalty) and self.repetition_penalty > 0,
               f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        _check("presence_penalty", _is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
               f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        _check("frequency_penalty", _is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
               f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        _check("seed", self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _check("n", isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        _check("stop", all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings")
        _check("stop_token_ids", all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
               "stop_token_ids must be non-negative integers")
        _check("logprobs", self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
               f"logprobs must be None or an integer in [0, 20], got {self.logprobs!r}")
        _check("prompt_logprobs_start", self.prompt_logprobs_start is None
               or (isinstance(self.prompt_logprobs_start, int) and self.prompt_logprobs_start >= 0),
               f"prompt_logprobs_start must be None or an integer >= 0, got {self.prompt_logprobs_start!r}")
        _check("prompt_top_logprobs", isinstance(self.prompt_top_logprobs, int) and 0 <= self.prompt_top_logprobs <= 20,
               f"prompt_top_logprobs must be an integer in [0, 20], got {self.prompt_top_logprobs!r}")
        if self.logit_bias is not None:
            _check("logit_bias", isinstance(self.logit_bias, dict),
                   f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}")
            for tok, bias in self.logit_bias.items():
                _check("logit_bias", isinstance(tok, int) and not isinstance(tok, bool) and tok >= 0,
                       f"logit_bias keys must be token ids (integers >= 0), got {tok!r}")
                _check("logit_bias", _is_num(bias) and -100 <= bias <= 100,
                       f"logit_bias[{tok}] must be a number in [-100, 100], got {bias!r}")
            self.logit_bias = {tok: float(bias) for tok, bias in self.logit_bias.items()} or None
        self._check_constraint()

    def _alias(self, alias: str, value: int | None, field: str) -> None:
        """Set `field` from vLLM's `alias` (checked here, under the alias' name)."""
        if value is None:
            return
        _check(alias, isinstance(value, int) and not isinstance(value, bool) and value >= 0,
               f"{alias} must be an integer >= 0, got {value!r}")
        current = getattr(self, field)
        _check(alias, current in (_DEFAULTS[field], value),
               f"{alias} ({value}) and {field} ({current}) are the same setting; give only one of them")
        setattr(self, field, value)

    def _check_constraint(self) -> None:
        """Types and combinations only; the content (schema, regex, grammar) is checked by the Engine."""
        if isinstance(self.choice, tuple):
            self.choice = list(self.choice)
        given = [name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise FieldError(given[0], f"{given[0]} and {given[1]} cannot be combined: give at most one of "
                             f"{', '.join(CONSTRAINT_FIELDS)}")
        _check("json_schema", self.json_schema is None or isinstance(self.json_schema, (dict, str)),
               f"json_schema must be a JSON Schema as a dict or a JSON string, got {type(self.json_schema).__name__}")
        _check("structural_tag", self.structural_tag is None or isinstance(self.structural_tag, (dict, str)),
               f"structural_tag must be a dict or a JSON string, got {type(self.structural_tag).__name__}")
        for name in ("regex", "ebnf"):
            value = getattr(self, name)
            _check(name, value is None or (isinstance(value, str) and value != ""),
                   f"{name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            _check("choice", isinstance(self.choice, list) and len(self.choice) > 0,
                   f"choice must be a non-empty list of strings, got {self.choice!r}")
            _check("choice", all(isinstance(c, str) for c in self.choice), "choice must hold strings only")
        if given:
            # NOTE: a grammar admits only EOS once it is complete; blocking EOS would leave nothing to sample.
            _check("ignore_eos", not self.ignore_eos,
                   f"ignore_eos cannot be combined with {given[0]}: the grammar decides where the output ends")
            _check("min_new_tokens", self.min_new_tokens == 0,
                   f"min_new_tokens cannot be combined with {given[0]}: the grammar decides where the output ends")

    @property
    def constraint(self) -> str | None:
        """The name of the structured-output field in use, or None."""
        return next((name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None), None)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


_DEFAULTS = {"max_new_tokens": SamplingParams.max_new_tokens, "min_new_tokens": SamplingParams.min_new_tokens}
_INIT_NAMES = frozenset(SamplingParams.__dataclass_fields__)  # the fields and the init-only aliases


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN


def _check(field: str, ok: bool, message: str) -> None:
    if not ok:
        raise FieldError(field, message)
