"""CUDA-graph decode: one graph per batch-size bucket, replayed for decode batches that fit.

Each graph runs the whole decode step, embedding to logits, over static input buffers. A batch
of B rows replays the smallest bucket >= B: rows B..bucket-1 are padding, pointed at the request
table's reserved padding row (all slot 0) with seq_len 1, position 0 and out_slot 0, so they read
and write only slot 0, which the allocator never hands out.

NOTE: the Triton decode kernel's grid is baked into a graph, so the graphs use their own
TritonAttentionBackend with a fixed split count per bucket (any split count is correct for any
length; it only sets the parallelism).

Cascade decode (batches whose `prefix_groups` say which rows share a cached prefix) has its own
graph per bucket of >= 2 rows, over static group buffers with bucket // 2 group slots (a group
has >= 2 rows); slots a batch does not use hold no rows, and padding rows belong to no group.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.core.prefix_groups import PrefixGroups

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


class _GroupBuffers:
    """Static PrefixGroups storage for cascade graphs (see the module docstring)."""

    def __init__(self, n: int, padding_row: int, device: torch.device) -> None:
        slots = max(1, n // 2)
        self.padding_row = padding_row
        self.row_prefix_lens = torch.zeros(n, dtype=torch.int64, device=device)  # [N]
        self.group_rows = torch.zeros(n, dtype=torch.int64, device=device)  # [N]
        self.group_starts = torch.zeros(slots + 1, dtype=torch.int64, device=device)  # [N/2 + 1]
        self.group_prefix_lens = torch.zeros(slots, dtype=torch.int64, device=device)  # [N/2]
        self.group_table_rows = torch.full((slots,), padding_row, dtype=torch.int64, device=device)  # [N/2]

    def view(self, bs: int) -> PrefixGroups:
        slots = max(1, bs // 2)
        return PrefixGroups(
            row_prefix_lens=self.row_prefix_lens[:bs], group_rows=self.group_rows[:bs],
            group_starts=self.group_starts[:slots + 1], group_prefix_lens=self.group_prefix_lens[:slots],
            group_table_rows=self.group_table_rows[:slots], max_group_size=bs, max_prefix_len=0)

    def load(self, groups: PrefixGroups, bs: int, bucket: int) -> None:
        """Copy a batch's groups in; the rest of the bucket's slots and rows get no group."""
        num_groups, num_rows = groups.num_groups, groups.group_rows.shape[0]
        slots = max(1, bucket // 2)
        if num_groups > slots or num_rows > bucket:
            raise ValueError(f"{num_groups} groups over {num_rows} rows do not fit a batch of {bs} rows "
                             f"(a group has at least two rows)")
        self.row_prefix_lens[:bs].copy_(groups.row_prefix_lens)
        self.row_prefix_lens[bs:bucket].zero_()
        self.group_rows[:num_rows].copy_(groups.group_rows)
        self.group_starts[:num_groups + 1].copy_(groups.group_starts)
        self.group_starts[num_groups + 1:slots + 1].fill_(num_rows)
        self.group_prefix_lens[:num_groups].copy_(groups.group_prefix_lens)
        self.group_prefix_lens[num_groups:slots].zero_()
        self.group_table_rows[:num_groups].copy_(groups.group_table_rows)
        self.group_table_rows[num_groups:slots].fill_(self.padding_row)


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
        # NOTE: cascade graphs only where the backend does cascade attention at all
        self.groups = _GroupBuffers(n, self.padding_row, device) if getattr(attn, "cascade", False) else None
        # (bucket, cascade) -> graph and its logits [bucket, vocab] float32 (graph-owned memory)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.logits: dict[tuple[int, bool], torch.Tensor] = {}
        self.capture_seconds = 0.0

    def _static_batch(self, bs: int, cascade: bool) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs], out_slots=self.out_slots[:bs],
            req_rows=self.req_rows[:bs], seq_lens=self.seq_lens[:bs], extend_lens=self.extend_lens[:bs],
            extend_starts=self.extend_starts[:bs], logits_indices=self.logits_indices[:bs],
            max_seq_len=1, max_extend_len=1, is_decode=True,  # host ints: unused with fixed splits
            prefix_groups=self.groups.view(bs) if cascade else None)

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
            for cascade in (False, True):
                if cascade and (self.groups is None or bs < 2):
                    continue
                if cascade:
                    from radixserve.kernels.cascade_attention import choose_prefix_splits
                    self.attn.num_prefix_splits = choose_prefix_splits(
                        None, bs, self.model.num_heads, num_kv_heads, self.attn.max_kv_splits)
                batch = self._static_batch(bs, cascade)
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm up: Triton compiles and autotunes outside the capture
                        self._step(batch)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[bs, cascade] = self._step(batch)
                self.graphs[bs, cascade] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start
        logger.info("captured %d CUDA graphs for decode batch sizes %s (cascade: %s) in %.1f s",
                    len(self.graphs), self.buckets, self.groups is not None, self.capture_seconds)

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
        groups = batch.prefix_groups
        cascade = self.groups is not None and groups is not None and groups.num_groups > 0 and bucket >= 2
        if cascade:
            self.groups.load(groups, bs, bucket)
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
        self.graphs[bucket, cascade].replay()
        return self.logits[bucket, cascade][batch.logits_indices]  # [L, vocab]
