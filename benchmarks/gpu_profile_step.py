"""Where does a decode step's host time go? torch.profiler over Engine.generate at batch 1:
prints the CUDA runtime calls that block the host (synchronize, blocking copies, host allocs)
and the slowest host-side ops. Usage: python benchmarks/gpu_profile_step.py [--tokenizer DIR]"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from radixserve import Engine, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama-3.1-8b")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--find-syncs", action="store_true", help="report where the host waits for the device")
    args = ap.parse_args()
    engine = Engine(args.model, tokenizer=args.tokenizer, device="cuda")
    params = SamplingParams(max_new_tokens=64, temperature=0, ignore_eos=True)
    prompts = [[100 + i] * 128 for i in range(args.batch)]
    engine.generate(input_ids=prompts, sampling_params=params)  # warm-up
    if args.find_syncs:
        import traceback
        import warnings
        seen = set()

        def show(message, category, filename, lineno, file=None, line=None):
            stack = "".join(traceback.format_stack(limit=8)[:-2])
            if stack not in seen:
                seen.add(stack)
                print(f"SYNC: {message}\n{stack}")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        engine.generate(input_ids=prompts, sampling_params=params)
        torch.cuda.set_sync_debug_mode(0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate(input_ids=prompts, sampling_params=params)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table)
    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize",
             "cudaHostAlloc", "cudaMallocHost", "cudaStreamWaitEvent")
    for evt in prof.key_averages():
        if any(n in evt.key for n in names):
            print(f"{evt.key:40s} calls {evt.count:6d} cpu total {evt.cpu_time_total / 1e3:8.2f} ms")
    engine.shutdown()


if __name__ == "__main__":
    main()
