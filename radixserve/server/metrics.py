"""Prometheus metrics on a registry of our own (never the process-global one).

Engine counters and gauges are read from `engine.stats()` at scrape time by a custom collector,
so they can never drift from the engine's own numbers. Latency histograms are observed by the
server, which is the only place that sees a request's wall-clock life.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from radixserve.engine.interface import EngineHandle

PREFIX = "radixserve"
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class EngineCollector:
    """Turns one `engine.stats()` snapshot into Prometheus metric families."""

    _COUNTERS = (("prompt_tokens", "Prompt tokens received"),
                 ("cached_tokens", "Prompt tokens served from the radix cache"),
                 ("generated_tokens", "Tokens generated"),
                 ("evicted_tokens", "Tokens evicted from the radix cache"),
                 ("retractions", "Running requests retracted for lack of KV slots"),
                 ("tokens_after_stop", "Tokens the engine computed after a stop string had matched (dropped)"),
                 ("spec_draft_tokens", "Speculative decoding: draft tokens verified"),
                 ("spec_accepted_tokens", "Speculative decoding: draft tokens accepted"))
    _GAUGES = (("running", "Requests running"), ("waiting", "Requests waiting"),
               ("kv_used_tokens", "KV slots in use"), ("kv_capacity_tokens", "KV slots in the pool"),
               ("kv_tree_tokens", "KV slots held by the radix cache"),
               ("kv_private_tokens", "KV slots private to running requests"),
               ("kv_usage", "Fraction of KV slots in use (0..1)"),
               ("tree_hit_rate", "Fraction of prompt tokens served from the radix cache"))

    def __init__(self, engine: EngineHandle) -> None:
        self._engine = engine

    def collect(self):
        stats = self._engine.stats()
        for key, doc in self._COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{key}", doc, value=float(stats.get(key, 0)))
        for key, doc in self._GAUGES:
            yield GaugeMetricFamily(f"{PREFIX}_{key}", doc, value=float(stats.get(key, 0)))
        finished = CounterMetricFamily(f"{PREFIX}_requests_finished", "Requests finished, by finish reason",
                                       labels=["finish_reason"])
        for reason, count in sorted(stats.get("requests_finished", {}).items()):
            finished.add_metric([str(reason)], float(count))
        yield finished


class LatencyMetrics:
    """A registry with `collector` (the gauges and counters read at scrape time) and the request
    latency histograms a RequestClock fills."""

    def __init__(self, collector: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token (streamed requests)",
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds", "Time between streamed chunks of one sample",
                             buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds", "Request arrival to last token",
                             buckets=_E2E_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def clock(self) -> RequestClock:
        return RequestClock(self)


class ServerMetrics(LatencyMetrics):
    def __init__(self, engine: EngineHandle) -> None:
        super().__init__(EngineCollector(engine))


class RequestClock:
    """Times one request: TTFT at its first token, ITL between chunks of each sample, e2e at the end."""

    def __init__(self, metrics: LatencyMetrics) -> None:
        self._m = metrics
        self.start = time.perf_counter()
        self._last: dict[int, float] = {}

    def tokens(self, index: int, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        if not self._last:
            self._m.ttft.observe(now - self.start)
        prev = self._last.get(index)
        if prev is not None:
            # NOTE: a chunk of k tokens counts as k gaps of equal length
            for _ in range(count):
                self._m.itl.observe((now - prev) / count)
        self._last[index] = now

    def done(self) -> None:
        self._m.e2e.observe(time.perf_counter() - self.start)
