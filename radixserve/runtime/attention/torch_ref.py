"""Torch reference attention over the paged KV pool: the CPU path and the oracle for the kernels."""
from __future__ import annotations

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch


class TorchAttentionBackend:
    """Gathers each row's K/V from the pool and runs causal GQA attention in float32."""

    def __init__(self, pool: KVPool, req_table: ReqToTokenTable) -> None:
        self.pool = pool
        self.req_table = req_table

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D] in q's dtype."""
        self.pool.store(layer_id, batch.out_slots, k, v)
        k_pool, v_pool = self.pool.k[layer_id], self.pool.v[layer_id]  # [S, Hkv, D]
        num_heads, head_dim = q.shape[1], q.shape[2]
        num_kv_heads = k_pool.shape[1]
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        group = num_heads // num_kv_heads
        out = torch.zeros_like(q)  # tokens outside every row (padding) stay zero
        rows = zip(batch.req_rows.tolist(), batch.seq_lens.tolist(), batch.extend_lens.tolist(),
                   batch.extend_starts.tolist())
        for row, seq_len, ext_len, start in rows:
            slots = self.req_table.table[row, :seq_len]  # [L]
            keys = k_pool[slots].float().transpose(0, 1)  # [Hkv, L, D]
            values = v_pool[slots].float().transpose(0, 1)  # [Hkv, L, D]
            queries = q[start:start + ext_len].float()  # [E, H, D]
            # head h = kv_head * group + g uses kv head h // group
            queries = queries.view(ext_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)  # [Hkv, G, E, D]
            scores = torch.einsum("kged,kld->kgel", queries, keys) * scaling  # [Hkv, G, E, L]
            q_pos = torch.arange(seq_len - ext_len, seq_len, device=q.device)  # [E] absolute positions
            k_pos = torch.arange(seq_len, device=q.device)  # [L]
            visible = k_pos[None, :] <= q_pos[:, None]  # [E, L]
            scores = scores.masked_fill(~visible, float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # [Hkv, G, E, L]
            rows_out = torch.einsum("kgel,kld->ekgd", probs, values)  # [E, Hkv, G, D]
            out[start:start + ext_len] = rows_out.reshape(ext_len, num_heads, head_dim).to(q.dtype)
        return out
