"""Long prompt chunks through torch's cuDNN attention, merged by log-sum-exp (CUDA, 16-bit dtypes).

Measured on an H100 (benchmarks/results/gpu_attention_h100.md): for big causal blocks torch's
SDPA picks cuDNN, which runs at 550-620 TFLOP/s where a paged Triton kernel (and torch's flash
kernel) reach 330-380. A long prompt is computed in chunks over its growing cached prefix, so
almost all its attention FLOPs are chunk queries x cached keys: for a chunk row (>= MIN_CHUNK new
tokens, >= LONG_CONTEXT keys) this module gathers the row's K/V from the paged pool into
contiguous [Hkv, L, D] buffers (a few % of the attention time at 100k keys) and runs
  - cuDNN over the cached prefix (no mask), and
  - cuDNN over the new tokens themselves (causal),
each returning its log-sum-exp, then merges the two. The backend's Triton kernel computes every
other row of the batch (decode rows, short extends) in the same step.

NOTE: deciding which rows are long needs the batch's lengths on the host: one small
device->host copy per forward, taken only when the batch holds a long chunk (max_seq_len and
max_extend_len, host ints, say so), where a step takes far longer than that copy.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from radixserve.runtime.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

LONG_CONTEXT = 8192  # keys (prefix + chunk) from which a chunk row goes to cuDNN
MIN_CHUNK = 512  # new tokens from which a row counts as a prompt chunk


class LongRows(NamedTuple):
    """The rows of one batch that go to cuDNN, and what is left for the Triton kernel."""

    rows: list[tuple[int, int, int, int]]  # (request-table row, first token in q, new tokens, seq_len)
    rest_extend_lens: torch.Tensor | None  # extend_lens with the long rows zeroed; None if no row is left


def plan_long_rows(batch: ForwardBatch) -> LongRows | None:
    """None unless the batch may hold a long chunk row (decided from host ints, no sync)."""
    if batch.is_decode or batch.max_seq_len < LONG_CONTEXT or batch.max_extend_len < MIN_CHUNK:
        return None
    # NOTE: the one device->host copy (see the module docstring)
    host = torch.stack([batch.req_rows, batch.extend_starts, batch.extend_lens, batch.seq_lens]).tolist()
    rows, index = [], []
    for i, (row, start, ext, seq) in enumerate(zip(*host)):
        if ext >= MIN_CHUNK and seq >= LONG_CONTEXT:
            rows.append((row, start, ext, seq))
            index.append(i)
    if not rows:
        return None
    rest = None
    if len(rows) < len(host[0]):
        rest = batch.extend_lens.clone()
        rest[torch.tensor(index, device=rest.device)] = 0  # the Triton kernel skips rows with no new tokens
    return LongRows(rows, rest)


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [H, E, D], k/v [Hkv, L, D] contiguous -> (out [H, E, D], lse [H, E] float32, natural log)."""
    num_heads, num_q = q.shape[0], q.shape[1]
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q[None], k[None], v[None], None, True, 0.0, causal, False, scale=scale)
    out, lse = res[0], res[1]
    if lse.numel() != num_heads * num_q:
        raise RuntimeError(f"cuDNN attention returned a log-sum-exp of shape {tuple(lse.shape)}, expected "
                           f"{num_heads * num_q} values ([1, {num_heads}, {num_q}])")
    return out[0], lse.reshape(num_heads, num_q).float()


def attend_long_row(q: torch.Tensor, out: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    req_to_token: torch.Tensor, row: int, start: int, ext: int, seq_len: int, scale: float) -> None:
    """out[start:start+ext] <- causal attention of q[start:start+ext] ([E, H, D], positions
    seq_len-ext..seq_len-1) over the row's keys 0..seq_len-1 in the pool (new tokens stored)."""
    prefix = seq_len - ext
    slots = req_to_token[row, :seq_len]  # [L]
    # [Hkv, L, D], contiguous: one gather kernel each
    k = k_pool.transpose(0, 1)[:, slots]
    v = v_pool.transpose(0, 1)[:, slots]
    qh = q[start:start + ext].transpose(0, 1).contiguous()  # [H, E, D]
    o_new, lse_new = _cudnn(qh, k[:, prefix:], v[:, prefix:], True, scale)
    dst = out[start:start + ext]  # [E, H, D]
    if prefix == 0:
        dst.copy_(o_new.transpose(0, 1))
        return
    o_pre, lse_pre = _cudnn(qh, k[:, :prefix], v[:, :prefix], False, scale)
    top = torch.maximum(lse_new, lse_pre)  # [H, E]
    w_new, w_pre = torch.exp(lse_new - top), torch.exp(lse_pre - top)
    merged = (o_new.float() * w_new[..., None] + o_pre.float() * w_pre[..., None]) / (w_new + w_pre)[..., None]
    dst.copy_(merged.transpose(0, 1))


def cudnn_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.backends.cudnn.is_available() and hasattr(
        torch.ops.aten, "_scaled_dot_product_cudnn_attention")

