"""Soak the split server: `radixserve serve` (front end + engine process) under concurrent clients
for a fixed time, with random prompt and output lengths, 20% of streaming clients disconnecting
mid-stream, random aborts (non-streaming clients that give up early) and a few intended bad requests.

Passes when: no error other than the intended ones, KV used returns to the cached-only level
(private slots 0, used == tree) once idle, and the RSS of both processes is flat (end vs the
level after warm-up). Writes OUT.json and OUT.md (and the log lines it printed).

    python benchmarks/soak_serving.py --minutes 10 --out benchmarks/results/soak_serving_cpu
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

WORDS = ("river stone light market garden window paper silver engine cloud winter harbor story "
         "lantern orchard bridge meadow signal copper thunder").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def engine_pid(front: int) -> int:
    for task in os.listdir(f"/proc/{front}/task"):
        with open(f"/proc/{front}/task/{task}/children") as f:
            for c in f.read().split():
                with open(f"/proc/{c}/cmdline") as g:
                    if "spawn_main" in g.read():
                        return int(c)
    raise RuntimeError("no engine process found")


def metrics(text: str) -> dict[str, float]:
    out = {}
    for name in ("running", "waiting", "kv_used_tokens", "kv_tree_tokens", "kv_private_tokens", "generated_tokens_total",
                 "tokens_after_stop_total"):
        m = re.search(rf"^radixserve_{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def error(self, what: str) -> None:
        self.add("unexpected_error")
        if len(self.errors) < 50:
            self.errors.append(what)


async def one_client(client: httpx.AsyncClient, rng: random.Random, tally: Tally, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))
        max_tokens = rng.randint(1, 96)
        roll = rng.random()
        try:
            if roll < 0.03:  # intended bad input: a 400 naming the field, nothing leaks
                r = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": -3})
                tally.add("intended_400" if r.status_code == 400 else "x")
                if r.status_code != 400:
                    tally.error(f"bad input got {r.status_code}: {r.text[:200]}")
            elif roll < 0.70:  # streaming; 20% of these disconnect mid-stream
                disconnect = rng.random() < 0.2
                cut = rng.randint(1, max(1, max_tokens // 2))
                body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": rng.choice([0, 0.8]),
                        "stop": rng.choice([None, ["the"], ["\n\n", "stone"]])}
                chunks, done = 0, False
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        tally.error(f"stream got {r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            if '"error"' in line:
                                tally.error(f"in-band error: {line[:200]}")
                            chunks += 1
                            if disconnect and chunks >= cut:
                                break
                if disconnect and not done:
                    tally.add("intended_disconnect")
                elif done:
                    tally.add("stream_ok")
                else:
                    tally.error("stream ended without [DONE]")
            elif roll < 0.80:  # a random abort: the client gives up before the answer comes
                try:
                    await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 96, "ignore_eos": True},
                                      timeout=rng.uniform(0.05, 1.0))
                    tally.add("abort_too_late")  # it finished first: fine
                except httpx.TimeoutException:
                    tally.add("intended_abort")
            else:
                r = await client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "n": rng.choice([1, 1, 2])})
                if r.status_code == 200 and r.json()["choices"]:
                    tally.add("chat_ok")
                else:
                    tally.error(f"chat got {r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            tally.error(f"{type(exc).__name__}: {exc}")


async def soak(url: str, minutes: float, clients: int, seed: int, sample, log) -> Tally:
    tally = Tally()
    stop_at = time.monotonic() + minutes * 60
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def sampler():
            while time.monotonic() < stop_at:
                await asyncio.sleep(30)
                log(json.dumps({"t": round(time.monotonic() - t0), **sample(), **tally.counts}))
        t0 = time.monotonic()
        task = asyncio.create_task(sampler())
        await asyncio.gather(*(one_client(client, random.Random(seed + i), tally, stop_at) for i in range(clients)))
        task.cancel()
    return tally


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--max-total-tokens", type=int, default=16384)
    ap.add_argument("--out", default="benchmarks/results/soak_serving_cpu")
    args = ap.parse_args()
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    port = free_port()
    cmd = [sys.executable, "-m", "radixserve", "serve", "--port", str(port), "--max-total-tokens",
           str(args.max_total_tokens), "--max-context-len", "2048", "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    front = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if front.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not come up")
            time.sleep(0.5)
        eng = engine_pid(front.pid)

        def sample() -> dict:
            m = metrics(httpx.get(url + "/metrics", timeout=30).text)
            return {"front_rss_mib": round(rss_mib(front.pid), 1), "engine_rss_mib": round(rss_mib(eng), 1),
                    "running": m["running"], "kv_used": m["kv_used_tokens"], "kv_tree": m["kv_tree_tokens"]}

        # warm-up: one minute of the same load, so allocator pools and caches reach their size
        asyncio.run(soak(url, 1.0, args.clients, args.seed + 1000, sample, log))
        start = sample()
        log("after warm-up: " + json.dumps(start))
        t0 = time.monotonic()
        tally = asyncio.run(soak(url, args.minutes, args.clients, args.seed, sample, log))
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 120
        while True:  # idle: nothing running, every slot back to the tree or free
            m = metrics(httpx.get(url + "/metrics", timeout=30).text)
            if m["running"] == 0 and m["waiting"] == 0:
                break
            if time.monotonic() > deadline:
                tally.error(f"not idle 120 s after the load stopped: {m}")
                break
            time.sleep(0.5)
        end = sample()
        log("idle after the soak: " + json.dumps(end))
        kv_ok = m["kv_private_tokens"] == 0 and m["kv_used_tokens"] == m["kv_tree_tokens"]
        growth = {k: round(end[k] - start[k], 1) for k in ("front_rss_mib", "engine_rss_mib")}
        # NOTE: "flat" = within 5% (or 30 MiB) of the post-warm-up level; the radix cache's own growth is KV
        # (preallocated), so any real leak of requests, streams or buffers shows up here.
        flat = all(growth[k] <= max(30.0, 0.05 * start[k]) for k in growth)
        result = {
            "date": "2026-11-24", "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), {platform.system()}",
            "command": " ".join(["python", "benchmarks/soak_serving.py"] + sys.argv[1:]),
            "minutes": round(elapsed / 60, 2), "clients": args.clients, "model": args.model or "embedded SmolLM2-135M",
            "counts": tally.counts, "unexpected_errors": tally.errors, "kv_after": m, "kv_cached_only": kv_ok,
            "rss_start_mib": {k: start[k] for k in ("front_rss_mib", "engine_rss_mib")},
            "rss_end_mib": {k: end[k] for k in ("front_rss_mib", "engine_rss_mib")}, "rss_growth_mib": growth,
            "rss_flat": flat, "passed": not tally.errors and kv_ok and flat,
        }
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(args.out + ".log", "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(args.out + ".md", "w") as f:
            f.write(f"# Soak of the split server (CPU)\n\n{result['machine']}, {result['date']}\n\n"
                    f"`{result['command']}`\n\n"
                    f"- {result['minutes']} min, {args.clients} concurrent clients, {result['model']}; "
                    "random prompt (3-300 words) and output (1-96 tokens) lengths\n"
                    f"- outcomes: {json.dumps(tally.counts)}\n"
                    f"- unexpected errors: {len(tally.errors)}\n"
                    f"- idle after: kv_used {m['kv_used_tokens']:.0f}, kv_tree {m['kv_tree_tokens']:.0f}, "
                    f"kv_private {m['kv_private_tokens']:.0f} (cached-only: {kv_ok})\n"
                    f"- RSS after warm-up -> end (MiB): front end {start['front_rss_mib']} -> {end['front_rss_mib']}, "
                    f"engine {start['engine_rss_mib']} -> {end['engine_rss_mib']} (flat: {flat})\n"
                    f"- tokens computed after a stop string and dropped: {m['tokens_after_stop_total']:.0f} of "
                    f"{m['generated_tokens_total']:.0f} generated\n"
                    f"- passed: {result['passed']}\n\nSamples every 30 s: `{os.path.basename(args.out)}.log`.\n")
        log(json.dumps({"passed": result["passed"], "counts": tally.counts}))
        return 0 if result["passed"] else 1
    finally:
        front.send_signal(signal.SIGTERM)
        try:
            front.wait(120)
        except subprocess.TimeoutExpired:
            front.kill()


if __name__ == "__main__":
    sys.exit(main())
