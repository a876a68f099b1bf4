"""What the engine <-> front end messages cost: pickling one scheduler step's outputs as plain
tuples (radixserve/engine/wire.py) and moving them over a ZeroMQ ipc socket, per step and per
token, at batch sizes of a busy server. Writes OUT.json and OUT.md.

    python benchmarks/ipc_serialisation.py --out benchmarks/results/ipc_serialisation_cpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import zmq

from radixserve.engine import wire
from radixserve.outputs import TokenLogprob


def step_batch(batch: int, top: int) -> list[tuple]:
    lps = [TokenLogprob(1234, -0.25, [(1234 + j, -0.25 - j) for j in range(top)])] if top else None
    return [(wire.TOKENS, f"cmpl-{i:032x}", 0, [1000 + i], wire.logprobs_to_wire(lps), None, 200, 64, None)
            for i in range(batch)]


def timed(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/ipc_serialisation_cpu")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    rows = []
    ctx = zmq.Context()
    d = tempfile.mkdtemp()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{d}/s")
    push.connect(f"ipc://{d}/s")
    for batch in (1, 32, 256, 1024):
        for top in (0, 5):
            items = step_batch(batch, top)
            data = wire.dumps(items)
            dumps = timed(lambda: wire.dumps(items), args.repeats)
            loads = timed(lambda: wire.loads(data), args.repeats)

            def hop():
                push.send(wire.dumps(items))
                wire.loads(pull.recv())
            hop_s = timed(hop, args.repeats)
            rows.append({"batch": batch, "top_logprobs": top, "bytes": len(data), "dumps_us": dumps * 1e6,
                         "loads_us": loads * 1e6, "send_recv_us": hop_s * 1e6,
                         "per_token_us": hop_s * 1e6 / batch})
    push.close(0)
    pull.close(0)
    ctx.term()
    doc = {"date": "2026-11-24", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
           "(shared with other jobs while measured)", "command": " ".join(["python"] + sys.argv), "rows": rows}
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    md = ["# Engine <-> front end message cost (one scheduler step's outputs)", "",
          f"{doc['machine']}, {doc['date']}", "", f"`{doc['command']}`", "",
          "One message per step, pickled plain tuples; send_recv = pickle + ZeroMQ ipc send + receive + unpickle "
          "(one process, both ends).", "",
          "| requests in step | top logprobs | bytes | dumps us | loads us | send+recv us | per token us |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['top_logprobs']} | {r['bytes']} | {r['dumps_us']:.0f} | {r['loads_us']:.0f} | "
           f"{r['send_recv_us']:.0f} | {r['per_token_us']:.2f} |" for r in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
