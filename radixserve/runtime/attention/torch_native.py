"""CPU attention over the paged KV pool with torch's fused SDPA: the default off-GPU backend.

Decode rows of a step are batched into one SDPA call over keys gathered (padded to the longest
row) through the request table; extend rows run one SDPA call each. The plain reference in
torch_ref.py is the oracle this backend is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from radixserve.runtime.attention.torch_ref import TorchAttentionBackend
from radixserve.runtime.forward_batch import ForwardBatch


class TorchNativeBackend(TorchAttentionBackend):
    """Same pool and table as the reference; only the attention arithmetic differs."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]."""
        self.pool.store(layer_id, batch.out_slots, k, v)
        k_pool, v_pool = self.pool.k[layer_id], self.pool.v[layer_id]  # [S, Hkv, D]
        if batch.is_decode:
            return self._decode(q, k_pool, v_pool, batch, scaling)
        out = torch.empty_like(q)
        rows = zip(batch.req_rows.tolist(), batch.seq_lens.tolist(), batch.extend_lens.tolist(),
                   batch.extend_starts.tolist())
        for row, seq_len, ext, start in rows:
            slots = self.req_table.table[row, :seq_len]  # [L]
            qs = q[start:start + ext].transpose(0, 1)  # [H, E, D]
            ks = k_pool[slots].transpose(0, 1).to(q.dtype)  # [Hkv, L, D]
            vs = v_pool[slots].transpose(0, 1).to(q.dtype)
            # query i sits at absolute position seq_len - ext + i and sees keys 0..that position
            q_pos = torch.arange(seq_len - ext, seq_len, device=q.device)[:, None]  # [E, 1]
            mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos  # [E, L]
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scaling, enable_gqa=True)
            out[start:start + ext] = o.transpose(0, 1)
        return out

    def _decode(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, batch: ForwardBatch,
                scaling: float) -> torch.Tensor:
        max_len = batch.max_seq_len
        slots = self.req_table.table[batch.req_rows, :max_len]  # [B, L]; columns past seq_len are masked
        ks = k_pool[slots].permute(0, 2, 1, 3).to(q.dtype)  # [B, Hkv, L, D]
        vs = v_pool[slots].permute(0, 2, 1, 3).to(q.dtype)
        mask = torch.arange(max_len, device=q.device)[None, :] < batch.seq_lens[:, None]  # [B, L]
        o = F.scaled_dot_product_attention(q[:, :, None, :], ks, vs, attn_mask=mask[:, None, None, :],
                                           scale=scaling, enable_gqa=True)  # [B, H, 1, D]
        return o[:, :, 0, :]
