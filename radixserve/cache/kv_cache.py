"""Sizing and building the KV stack of a model's device (pool and request table).

NOTE: the page allocator over the pool is built by its owner, the engine (beside the radix tree),
from `num_pages`: tensor-parallel ranks > 0 hold a pool and a table but hand out no slots.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable

CPU_KV_BUDGET_BYTES = 2 << 30  # default KV pool on CPU when max_total_tokens is not given


class KVCache(NamedTuple):
    pool: KVPool  # pages 0..num_pages; page 0 is reserved
    req_table: ReqToTokenTable
    num_pages: int  # usable pages: PageAllocator(num_pages, page_size) hands them out
    bytes_per_token: int


def kv_tokens(config, bytes_per_token: int, device: torch.device) -> int:
    """How many tokens the pool holds: `config.max_total_tokens`, else what the memory budget fits
    (a fraction of free GPU memory after the weights, or CPU_KV_BUDGET_BYTES on CPU)."""
    if config.max_total_tokens:
        return config.max_total_tokens
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * config.kv_memory_fraction)
    else:
        budget = CPU_KV_BUDGET_BYTES
    return max(2 * config.page_size, budget // bytes_per_token)


def build_kv_cache(config, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                   device: torch.device, max_context_len: int, tokens: int | None = None,
                   table_cls: type[ReqToTokenTable] = ReqToTokenTable) -> KVCache:
    """config: an EngineConfig (page_size, max_total_tokens, kv_memory_fraction, max_running_requests).
    `tokens`: the pool size when the caller decided it (tensor-parallel ranks agree on one), else
    kv_tokens(); `table_cls`: the request table's class (rank 0 of a tensor-parallel group records
    its writes for the other ranks)."""
    per_token = KVPool.bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
    ps = config.page_size
    num_pages = max(2, (tokens or kv_tokens(config, per_token, device)) // ps)
    # NOTE: page 0 is reserved (padding rows write there), so the pool holds num_pages + 1 pages.
    pool = KVPool(num_layers, (num_pages + 1) * ps, num_kv_heads, head_dim, dtype, device)
    # NOTE: the extra row is the reserved all-zero padding row of CUDA-graph batches.
    req_table = table_cls(config.max_running_requests + 1, max_context_len + ps, device,
                                reserve_padding_row=True)
    return KVCache(pool, req_table, num_pages, per_token)
