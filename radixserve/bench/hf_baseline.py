"""Baseline: transformers `generate`, batched with left padding, greedy, forced output length."""
from __future__ import annotations

import logging
import os
import time

import torch
from tqdm import tqdm

from radixserve.bench.metrics import RequestTiming, RunResult, summarize
from radixserve.bench.workloads import Workload, optimal_hit_rate

logger = logging.getLogger(__name__)


def load_hf_model(model: str | None, device: str, dtype: torch.dtype):
    """The same model as radixserve's `model` argument: None = the embedded GGUF (same weights),
    a HF directory, or dummy:<name> (random weights of the same shape, initialised on `device`)."""
    from transformers import AutoModelForCausalLM

    from radixserve.models.loader import embedded_model_path

    if model is None or model.endswith(".gguf"):
        path = embedded_model_path() if model is None else model
        folder, name = os.path.split(path)
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).to(device).eval()
    if model.startswith("dummy:"):
        from radixserve.models.dummy import dummy_config

        with torch.device(device):
            return AutoModelForCausalLM.from_config(dummy_config(model.removeprefix("dummy:")), dtype=dtype).eval()
    return AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()


@torch.inference_mode()
def run_hf_generate(hf_model, workload: Workload, batch_size: int, pad_id: int = 0,
                    config: dict | None = None) -> RunResult:
    """Run the workload's requests in batches of `batch_size` (in order). Every request of a batch
    generates the batch's largest max_new_tokens (min_new_tokens forces the length)."""
    if workload.is_multi_turn:
        raise ValueError("the transformers baseline runs single-turn workloads only")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(hf_model.parameters()).device
    reqs = workload.requests
    timings = [RequestTiming(len(r.prompt_ids)) for r in reqs]
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(reqs), batch_size), desc="transformers generate", unit="batch", leave=False):
        batch = reqs[start:start + batch_size]
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, W], left-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, W]
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        new = max(r.max_new_tokens for r in batch)
        sent = time.perf_counter() - t0
        out = hf_model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                                min_new_tokens=new, do_sample=False, pad_token_id=pad_id)  # [B, W + new]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done = time.perf_counter() - t0
        for i, r in enumerate(batch):
            t = timings[start + i]
            t.sent, t.first_token, t.done = sent, None, done  # NOTE: generate reports no first-token time
            t.output_tokens = min(r.max_new_tokens, out.shape[1] - width)
    for t in timings:
        t.first_token = t.done
    cfg = {"batch_size": batch_size, "padding": "left", "dtype": str(next(hf_model.parameters()).dtype),
           **(config or {})}
    result = summarize("transformers generate", workload.name, "offline", cfg, timings, time.perf_counter() - t0,
                       optimal_hit_rate([r.prompt_ids for r in reqs]))
    result.notes = ("output tokens counted at each request's max_new_tokens; generate computes the longest in "
                    "the batch; TTFT not measurable (equals e2e here)")
    return result
