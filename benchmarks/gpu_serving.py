"""Serving under load, in one run (made for one H100 and `dummy:llama-3.1-8b`, runs anywhere):

1. the offline engine (Engine.generate, in process) on a ShareGPT-shaped workload: the baseline;
2. the same workload over HTTP with C concurrent streaming clients against `radixserve serve`
   (split layout: front end + engine process), and against `--no-engine-process` (everything in
   one process) for comparison; req/s as a fraction of the offline engine's; TTFT and ITL p50/p99;
3. a latency-throughput curve on the split server: Poisson arrivals at several rates up to
   saturation (inf), TTFT/ITL p50/p99 vs offered load (PNG).

    python benchmarks/gpu_serving.py --model dummy:llama-3.1-8b --tokenizer DIR --out-dir OUT
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import time

import httpx

from radixserve.bench import report, workloads
from radixserve.bench.offline import run_offline, warmup
from radixserve.bench.online import run_online

logger = logging.getLogger("gpu_serving")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vocab_of(model: str | None) -> int:
    if model and model.startswith("dummy:"):
        from radixserve.models.dummy import dummy_config

        return int(dummy_config(model.removeprefix("dummy:")).vocab_size)
    return 32000


class Server:
    """`radixserve serve` in a subprocess."""

    def __init__(self, engine_args: list[str], split: bool, timeout_s: float = 600) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "radixserve", "serve", "--port", str(self.port), "--log-level", "warning",
               "--engine-process" if split else "--no-engine-process", *engine_args]
        logger.info("starting %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not come up")
            time.sleep(1)
        self.model = httpx.get(self.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        warm = {"model": self.model, "prompt": list(range(100, 164)), "max_tokens": 4}
        httpx.post(self.url + "/v1/completions", json=warm, timeout=300)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def brief(r: dict) -> str:
    f = lambda d, k: "-" if d.get(k) is None else f"{d[k] * 1000:.0f}"  # noqa: E731
    return (f"{r['req_per_s']:.2f} req/s, {r['output_tok_per_s']:.0f} out tok/s, TTFT p50/p99 "
            f"{f(r['ttft_s'], 'p50')}/{f(r['ttft_s'], 'p99')} ms, ITL p50/p99 {f(r['itl_s'], 'p50')}/"
            f"{f(r['itl_s'], 'p99')} ms, {r['errors']} errors")


def plot_curve(points: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [p["achieved_req_per_s"] for p in points]
    for ax, key, name in ((axes[0], "ttft_s", "TTFT"), (axes[1], "itl_s", "ITL")):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(x, [(p[key][q] or 0) * 1000 for p in points], style, label=f"{name} {q}")
        for p in points:
            ax.annotate(f"{p['offered']}", (p["achieved_req_per_s"], (p[key]["p99"] or 0) * 1000), fontsize=7)
        ax.set_xlabel("throughput (completed req/s); labels: offered rate")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama-3.1-8b")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", default="benchmarks/results/gpu_serving")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--rates", default="8,16,24,32,inf", help="offered req/s of the curve (inf: all at once)")
    ap.add_argument("--curve-requests", type=int, default=400)
    ap.add_argument("--curve-concurrency", type=int, default=1024)
    ap.add_argument("--no-inprocess-http", action="store_true", help="skip the one-process HTTP comparison")
    ap.add_argument("--max-total-tokens", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    vocab = vocab_of(args.model)
    w = workloads.sharegpt(args.num_requests, vocab, args.seed)
    options = {"model": args.model, "device": args.device}
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    if args.max_total_tokens:
        options["max_total_tokens"] = args.max_total_tokens
    engine_args = []
    for k, v in options.items():
        engine_args += ["--" + k.replace("_", "-"), str(v)]
    runs: list[dict] = []
    t_all = time.monotonic()

    # 1. offline baseline
    from radixserve import Engine

    engine = Engine(**options)
    try:
        warmup(engine, engine.vocab_size)
        offline = run_offline(engine, w, "offline, in-process generate_stream").to_dict()
    finally:
        engine.shutdown()
        del engine
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
    runs.append(offline)
    logger.info("offline: %s", brief(offline))

    # 2. HTTP, split layout, then one process
    layouts = [("split", True)] + ([] if args.no_inprocess_http else [("one process", False)])
    curve: list[dict] = []
    for label, split in layouts:
        srv = Server(engine_args, split)
        try:
            r = run_online(srv.url, srv.model, w, float("inf"), args.concurrency,
                           name=f"HTTP {label}, {args.concurrency} streams",
                           config={"layout": label, "model": args.model}).to_dict()
            r["fraction_of_offline"] = r["req_per_s"] / offline["req_per_s"]
            runs.append(r)
            logger.info("HTTP %s: %s (%.0f%% of offline)", label, brief(r), 100 * r["fraction_of_offline"])
            if split:  # 3. the latency-throughput curve on the split server
                for i, rate_s in enumerate(args.rates.split(",")):
                    rate = float(rate_s)
                    cw = workloads.sharegpt(args.curve_requests, vocab, args.seed + 1 + i)
                    c = run_online(srv.url, srv.model, cw, rate, args.curve_concurrency,
                                   name=f"curve rate {rate_s}", config={"rate": rate_s}).to_dict()
                    curve.append({"offered": rate_s, "achieved_req_per_s": c["req_per_s"], "ttft_s": c["ttft_s"],
                                  "itl_s": c["itl_s"], "e2e_s": c["e2e_s"], "errors": c["errors"],
                                  "output_tok_per_s": c["output_tok_per_s"]})
                    logger.info("curve rate %s: %s", rate_s, brief(c))
        finally:
            srv.stop()

    title = (f"Serving under load: {args.model}, ShareGPT-shaped {args.num_requests} requests, "
             f"{args.concurrency} concurrent streams vs the offline engine")
    lines = [f"- {r['name']}: {brief(r)}" + (f" — **{100 * r['fraction_of_offline']:.0f}% of offline**"
                                              if "fraction_of_offline" in r else "") for r in runs]
    lines += ["", "Latency-throughput (split server, Poisson arrivals):", "",
              "| offered req/s | achieved req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |",
              "|---|---|---|---|---|---|---|"]
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
    for p in curve:
        lines.append(f"| {p['offered']} | {p['achieved_req_per_s']:.2f} | {ms(p['ttft_s']['p50'])} | "
                     f"{ms(p['ttft_s']['p99'])} | {ms(p['itl_s']['p50'])} | {ms(p['itl_s']['p99'])} | {p['errors']} |")
    lines += ["", "![latency vs load](serving_curve.png)", "", f"whole run: {time.monotonic() - t_all:.0f} s"]
    os.makedirs(args.out_dir, exist_ok=True)
    if curve:
        plot_curve(curve, os.path.join(args.out_dir, "serving_curve.png"),
                   f"{args.model}: TTFT / ITL vs load (split server)")
    report.write(args.out_dir, "serving_http_vs_offline", title, runs, {"curve": curve}, lines, latency_plot=True)
    print(json.dumps({"runs": [{k: r[k] for k in ("name", "req_per_s")} | {"fraction": r.get("fraction_of_offline")}
                               for r in runs], "curve": curve}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
