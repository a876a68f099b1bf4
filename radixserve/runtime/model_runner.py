"""ModelRunner: loads the model, sizes the KV pool, runs a ForwardBatch to logits."""
from __future__ import annotations

import gc
import logging

import torch

from radixserve.cache.kv_cache import build_kv_cache, kv_tokens
from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.config import EngineConfig
from radixserve.core.forward_batch import ForwardBatch
from radixserve.distributed.group import TensorParallel, single_rank
from radixserve.distributed.step_sync import RecordingReqTable, StepSender
from radixserve.models.layers import set_fused_ops
from radixserve.models.loader import load_config, load_model
from radixserve.models.parallel import check_split

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class ModelRunner:
    """The model, its KV pool and attention backend on one device.

    With config.tp > 1 the runner built by the engine is rank 0 of a tensor-parallel group: it
    starts (or joins) the other ranks (ranks.py), holds its shard of the weights and its KV heads,
    and broadcasts each step's batch before running it (radixserve/distributed/). The other ranks
    build their runner with `tp` and `device` given and run `forward_local` on what they receive
    (rank_worker.py).
    """

    def __init__(self, config: EngineConfig, tp: TensorParallel | None = None,
                 device: torch.device | None = None) -> None:
        self.ranks = None  # RankSet: rank 0's handle on the other ranks
        if tp is None and config.tp > 1:
            from radixserve.runtime.ranks import start_ranks
            check_split(load_config(config.model), config.tp)  # before any rank starts
            self.ranks, device = start_ranks(config)
            tp = self.ranks.tp
        self.tp = tp or single_rank()
        try:
            self._build(config, device or resolve_device(config.device))
        except BaseException:
            if self.ranks is not None:
                self.ranks.close(stop_sent=False)
            raise

    def _build(self, config: EngineConfig, device: torch.device) -> None:
        tp, root = self.tp, self.tp.rank == 0
        self.device = device
        self.dtype = resolve_dtype(config.dtype, self.device)
        loaded = load_model(config.model, self.dtype, self.device, seed=config.seed, tokenizer=config.tokenizer,
                            tp=tp, with_tokenizer=root, quantization=config.quantization)
        self.model, self.hf_config, self.tokenizer = loaded.model, loaded.config, loaded.tokenizer
        set_fused_ops(self.model, config.fused_ops)
        self.source, self.name = loaded.source, loaded.name
        self.max_context_len = min(config.max_context_len or loaded.max_context_len, loaded.max_context_len)
        self.vocab_size = int(self.hf_config.vocab_size)
        m = self.model
        tokens = None
        if tp.size > 1:  # NOTE: slot ids are shared by all ranks: every pool gets the smallest rank's size
            per_token = KVPool.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, self.dtype)
            tokens = int(tp.all_reduce_min(torch.tensor([kv_tokens(config, per_token, self.device)],
                                                        device=self.device)).item())
        table_cls = RecordingReqTable if tp.size > 1 and root else ReqToTokenTable
        kv = build_kv_cache(config, m.num_layers, m.num_kv_heads, m.head_dim, self.dtype, self.device,
                            self.max_context_len, tokens, table_cls)
        self.pool, self.req_table = kv.pool, kv.req_table
        self.num_pages = kv.num_pages  # NOTE: the engine's PageAllocator hands these out; the runner holds none
        self.sender = StepSender(tp, self.req_table, self.device) if tp.size > 1 and root else None
        num_pages, ps, per_token = kv.num_pages, config.page_size, kv.bytes_per_token
        self.backend_name = self._backend_name(config.attention_backend)
        self.attn = self._make_backend(self.backend_name)
        logger.info("model %s on %s (%s%s); KV pool %d tokens (%.2f GiB), page size %d", self.source, self.device,
                    self.dtype, f", tensor-parallel rank {tp.rank}/{tp.size}" if tp.size > 1 else "",
                    num_pages * ps, num_pages * ps * per_token / 2**30, ps)
        self.graphs = self._make_graphs(config)

    def release(self) -> None:
        """Give the weights, the KV pool and the graphs' memory back (the engine has stopped); rank 0
        of a tensor-parallel group stops the other ranks first."""
        if self.ranks is not None:
            stop_sent = False
            if self.ranks.dead is None:
                try:
                    self.sender.stop()
                    stop_sent = True
                except Exception:  # noqa: BLE001 - a rank died meanwhile: close() kills the rest
                    logger.exception("could not tell the tensor-parallel ranks to stop")
            self.ranks.close(stop_sent)
            self.ranks = None
        self.graphs = None
        self.attn = None  # NOTE: the CPU backend holds a KV mirror as large as the running requests' KV
        self.pool.k.clear()
        self.pool.v.clear()
        self.req_table.table = self.req_table.table.new_zeros((0, 0))
        self.model.to("meta")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _backend_name(self, name: str) -> str:
        if name == "auto":
            return "triton" if self.device.type == "cuda" else "torch"
        return name

    def _make_backend(self, name: str, num_kv_splits: int | None = None):
        if name == "triton":
            from radixserve.runtime.attention.triton_backend import TritonAttentionBackend
            return TritonAttentionBackend(self.pool, self.req_table, num_heads=self.model.num_heads,
                                          num_kv_splits=num_kv_splits)
        if name == "torch-ref":
            from radixserve.runtime.attention.torch_ref import TorchAttentionBackend
            return TorchAttentionBackend(self.pool, self.req_table)
        from radixserve.runtime.attention.torch_native import TorchNativeBackend
        return TorchNativeBackend(self.pool, self.req_table)

    def _make_graphs(self, config: EngineConfig):
        """CUDA-graph decode when asked for and possible (CUDA and the Triton backend), else None."""
        if not config.cuda_graph or self.device.type != "cuda":
            return None
        if self.backend_name != "triton":
            logger.warning("CUDA graphs need the Triton attention backend (got %r); decode runs eagerly",
                           self.backend_name)
            return None
        from radixserve.runtime.cuda_graph import CudaGraphDecoder
        graphs = CudaGraphDecoder(self.model, self._make_backend("triton", num_kv_splits=1), self.req_table,
                                  config.max_running_requests, self.device)
        graphs.capture()
        return graphs

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """-> logits [len(batch.logits_indices), vocab] float32. Under tensor parallelism (rank 0)
        the batch goes to every rank first; a dead rank raises RankDeadError."""
        if self.sender is None:
            return self.forward_local(batch)
        self.ranks.check_alive()
        try:
            self.sender.send(batch)
            return self.forward_local(batch)
        except Exception as exc:
            self.ranks.explain_failure(exc)
            raise

    @torch.inference_mode()
    def forward_local(self, batch: ForwardBatch) -> torch.Tensor:
        """This rank's part of the step (the collectives inside meet the other ranks')."""
        if self.graphs is not None:
            bucket = self.graphs.bucket_for(batch)
            if bucket is not None:
                return self.graphs.replay(batch, bucket)
        hidden = self.model(batch, self.attn)
        if batch.logits_indices.numel() == 0:
            return hidden.new_empty((0, self.vocab_size), dtype=torch.float32)
        return self.model.compute_logits(hidden[batch.logits_indices])
