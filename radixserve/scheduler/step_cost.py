"""What a model step costs, in milliseconds, from what it computes.

A step's time is modelled as

    ms = step_ms + token_ms * tokens + pair_ms * pairs + logit_ms * logit_rows

where `tokens` are the tokens computed (every row's extend length), `pairs` the query-key pairs
attention scores (a chunk of c tokens after a cached prefix of p tokens scores c*p + c(c+1)/2:
the cost of a chunk grows with its position in a long prompt), and `logit_rows` the rows that go
through the LM head. The prior coefficients come from the model's shape (FLOPs per token and per
pair, weight bytes per step) and a device's rates; `observe` refines them from measured step
times (ridge regression towards the prior, older steps forgotten geometrically), so a deployment
on another device or model converges to its own numbers. With `online=False` the model stays at
its prior: deterministic, for tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch


class StepWork(NamedTuple):
    """What one step computes (the model's features)."""

    tokens: int
    pairs: int
    logit_rows: int

    def plus(self, other: "StepWork") -> "StepWork":
        return StepWork(self.tokens + other.tokens, self.pairs + other.pairs, self.logit_rows + other.logit_rows)


NO_WORK = StepWork(0, 0, 0)


def chunk_work(start: int, length: int, samples: bool = False) -> StepWork:
    """Work of computing tokens [start, start + length) of one sequence whose first `start` are cached."""
    return StepWork(length, length * start + length * (length + 1) // 2, int(samples))


@dataclass(frozen=True)
class CostCoefficients:
    step_ms: float  # every step: weights read once, launches, host work
    token_ms: float  # per computed token: the dense layers
    pair_ms: float  # per query-key pair: attention
    logit_ms: float  # per row through the LM head

    def __post_init__(self) -> None:
        for name in ("step_ms", "token_ms", "pair_ms", "logit_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.token_ms <= 0:
            raise ValueError(f"token_ms must be > 0 (a chunk must cost something), got {self.token_ms}")


class ModelShape(NamedTuple):
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    bytes_per_param: int
    stored_intermediate: int = 0  # MLP width whose weights a step reads (all experts of an MoE); 0: `intermediate`

    @classmethod
    def from_hf_config(cls, cfg, dtype: torch.dtype) -> "ModelShape":
        """`intermediate` is the MLP width a token computes: for a mixture of experts, top-k experts' worth."""
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        inter, stored = cfg.intermediate_size, 0
        # NOTE: read from the HF config here (Qwen-MoE `num_experts`, Mixtral `num_local_experts`): the
        # scheduler stands below models/ (docs/architecture.md)
        experts = int(getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None) or 0)
        if experts:  # NOTE: Qwen3-MoE's few dense layers (mlp_only_layers) are counted as MoE layers
            expert_width = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size
            shared = getattr(cfg, "shared_expert_intermediate_size", None) or 0  # Qwen2-MoE: every token's
            inter, stored = cfg.num_experts_per_tok * expert_width + shared, experts * expert_width + shared
        return cls(cfg.num_hidden_layers, cfg.hidden_size, heads, kv_heads, head_dim, inter,
                   cfg.vocab_size, torch.tensor([], dtype=dtype).element_size(), stored)

    @property
    def dense_flops_per_token(self) -> float:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = self.hidden * (q + 2 * kv) + q * self.hidden + 3 * self.hidden * self.intermediate
        return 2.0 * self.layers * per_layer

    @property
    def attention_flops_per_pair(self) -> float:
        return 4.0 * self.layers * self.heads * self.head_dim  # q.k and p.v, 2 FLOPs per multiply-add

    @property
    def weight_bytes(self) -> float:
        """The layers' weights, read once per step (every expert: at serving batch sizes most are touched)."""
        extra = 3 * self.hidden * max(0, self.stored_intermediate - self.intermediate) * self.layers
        return (self.dense_flops_per_token / 2 + extra) * self.bytes_per_param


class DeviceRates(NamedTuple):
    dense_flops: float  # FLOP/s the dense layers reach on large chunks
    attention_flops: float  # FLOP/s of prefill attention
    bytes_per_s: float  # weight streaming
    step_overhead_ms: float  # launches and host work of one step
    chunk_align: int  # a budget-cut chunk of at least this many tokens is cut to a multiple of it


# NOTE: measured, not guessed. H100 (benchmarks/results/gpu_runtime_h100_issue10.md and
# gpu_runtime_h100_long_prompts.md, Llama-3.1-8B bf16): a fresh 2048-token chunk 57 ms, 2048 tokens
# after a 100k prefix 323 ms, batch-32 decode 7.8 ms -> ~500 TFLOP/s dense, ~430 TFLOP/s attention,
# ~2.8 TB/s weights; the long-prompt attention path pads a chunk's queries to a multiple of 512
# (radixserve/runtime/attention/long_prefill.py), so a cut chunk of 600 would compute 1024. CPU (2 shared cores, SmolLM2-135M float32, this project's CI machine): a
# 512-token chunk 3.2 s at position 0 and 8.7 s at 3.5k, a batch-1 decode step ~120 ms.
RATES = {
    "cuda": DeviceRates(dense_flops=500e12, attention_flops=430e12, bytes_per_s=2.8e12, step_overhead_ms=1.0,
                        chunk_align=512),
    "cpu": DeviceRates(dense_flops=40e9, attention_flops=25e9, bytes_per_s=10e9, step_overhead_ms=50.0,
                       chunk_align=1),
}


def prior_coefficients(shape: ModelShape, device_type: str) -> CostCoefficients:
    """Coefficients predicted from the model's shape and the device's measured rates."""
    if device_type not in RATES:
        raise ValueError(f"no step-cost rates for device type {device_type!r}; known: {sorted(RATES)}")
    r = RATES[device_type]
    return CostCoefficients(
        step_ms=1e3 * shape.weight_bytes / r.bytes_per_s + r.step_overhead_ms,
        token_ms=1e3 * shape.dense_flops_per_token / r.dense_flops,
        pair_ms=1e3 * shape.attention_flops_per_pair / r.attention_flops,
        logit_ms=1e3 * 2.0 * shape.hidden * shape.vocab / r.dense_flops)


class StepCostModel:
    """Predicts step times from StepWork; learns from measured ones when `online`.

    NOTE: the fit is over multipliers of the prior's four terms, each observation weighted by
    1 / predicted time (relative errors), with a ridge pull of `prior_weight` observations towards
    the prior: terms a workload never exercises (e.g. attention pairs when all prompts are short)
    stay at their prior instead of drifting."""

    def __init__(self, prior: CostCoefficients, online: bool = True, prior_weight: float = 0.5,
                 forgetting: float = 0.99, clip: tuple[float, float] = (0.1, 10.0), chunk_align: int = 1) -> None:
        if not 0 < forgetting <= 1:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        if chunk_align < 1:
            raise ValueError(f"chunk_align must be >= 1, got {chunk_align}")
        if prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        self.online = online
        self.prior_weight = prior_weight
        self.forgetting = forgetting
        self.clip = clip
        self.chunk_align = chunk_align
        # NOTE: numpy, not torch: this runs on the host every step, and small numpy ops cost ~1 us
        self._base = np.array([prior.step_ms, prior.token_ms, prior.pair_ms, prior.logit_ms], dtype=np.float64)
        self._gram = np.zeros((4, 4))  # forgotten sum of x x^T (x: the prior's terms / the prediction)
        self._moment = np.zeros(4)  # forgotten sum of x y
        self._scale = np.ones(4)
        self._coef = self._base.copy()  # base * scale
        self.observations = 0

    @property
    def coefficients(self) -> CostCoefficients:
        return CostCoefficients(*self._coef.tolist())

    def predict_ms(self, w: StepWork, steps: int = 1) -> float:
        """Time of `steps` consecutive steps that together compute `w`."""
        return steps * self._coef[0] + self.work_ms(w)

    def work_ms(self, w: StepWork) -> float:
        """The time `w` adds to a step (no per-step term)."""
        c = self._coef
        return float(c[1] * w.tokens + c[2] * w.pairs + c[3] * w.logit_rows)

    def observe(self, w: StepWork, ms: float, steps: int = 1) -> None:
        """A measurement: `steps` consecutive steps computing `w` took `ms` milliseconds."""
        if not self.online or not (math.isfinite(ms) and ms > 0) or steps < 1:
            return
        terms = self._base * np.array([steps, w.tokens, w.pairs, w.logit_rows], dtype=np.float64)
        pred = float(terms @ self._scale)
        x, y = terms / pred, ms / pred
        self._gram = self.forgetting * self._gram + np.outer(x, x)
        self._moment = self.forgetting * self._moment + x * y
        lam = self.prior_weight
        solved = np.linalg.solve(self._gram + lam * np.eye(4), self._moment + lam)
        self._scale = np.clip(solved, *self.clip)
        self._coef = self._base * self._scale
        self.observations += 1

    def max_chunk(self, start: int, limit: int, budget_ms: float, samples: bool = False) -> int:
        """The most tokens c <= limit of a sequence at `start` whose work_ms(chunk_work(start, c)) fits
        `budget_ms` (0 when not even one token fits)."""
        if limit <= 0 or budget_ms <= 0:
            return 0
        c = CostCoefficients(*self._coef.tolist())
        # token_ms*n + pair_ms*(n*start + n(n+1)/2) + logit <= budget: a quadratic in n
        rest = budget_ms - (c.logit_ms if samples else 0.0)
        a, b = c.pair_ms / 2, c.token_ms + c.pair_ms * (start + 0.5)
        n = rest / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * max(rest, 0.0))) / (2 * a)
        n = max(0, min(limit, int(n)))
        # NOTE: float rounding at the boundary: step to the exact largest fitting integer
        while n < limit and self.work_ms(chunk_work(start, n + 1, samples)) <= budget_ms:
            n += 1
        while n > 0 and self.work_ms(chunk_work(start, n, samples)) > budget_ms:
            n -= 1
        return n


def batch_work(rows: Sequence[tuple[int, int, bool]]) -> StepWork:
    """Work of a batch of (cached prefix length, tokens computed, samples a token) rows."""
    total = NO_WORK
    for start, length, samples in rows:
        total = total.plus(chunk_work(start, length, samples))
    return total


def for_model(hf_config, dtype: torch.dtype, device_type: str, online: bool = True) -> StepCostModel:
    """The step cost model of a loaded model: its shape's prior on this device type, refined online."""
    return StepCostModel(prior_coefficients(ModelShape.from_hf_config(hf_config, dtype), device_type), online=online,
                         chunk_align=RATES[device_type].chunk_align)


def step_cost_for(config, runner) -> StepCostModel | None:
    """The cost model an engine's scheduler needs: None unless `config.max_step_ms` is set."""
    if config.max_step_ms is None:
        return None
    return for_model(runner.hf_config, runner.dtype, runner.device.type, config.step_cost_online)
