"""What one benchmark run measured: per-request timings folded into a RunResult."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class RequestTiming:
    """One request's clock, all times in seconds from the run's start."""

    prompt_tokens: int
    sent: float = 0.0
    first_token: float | None = None
    done: float | None = None
    output_tokens: int = 0
    cached_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each streamed piece
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """Linear-interpolated percentiles; None for an empty list."""
    if not values:
        return {f"p{q}": None for q in qs}
    s = sorted(values)
    out = {}
    for q in qs:
        pos = (len(s) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        out[f"p{q}"] = s[lo] + (s[hi] - s[lo]) * (pos - lo)
    return out


@dataclass
class RunResult:
    name: str  # e.g. "radixserve lpm", "radixserve no-cache", "transformers generate"
    workload: str
    mode: str  # offline | online | batch1
    config: dict
    num_requests: int
    completed: int
    errors: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    req_per_s: float
    input_tok_per_s: float
    output_tok_per_s: float
    total_tok_per_s: float
    ttft_s: dict
    itl_s: dict
    e2e_s: dict
    cache_hit_rate: float
    optimal_hit_rate: float
    kv_usage_peak: float | None = None
    kv_usage_mean: float | None = None
    retractions: int = 0
    evicted_tokens: int = 0
    truncated: bool = False  # stopped at its time limit; rates count the work done until then
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(name: str, workload: str, mode: str, config: dict, timings: list[RequestTiming], duration_s: float,
              optimal: float, **extra) -> RunResult:
    """Fold per-request timings into rates and percentiles. Token rates count every token produced
    (also by requests cut off at a time limit); req/s counts completed requests."""
    ok = [t for t in timings if t.ok]
    prompt = sum(t.prompt_tokens for t in timings if t.first_token is not None)
    out = sum(t.output_tokens for t in timings)
    cached = sum(t.cached_tokens for t in ok)
    prompt_ok = sum(t.prompt_tokens for t in ok)
    itl = [b - a for t in ok for a, b in zip(t.chunk_times, t.chunk_times[1:])]
    d = max(duration_s, 1e-9)
    return RunResult(
        name=name, workload=workload, mode=mode, config=config, num_requests=len(timings), completed=len(ok),
        errors=sum(t.error is not None for t in timings), duration_s=duration_s, prompt_tokens=prompt,
        output_tokens=out, cached_tokens=cached, req_per_s=len(ok) / d, input_tok_per_s=prompt / d,
        output_tok_per_s=out / d, total_tok_per_s=(prompt + out) / d,
        ttft_s=percentiles([t.first_token - t.sent for t in ok if t.first_token is not None]),
        itl_s=percentiles(itl), e2e_s=percentiles([t.done - t.sent for t in ok]),
        cache_hit_rate=cached / prompt_ok if prompt_ok else 0.0, optimal_hit_rate=optimal, **extra)
