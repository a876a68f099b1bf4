"""CPU attention over the paged KV pool: the default off-GPU backend.

Decode rows read their K/V in place from the KV mirror (kv_mirror.py: each row's run kept
contiguous, appended to every step) instead of gathering every row's whole K/V from the pool in
every layer. Grouped decode rows (ForwardBatch.prefix_groups, cascade attention) attend to their
shared prefix once for all the group's queries, then each to its own tail, merged by log-sum-exp.
GQA is folded into the query length: the G query heads of one KV head are G queries of one
attention call, so keys are never repeated per query head. Extending rows attend per row over
keys gathered from the pool: their earlier positions without a mask, the new ones causally.
Everything that depends only on the batch is computed once per step (cpu_plan.py).

The plain reference in torch_ref.py is the oracle this backend is tested against.
"""
from __future__ import annotations

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.req_table import ReqToTokenTable
from radixserve.core.forward_batch import ForwardBatch
from radixserve.runtime.attention.cpu_plan import DecodePlan, ExtendRow, StepPlan, build_plan
from radixserve.runtime.attention.kv_mirror import KVMirror, SlotVersions
from radixserve.runtime.attention.partial import attend, merge
from radixserve.runtime.attention.prefix_store import PrefixStore


class TorchNativeBackend:
    """AttentionBackend for CPU tensors.

    `mirror_max_bytes` bounds the KV mirror (default: the pool's own size, so the runtime holds at
    most twice the pool); steps that would need more gather their decode K/V from the pool.

    NOTE: every write to the pool must go through this backend's `forward` (the mirror and the
    prefix store are checked against the slot versions it bumps).
    """

    def __init__(self, pool: KVPool, req_table: ReqToTokenTable, mirror_max_bytes: int | None = None) -> None:
        if pool.k[0].device.type != "cpu":
            raise ValueError("TorchNativeBackend runs on CPU tensors; use the Triton backend on CUDA")
        self.pool = pool
        self.req_table = req_table
        self.versions = SlotVersions(pool.num_slots)
        if mirror_max_bytes is None:
            mirror_max_bytes = pool.num_slots * KVPool.bytes_per_token(
                len(pool.k), pool.k[0].shape[1], pool.k[0].shape[2], pool.dtype)
        self.mirror = KVMirror(pool, self.versions, mirror_max_bytes)
        self.prefixes = PrefixStore(pool, self.versions)
        self._plan: StepPlan | None = None

    def plan(self, batch: ForwardBatch) -> StepPlan:
        """This step's metadata, computed on its first layer and reused by the others."""
        if self._plan is None or self._plan.batch is not batch:
            self._plan = None  # NOTE: drop the previous step's plan before building (it holds its batch)
            self._plan = build_plan(batch, self.req_table.table, self.mirror, self.prefixes, self.versions)
        return self._plan

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                batch: ForwardBatch, scaling: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D] (see AttentionBackend)."""
        plan = self.plan(batch)
        self.pool.store(layer_id, batch.out_slots, k, v)
        dp = plan.decode
        if dp is not None and dp.tokens is None:  # every token decodes
            return self._decode(q, k, v, layer_id, dp, scaling)
        out = torch.empty_like(q)
        if dp is not None:
            t = dp.tokens
            out[t] = self._decode(q[t], k[t], v[t], layer_id, dp, scaling)
        for row in plan.extend:
            sl = slice(row.start, row.start + row.length)
            out[sl] = self._extend(q[sl], layer_id, row, scaling)
        return out

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, dp: DecodePlan,
                scaling: float) -> torch.Tensor:
        """q [B, H, D], k/v [B, Hkv, D] of B decode rows -> [B, H, D]."""
        b, h, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        qg = q.reshape(b, hkv, g, d)  # head kv * g + i uses kv head kv: G queries per KV head
        if dp.tail is not None:
            tv = dp.tail
            self.mirror.append(layer, tv, k, v)
            keys, values = self.mirror.views(layer, tv)  # [span, Hkv, W, D]
            mask = tv.mask
            if not tv.identity:
                qt = q.new_zeros((tv.span, hkv, g, d))
                qt[tv.rows] = qg
            else:
                qt = qg
        else:
            keys = self.pool.k[layer][dp.gather.slots].permute(0, 2, 1, 3)  # [B, Hkv, W, D]
            values = self.pool.v[layer][dp.gather.slots].permute(0, 2, 1, 3)
            mask, qt = dp.gather.mask, qg
        out, lse = attend(qt, keys.to(q.dtype), values.to(q.dtype), scaling, mask.to(q.dtype))
        if dp.tail is not None and not dp.tail.identity:
            out, lse = out[dp.tail.rows], lse[dp.tail.rows]  # [B, Hkv, G, D], [B, Hkv, G]
        for grp in dp.groups:
            n = grp.size
            qm = qg if grp.all_rows else qg[grp.members]
            qp = qm.transpose(0, 1).reshape(1, hkv, n * g, d)  # the whole group: n * G queries per KV head
            op, lp = attend(qp, grp.entry.k[layer].to(q.dtype), grp.entry.v[layer].to(q.dtype), scaling)
            op = op.view(hkv, n, g, d).transpose(0, 1)  # [n, Hkv, G, D]
            lp = lp.view(hkv, n, g).transpose(0, 1)  # [n, Hkv, G]
            if grp.all_rows:
                out = merge(op, lp, out, lse)
            else:
                out[grp.members] = merge(op, lp, out[grp.members], lse[grp.members])
        return out.reshape(b, h, d)

    def _extend(self, q: torch.Tensor, layer: int, row: ExtendRow, scaling: float) -> torch.Tensor:
        """q [E, H, D] of one row's new tokens -> [E, H, D]; keys are the row's positions 0..L-1."""
        e, h, d = q.shape
        keys = self.pool.k[layer][row.slots].to(q.dtype)  # [L, Hkv, D]
        values = self.pool.v[layer][row.slots].to(q.dtype)
        hkv = keys.shape[1]
        g = h // hkv
        qf = q.view(e, hkv, g, d).permute(1, 2, 0, 3)  # [Hkv, G, E, D]

        def heads(x: torch.Tensor) -> torch.Tensor:  # [n, Hkv, D] -> [Hkv, G, n, D], no copy
            return x.permute(1, 0, 2).unsqueeze(1).expand(hkv, g, x.shape[0], d)

        past = keys.shape[0] - e
        out, lse = attend(qf, heads(keys[past:]), heads(values[past:]), scaling, causal=True)
        if past:  # earlier positions: visible to every new token
            op, lp = attend(qf, heads(keys[:past]), heads(values[:past]), scaling)
            out = merge(op, lp, out, lse)
        return out.permute(2, 0, 1, 3).reshape(e, h, d)
