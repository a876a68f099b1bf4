"""CUDA-graph decode: one graph per batch-size bucket, replayed for decode batches that fit.

Each graph runs the whole decode step, embedding to logits, over static input buffers. A batch
of B rows replays the smallest bucket >= B: rows B..bucket-1 are padding, pointed at the request
table's reserved padding row (all slot 0) with seq_len 1, position 0 and out_slot 0, so they read
and write only slot 0, which the allocator never hands out.

NOTE: the Triton decode kernel's grid is baked into a graph, so the graphs use their own
TritonAttentionBackend with a fixed split count per bucket (any split count is correct for any
length; it only sets the parallelism).
"""
from __future__ import annotations

import logging
import math
import time

import torch

from radixserve.cache.req_table import ReqToTokenTable
from radixserve.runtime.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

MAX_GRAPH_BATCH = 256


def graph_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, then every 16 up to 256, cut (and ended) at max_batch."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    top = min(max_batch, MAX_GRAPH_BATCH)
    sizes = [1, 2, 4, 8] + list(range(16, 65, 8)) + list(range(80, MAX_GRAPH_BATCH + 1, 16))
    buckets = [s for s in sizes if s < top]
    return buckets + [top]


def graph_kv_splits(batch: int, num_kv_heads: int, max_splits: int, target_programs: int = 512) -> int:
    """Power-of-two split count that gives a bucket's decode grid ~target_programs programs."""
    want = max(1, min(max_splits, math.ceil(target_programs / (batch * num_kv_heads))))
    return 1 << (want.bit_length() - 1)


class CudaGraphDecoder:
    """Captures the decode step of `model` per bucket and replays it for fitting decode batches."""

    def __init__(self, model, attn, req_table: ReqToTokenTable, max_batch: int, device: torch.device) -> None:
        if req_table.padding_row is None:
            raise ValueError("CUDA-graph decode needs a ReqToTokenTable built with reserve_padding_row=True")
        self.model = model
        self.attn = attn  # a TritonAttentionBackend of its own (its num_kv_splits is set per capture)
        self.padding_row = req_table.padding_row
        self.buckets = graph_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)  # [N]
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)  # [N]
        self.out_slots = torch.zeros(n, dtype=torch.int64, device=device)  # [N]
        self.req_rows = torch.full((n,), self.padding_row, dtype=torch.int64, device=device)  # [N]
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)  # [N]
        self.extend_lens = torch.ones(n, dtype=torch.int64, device=device)  # [N] always 1 in decode
        self.extend_starts = torch.arange(n, dtype=torch.int64, device=device)  # [N] token b is row b
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)  # [N]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # bucket -> [bucket, vocab] float32, graph-owned
        self.capture_seconds = 0.0

    def _static_batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs], out_slots=self.out_slots[:bs],
            req_rows=self.req_rows[:bs], seq_lens=self.seq_lens[:bs], extend_lens=self.extend_lens[:bs],
            extend_starts=self.extend_starts[:bs], logits_indices=self.logits_indices[:bs],
            max_seq_len=1, max_extend_len=1, is_decode=True)  # host ints: unused with fixed splits

    def _step(self, batch: ForwardBatch) -> torch.Tensor:
        hidden = self.model(batch, self.attn)  # [bs, hidden]
        return self.model.compute_logits(hidden)  # [bs, vocab] float32

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, sharing one memory pool."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        num_kv_heads = self.attn.pool.k[0].shape[1]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        for bs in reversed(self.buckets):
            self.attn.num_kv_splits = graph_kv_splits(bs, num_kv_heads, self.attn.max_kv_splits)
            batch = self._static_batch(bs)
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up: Triton compiles and autotunes outside the capture
                    self._step(batch)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.logits[bs] = self._step(batch)
            self.graphs[bs] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start
        logger.info("captured %d CUDA graphs for decode batch sizes %s in %.1f s",
                    len(self.buckets), self.buckets, self.capture_seconds)

    def bucket_for(self, batch: ForwardBatch) -> int | None:
        """The bucket that replays `batch`, or None when it must run eagerly."""
        if not batch.is_decode or batch.batch_size > self.max_batch or batch.batch_size == 0:
            return None
        if batch.num_tokens != batch.batch_size:
            return None
        bs = batch.batch_size
        return next(b for b in self.buckets if b >= bs)

    def replay(self, batch: ForwardBatch, bucket: int) -> torch.Tensor:
        """-> logits [len(batch.logits_indices), vocab] float32 (a fresh tensor, not graph memory)."""
        bs = batch.batch_size
        self.input_ids[:bs].copy_(batch.input_ids)
        self.positions[:bs].copy_(batch.positions)
        self.out_slots[:bs].copy_(batch.out_slots)
        self.req_rows[:bs].copy_(batch.req_rows)
        self.seq_lens[:bs].copy_(batch.seq_lens)
        if bucket > bs:  # padding rows: slot 0 through the all-zero padding row
            self.input_ids[bs:bucket].zero_()
            self.positions[bs:bucket].zero_()
            self.out_slots[bs:bucket].zero_()
            self.req_rows[bs:bucket].fill_(self.padding_row)
            self.seq_lens[bs:bucket].fill_(1)
        self.graphs[bucket].replay()
        return self.logits[bucket][batch.logits_indices]  # [L, vocab]
