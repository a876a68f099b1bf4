"""`radixserve bench dp`: N replicas behind the router (cache-aware, then round-robin) against one
engine, on the shared-prefix workload, in one run.

The replicas are `radixserve serve` processes (one per GPU, or CPU processes sharing the cores),
the router runs in this process, the clients are the online benchmark's streaming clients
(/v1/completions with token ids). Between runs every replica's cache is flushed. The single
engine runs after the fleet has stopped (on GPU it takes the first GPU), with N times a
replica's KV when --max-total-tokens is given (the fleet's memory), else with one GPU's.

Orders: `interleaved` sends the requests in rounds, one question per group in a shuffled order
each round (steady traffic from every tenant); `shuffled` is a uniform random order. (With
uniformly random tenants, a replica holding k of N group prompts hits k/N of its requests
whatever the routing, one serving N/R groups at most k/(N/R): the cache-aware / round-robin
hit-rate ratio is at most R there.)
"""
from __future__ import annotations

import logging
import random
import time
from typing import Any

import httpx

from radixserve.bench import report
from radixserve.bench.online import run_online
from radixserve.bench.workloads import Workload
from radixserve.engine_flags import engine_argv

logger = logging.getLogger(__name__)
ORDERS = ("interleaved", "shuffled")


def interleave(w: Workload, seed: int = 0) -> Workload:
    """Rounds of one request per group, groups in a fresh random order each round."""
    rng = random.Random(seed)
    by_group: dict[int, list] = {}
    for r in w.requests:
        by_group.setdefault(r.group, []).append(r)
    out, rounds = [], max(len(v) for v in by_group.values())
    for i in range(rounds):
        groups = [g for g in by_group if i < len(by_group[g])]
        rng.shuffle(groups)
        out += [by_group[g][i] for g in groups]
    return Workload(w.name, {**w.settings, "order": "interleaved"}, requests=out)


def _wait_healthy(urls: list[str], timeout_s: float, procs: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        for u in list(pending):
            try:
                if httpx.get(u + "/health", timeout=2).status_code == 200:
                    pending.discard(u)
            except httpx.TransportError:
                pass
        if procs is not None and any(p is not None and p.poll() is not None for p in procs.procs):
            raise RuntimeError("a replica process exited during start-up; see its log above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas not up after {timeout_s:.0f} s: {sorted(pending)}")
        time.sleep(0.5)


def _flush(urls: list[str]) -> None:
    for u in urls:
        r = httpx.post(u + "/flush_cache", timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{u} did not flush its cache: HTTP {r.status_code} {r.text[:200]}")


def _engine_argv(engine: dict[str, Any]) -> list[str]:
    return engine_argv({k: v for k, v in engine.items() if v is not None})


def _router_stats(router) -> dict:
    reps = []
    for r in router.replicas:
        s = r.stats
        reps.append({"replica": r.index, "decisions": dict(s.decisions), "requests": s.requests,
                     "reported": s.reported, "prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
                     "predicted_cached_tokens": s.predicted_cached_tokens, "exact_predictions": s.exact_predictions,
                     "events": s.events, "resyncs": s.resyncs, "mirror_tokens": r.mirror.num_tokens})
    return {"replicas": reps, "failovers": router.failovers}


def run_dp(n: int, engine: dict[str, Any], workloads: dict[str, Workload], out_dir: str, stem: str, title: str,
           rate: float, max_concurrency: int, base_port: int, startup_timeout_s: float = 900.0) -> dict:
    """The fleet under each policy and order, then the single engine; one report."""
    from radixserve.router.config import RouterConfig
    from radixserve.router.launch import ReplicaProcesses, RouterThread, replica_devices

    ports = [base_port + i for i in range(n)]
    argv = ["--log-level", "warning", *_engine_argv(engine)]
    runs, routing = [], {}
    fleet = ReplicaProcesses(argv, ports, replica_devices(n, engine.get("device") or "auto")).start()
    try:
        _wait_healthy(fleet.urls, startup_timeout_s, fleet)
        for order, w in workloads.items():
            for policy in ("cache-aware", "round-robin"):
                _flush(fleet.urls)
                config = RouterConfig(replicas=tuple(fleet.urls), policy=policy, model=engine.get("model"),
                                      tokenizer=engine.get("tokenizer"), poll_interval_s=0.05)
                with RouterThread(config, ready_timeout_s=startup_timeout_s) as rt:
                    name = f"{n} replicas, {policy} ({order})"
                    logger.info("running %s", name)
                    result = run_online(rt.url, rt.router.info["model"], w, rate, max_concurrency, name=name,
                                        config={"replicas": n, "policy": policy, "order": order, **engine})
                    runs.append(result.to_dict())
                    routing[name] = _router_stats(rt.router)
    finally:
        fleet.stop()
    single = dict(engine)
    if engine.get("max_total_tokens"):
        single["max_total_tokens"] = n * engine["max_total_tokens"]
    solo = ReplicaProcesses(["--log-level", "warning", *_engine_argv(single)], [base_port],
                            replica_devices(1, engine.get("device") or "auto")).start()
    try:
        _wait_healthy(solo.urls, startup_timeout_s, solo)
        model = httpx.get(solo.urls[0] + "/v1/models", timeout=10).json()["data"][0]["id"]
        for order, w in workloads.items():
            _flush(solo.urls)
            name = f"one engine ({order})"
            logger.info("running %s", name)
            runs.append(run_online(solo.urls[0], model, w, rate, max_concurrency, name=name,
                                   config={"replicas": 1, "order": order, **single}).to_dict())
    finally:
        solo.stop()
    by = {r["name"]: r for r in runs}
    lines = []
    for order in workloads:
        ca, rr = by[f"{n} replicas, cache-aware ({order})"], by[f"{n} replicas, round-robin ({order})"]
        one = by[f"one engine ({order})"]
        lines.append(f"- **{order}**: cached-token rate cache-aware {ca['cache_hit_rate']:.1%}, round-robin "
                     f"{rr['cache_hit_rate']:.1%}, one engine {one['cache_hit_rate']:.1%} (optimal "
                     f"{one['optimal_hit_rate']:.1%}): cache-aware / one engine = "
                     f"**{ca['cache_hit_rate'] / max(one['cache_hit_rate'], 1e-9):.1%}**, cache-aware / round-robin = "
                     f"**{ca['cache_hit_rate'] / max(rr['cache_hit_rate'], 1e-9):.2f}x**")
        lines.append(f"  - output tok/s: cache-aware {ca['output_tok_per_s']:.1f}, round-robin "
                     f"{rr['output_tok_per_s']:.1f}, one engine {one['output_tok_per_s']:.1f}; errors "
                     f"{ca['errors']} / {rr['errors']} / {one['errors']}")
        st = routing[ca["name"]]["replicas"]
        exact = sum(s["exact_predictions"] for s in st) / max(1, sum(s["requests"] for s in st))
        lines.append(f"  - cache-aware routing: decisions {[s['decisions'] for s in st]}; the mirror predicted the "
                     f"replica's cached tokens exactly for {exact:.1%} of requests")
    extra = {"workloads": {o: w.settings for o, w in workloads.items()}, "routing": routing,
             "single_engine": single, "replica_engine": engine, "replicas": n}
    return report.write(out_dir, stem, title, runs, extra, lines)
