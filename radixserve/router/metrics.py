"""Prometheus metrics of the router, on a registry of its own.

Per replica (label `replica` = its index): routing decisions by reason, health, load, prompt and
cached tokens as the replica reported them in its answers, cached tokens as the mirror predicted them, the hit
rate, the mirrored cache's size, events applied and resyncs. Latency histograms as the server's.
"""
from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from radixserve.server.metrics import LatencyMetrics

PREFIX = "radixserve_router"


class RouterCollector:
    def __init__(self, router: Any) -> None:
        self._router = router

    def collect(self):
        reps = self._router.replicas
        decisions = CounterMetricFamily(f"{PREFIX}_decisions", "Requests routed, by replica and reason "
                                        "(cache, cold, balance, round-robin; load: a prompt the router could not build; "
                                        "pinned: a /v1/responses follow-up)", labels=["replica", "reason"])
        for r in reps:
            for reason, count in sorted(r.stats.decisions.items()):
                decisions.add_metric([str(r.index), reason], float(count))
        yield decisions
        per_replica = (
            (CounterMetricFamily, "prompt_tokens", "Prompt tokens of finished requests",
             lambda r: r.stats.prompt_tokens),
            (CounterMetricFamily, "cached_tokens", "Prompt tokens the replica served from its cache",
             lambda r: r.stats.cached_tokens),
            (CounterMetricFamily, "predicted_cached_tokens", "Cached prompt tokens the mirror predicted when routing",
             lambda r: r.stats.predicted_cached_tokens),
            (CounterMetricFamily, "exact_predictions", "Requests whose cached tokens the mirror predicted exactly",
             lambda r: r.stats.exact_predictions),
            (CounterMetricFamily, "requests", "Requests answered", lambda r: r.stats.requests),
            (CounterMetricFamily, "reported_requests", "Requests whose answer reported its cache usage (the token "
             "counts are theirs; a stream without usage reports none)", lambda r: r.stats.reported),
            (CounterMetricFamily, "failed_requests", "Requests that failed on the replica", lambda r: r.stats.failed),
            (CounterMetricFamily, "cache_events", "Cache events (insertions, evictions) applied to the mirror",
             lambda r: r.stats.events),
            (CounterMetricFamily, "resyncs", "Mirror rebuilt from a dump of the replica's tree",
             lambda r: r.stats.resyncs),
            (GaugeMetricFamily, "hit_rate", "Fraction of prompt tokens served from the replica's cache",
             lambda r: r.stats.cached_tokens / r.stats.prompt_tokens if r.stats.prompt_tokens else 0.0),
            (GaugeMetricFamily, "healthy", "1 if the replica answers and tokenises like the router",
             lambda r: float(r.usable)),
            (GaugeMetricFamily, "load", "Sequences in flight from this router", lambda r: r.load),
            (GaugeMetricFamily, "mirror_tokens", "Tokens in the mirror of the replica's cache",
             lambda r: r.mirror.num_tokens),
            (GaugeMetricFamily, "mirror_footprint_tokens", "Mirrored plus in-flight tokens",
             lambda r: r.mirror.footprint),
        )
        for family, name, doc, value in per_replica:
            m = family(f"{PREFIX}_replica_{name}", doc, labels=["replica"])
            for r in reps:
                m.add_metric([str(r.index)], float(value(r)))
            yield m
        yield CounterMetricFamily(f"{PREFIX}_failovers", "Requests moved to another replica after a failure",
                                  value=float(self._router.failovers))


class RouterMetrics(LatencyMetrics):
    def __init__(self, router: Any) -> None:
        super().__init__(RouterCollector(router))
