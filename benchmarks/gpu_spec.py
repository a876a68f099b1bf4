"""Speculative decoding machinery on the GPU, random Llama-3.1-8B weights (dummy:).

Random weights accept nothing a real proposer drafts, so this benchmark measures the machinery
with a BENCHMARK-ONLY proposer: it drafts the target's own greedy continuation (recorded by a run
with speculation off) and corrupts each drafted token with probability 1 - a, so a draft token is
accepted with a controlled per-token probability a (0%, 50%, 80%, 95%). Not a real proposer.

Per batch size (1, 8, 32, 64) and draft length k (2, 4, 6): output tok/s with speculation off and
with the oracle at each acceptance; the ratio; mean time per step (verify steps vs plain decode
steps: that is what decides the gain). Outputs are checked equal to speculation off.

Usage: python benchmarks/gpu_spec.py --out DIR --tokenizer DIR   (about 3 minutes on one H100)
Writes gpu_spec_<chip>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from radixserve import Engine, SamplingParams  # noqa: E402
from radixserve.bench.report import header, head_lines, save  # noqa: E402

BATCHES = (1, 8, 32, 64)
KS = (2, 4, 6)
ACCEPT = (0.0, 0.5, 0.8, 0.95)
PROMPT, NEW = 256, 128


class OracleProposer:
    """Drafts the recorded greedy continuation, each token kept with probability `accept`
    (the first corrupted token ends the draft: nothing after a rejection is looked at)."""

    def __init__(self, recorded: dict[tuple, list[int]], accept: float, vocab: int, seed: int = 0) -> None:
        self.recorded, self.accept, self.vocab = recorded, accept, vocab
        self.rng = random.Random(seed)

    def propose(self, tokens, k, namespace=None):
        cont = self.recorded[tuple(tokens[:PROMPT])]
        done = len(tokens) - PROMPT
        out = []
        for tok in cont[done:done + k]:
            if self.rng.random() < self.accept:
                out.append(tok)
            else:
                out.append((tok + 1) % self.vocab)
                break
        return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(engine: Engine, prompts, params) -> tuple[float, int, list]:
    _sync()
    steps0 = engine.scheduler.step_count
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    _sync()
    return time.perf_counter() - t0, engine.scheduler.step_count - steps0, [o.token_ids for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--model", default="dummy:llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="a smoke run: batch 1 and 8, k 2, accept 0 and 0.8")
    ap.add_argument("--dtype", default=None, help="model dtype (default: the engine's, bf16 on CUDA); float32 keeps "
                    "verify and decode logits close enough that greedy outputs stay equal on random weights")
    ap.add_argument("--batches", default=None, help="comma list overriding the batch sizes")
    ap.add_argument("--ks", default=None, help="comma list overriding the draft lengths")
    ap.add_argument("--accepts", default=None, help="comma list overriding the acceptance probabilities")
    args = ap.parse_args()
    global BATCHES, KS, ACCEPT
    if args.quick:
        BATCHES, KS, ACCEPT = (1, 8), (2,), (0.0, 0.8)
    BATCHES = tuple(int(x) for x in args.batches.split(",")) if args.batches else BATCHES
    KS = tuple(int(x) for x in args.ks.split(",")) if args.ks else KS
    ACCEPT = tuple(float(x) for x in args.accepts.split(",")) if args.accepts else ACCEPT
    opts = dict(device=args.device, tokenizer=args.tokenizer, max_total_tokens=64 * (PROMPT + NEW + 16) + 4096)
    if args.dtype:
        opts["dtype"] = args.dtype
    off = Engine(args.model, **opts)
    vocab = off.vocab_size
    gen = random.Random(0)
    params = SamplingParams(max_new_tokens=NEW, temperature=0, ignore_eos=True)
    runs, recorded = [], {}
    prompts_by_batch = {b: [[gen.randrange(100, 30000) for _ in range(PROMPT)] for _ in range(b)] for b in BATCHES}
    timed(off, prompts_by_batch[1], params)  # warm-up
    base = {}
    for b in BATCHES:
        off.flush_cache()
        timed(off, prompts_by_batch[b], params)  # warm this batch size's kernels and graphs
        off.flush_cache()
        wall, steps, outs = timed(off, prompts_by_batch[b], params)
        for p, o in zip(prompts_by_batch[b], outs):
            recorded[tuple(p)] = o
        base[b] = (wall, steps)
        runs.append({"batch": b, "k": 0, "accept": None, "tok_s": round(b * NEW / wall, 1), "ratio": 1.0,
                     "steps": steps, "ms_per_step": round(1000 * wall / steps, 3), "same_output": True})
        print(runs[-1], flush=True)
    off.shutdown()
    for k in KS:
        on = Engine(args.model, speculative_config={"method": "ngram", "num_speculative_tokens": k, "max_batch": 256}, **opts)
        timed(on, prompts_by_batch[1], params)
        for b in BATCHES:
            for a in ACCEPT:
                on.scheduler.speculator.proposer = OracleProposer(recorded, a, vocab)
                on.flush_cache()
                s0 = on.stats()
                wall, steps, outs = timed(on, prompts_by_batch[b], params)
                refs = [recorded[tuple(p)] for p in prompts_by_batch[b]]
                same = outs == refs
                # tokens equal to speculation off before the first difference, mean over the batch
                agree = sum(next((i for i, (x, y) in enumerate(zip(o, r)) if x != y), len(r))
                            for o, r in zip(outs, refs)) / len(refs)
                st = on.stats()
                runs.append({"batch": b, "k": k, "accept": a, "tok_s": round(b * NEW / wall, 1),
                             "ratio": round(base[b][0] / wall, 3), "steps": steps,
                             "ms_per_step": round(1000 * wall / steps, 3), "same_output": same,
                             "tokens_before_first_difference": agree, "drafted": st["spec_draft_tokens"] - s0["spec_draft_tokens"],
                             "accepted": st["spec_accepted_tokens"] - s0["spec_accepted_tokens"]})
                print(runs[-1], flush=True)
        on.shutdown()
    chip = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    doc = {**header(f"speculative decoding machinery, random Llama-3.1-8B, {chip}"), "prompt": PROMPT, "new": NEW,
           "dtype": dtype, "runs": runs}
    lines = head_lines(doc) + ["", "BENCHMARK-ONLY oracle proposer (drafts the target's recorded greedy continuation, "
                               "each token kept with probability `accept`); greedy, " + dtype + ", CUDA graphs for plain decode "
                               "(verify steps run as extend steps, eagerly).", "",
                               "| batch | k | accept | tok/s | vs off | steps | ms/step | same output | "
                               "tokens before 1st difference | drafted | accepted |",
                               "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['batch']} | {r['k'] or 'off'} | {r['accept'] if r['accept'] is not None else '-'} | "
                     f"{r['tok_s']} | {r['ratio']:.2f}x | {r['steps']} | {r['ms_per_step']} | {r['same_output']} | "
                     f"{r.get('tokens_before_first_difference', NEW)} | {r.get('drafted', '-')} | {r.get('accepted', '-')} |")
    stem = os.path.join(args.out, "gpu_spec_" + ("h100" if "H100" in chip else "h200" if "H200" in chip else chip.lower())
                        + ("" if dtype == "bfloat16" or chip == "cpu" else "_" + dtype))
    save(stem, doc, "\n".join(lines) + "\n")
    print(json.dumps({"wrote": stem}))


if __name__ == "__main__":
    main()
