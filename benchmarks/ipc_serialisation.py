"""What the engine -> front end messages cost: building one scheduler step's outputs (one
wire.Tokens per request), encoding them (radixserve/engine/wire.py) and moving them over a ZeroMQ
ipc socket, per step and per token, at batch sizes of a busy server. Each figure is the median of
--rounds rounds of --repeats calls (the machine may be shared). Writes OUT.json and OUT.md.

    python benchmarks/ipc_serialisation.py --out benchmarks/results/ipc_serialisation_cpu
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import zmq

BATCHES = (1, 32, 256, 1024)
TOPS = (0, 5)


def step_batch(batch: int, top: int) -> list:
    """One step's messages: request i got token 1000 + i (with its own logprobs when top > 0)."""
    from radixserve.engine import wire

    def lps(i: int):
        return [(1000 + i, -0.25, [(1000 + i + j, -0.25 - j) for j in range(top)])] if top else None
    return [wire.Tokens(f"cmpl-{i:032x}", 0, [1000 + i], lps(i), None, 200, 64, None) for i in range(batch)]


def timed(fn: Callable[[], Any], repeats: int, rounds: int) -> float:
    """Median seconds per call over `rounds` rounds of `repeats` calls."""
    fn()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        per_round.append((time.perf_counter() - t0) / repeats)
    return statistics.median(per_round)


def measure(build: Callable[[int, int], list], dumps: Callable[[list], bytes], loads: Callable[[Any], list],
            repeats: int, rounds: int) -> list[dict]:
    """The table's rows for one wire format: build = step_batch, dumps/loads = its encoding."""
    rows = []
    ctx = zmq.Context()
    d = tempfile.mkdtemp()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{d}/s")
    push.connect(f"ipc://{d}/s")
    try:
        for batch in BATCHES:
            for top in TOPS:
                items = build(batch, top)
                data = dumps(items)
                assert loads(data) == items, "the encoding does not round-trip"
                reps = max(5, repeats // max(1, batch // 32))

                def hop():
                    push.send(dumps(items))
                    loads(pull.recv(copy=False).buffer)
                row = {"batch": batch, "top_logprobs": top, "bytes": len(data),
                       "build_us": timed(lambda: build(batch, top), reps, rounds) * 1e6,
                       "dumps_us": timed(lambda: dumps(items), reps, rounds) * 1e6,
                       "loads_us": timed(lambda: loads(data), reps, rounds) * 1e6,
                       "send_recv_us": timed(hop, reps, rounds) * 1e6}
                row["per_token_us"] = row["send_recv_us"] / batch
                rows.append(row)
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
    return rows


def write(out: str, rows: list[dict], what: str) -> None:
    doc = {"date": datetime.date.today().isoformat(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                      "(shared with other jobs while measured)",
           "command": " ".join(["python"] + sys.argv), "wire": what, "rows": rows}
    with open(out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    md = ["# Engine <-> front end message cost (one scheduler step's outputs)", "",
          f"{doc['machine']}, {doc['date']}", "", f"`{doc['command']}`", "",
          f"One message per step: {what}. build = making the step's messages; send_recv = encode + ZeroMQ ipc "
          "send + receive + decode (one process, both ends). Medians of rounds.", "",
          "| requests in step | top logprobs | bytes | build us | dumps us | loads us | send+recv us | per token us |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['top_logprobs']} | {r['bytes']} | {r['build_us']:.0f} | {r['dumps_us']:.0f} | "
           f"{r['loads_us']:.0f} | {r['send_recv_us']:.0f} | {r['per_token_us']:.2f} |" for r in rows]
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> int:
    from radixserve.engine import wire

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/ipc_serialisation_cpu")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rows = measure(step_batch, wire.encode, wire.decode_from_engine, args.repeats, args.rounds)
    write(args.out, rows, "typed messages (msgspec Structs, MessagePack)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
