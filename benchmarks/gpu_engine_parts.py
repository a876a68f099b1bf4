"""Engine-level pieces the GPU benchmarks share: random prompts, a timed greedy generate, a decode
ForwardBatch built on fresh slots (for CUDA-graph replay of runner.forward), one prompt's prefill
logits, and the bytes a batch-1 decode step reads."""
from __future__ import annotations

import time

import torch

from radixserve import Engine
from radixserve.core.forward_batch import ForwardBatch
from radixserve.sampling_params import SamplingParams


def rand_ids(n: int, gen: torch.Generator, vocab: int = 30000) -> list[int]:
    return torch.randint(100, vocab, (n,), generator=gen).tolist()


def timed_generate(engine: Engine, prompts: list[list[int]], new_tokens: int) -> float:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert all(len(o.token_ids) == new_tokens for o in outs), [len(o.token_ids) for o in outs]
    return dt


def decode_batch(engine: Engine, batch: int, ctx: int) -> tuple[ForwardBatch, list[int], torch.Tensor]:
    """A decode ForwardBatch of `batch` rows with `ctx` tokens each, on freshly allocated slots."""
    runner = engine.runner
    slots = engine.kv.allocator.alloc(batch * ctx)  # page size 1
    rows = [runner.req_table.alloc() for _ in range(batch)]
    table = runner.req_table.table
    dev = runner.device
    for i, r in enumerate(rows):
        table[r, :ctx] = slots[i * ctx:(i + 1) * ctx].to(dev)
    last = slots.view(batch, ctx)[:, -1].to(dev)
    fb = ForwardBatch(
        input_ids=torch.randint(100, 30000, (batch,), device=dev), positions=torch.full((batch,), ctx - 1, device=dev),
        out_slots=last, req_rows=torch.tensor(rows, device=dev), seq_lens=torch.full((batch,), ctx, device=dev),
        extend_lens=torch.ones(batch, dtype=torch.int64, device=dev), extend_starts=torch.arange(batch, device=dev),
        logits_indices=torch.arange(batch, device=dev), max_seq_len=ctx, max_extend_len=1, is_decode=True)
    return fb, rows, slots


def release(engine: Engine, rows: list[int], slots: torch.Tensor) -> None:
    for r in rows:
        engine.runner.req_table.free(r)
    engine.kv.allocator.free(slots)


def prefill_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    """Logits [T, vocab] float32 of one fresh prompt (no cached prefix), on CPU."""
    runner = engine.runner
    n, dev = len(ids), runner.device
    slots = engine.kv.allocator.alloc(n)
    row = runner.req_table.alloc()
    runner.req_table.table[row, :n] = slots.to(dev)
    fb = ForwardBatch(
        input_ids=torch.tensor(ids, device=dev), positions=torch.arange(n, device=dev), out_slots=slots.to(dev),
        req_rows=torch.tensor([row], device=dev), seq_lens=torch.tensor([n], device=dev),
        extend_lens=torch.tensor([n], device=dev), extend_starts=torch.tensor([0], device=dev),
        logits_indices=torch.arange(n, device=dev), max_seq_len=n, max_extend_len=n, is_decode=False)
    logits = runner.forward(fb).float().cpu()
    release(engine, [row], slots)
    return logits


def weight_bytes(model) -> tuple[int, int]:
    """(bytes read per batch-1 decode step: every weight once, the embedding table as the one row
    looked up, unless it is also the lm_head; embedding table bytes)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.embed_tokens.weight
    emb_bytes = emb.numel() * emb.element_size()
    tied = model.lm_head is model.embed_tokens
    return (total if tied else total - emb_bytes + emb.shape[1] * emb.element_size()), emb_bytes
