"""Attention over one run of keys that also returns the run's log-sum-exp, and the merge of two runs.

Cascade attention splits a row's keys into runs (a shared prefix, the row's own tail), attends to
each run separately and merges the partial results:
    out = (o1 * exp(lse1) + o2 * exp(lse2)) / (exp(lse1) + exp(lse2)) = o2 + (o1 - o2) * sigmoid(lse1 - lse2),
which equals attention over the concatenated keys (the sigmoid form needs no max shift and is
one lerp).

The CPU flash kernel behind torch's SDPA is called directly because the public
`scaled_dot_product_attention` does not return the log-sum-exp; it reads strided key/value views
(only the last dimension must be contiguous), so the KV mirror is attended in place.
"""
from __future__ import annotations

import torch

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           mask: torch.Tensor | None = None, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q [N, Hkv, M, D], k/v [N, Hkv, L, D], mask additive, broadcastable to [N, Hkv, M, L]
    -> (out [N, Hkv, M, D] in q's dtype, lse [N, Hkv, M] float32).

    `causal`: query i sees keys 0..i (aligned at the top left, so only for M == L runs).

    NOTE: a query whose keys are all masked gets out 0 and lse 0 from this kernel, not -inf:
    callers never attend to an empty run.
    """
    if _FLASH_CPU is None:
        raise RuntimeError("this torch build lacks aten::_scaled_dot_product_flash_attention_for_cpu, which the "
                           "CPU attention backend needs (torch >= 2.11 has it); use attention_backend='torch-ref'")
    out, lse = _FLASH_CPU(q, k, v, is_causal=causal, attn_mask=mask, scale=scale)
    return out, lse


def merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Two partial attentions over disjoint key runs -> attention over both.

    o1/o2 [..., D], lse1/lse2 [...] float32 -> [..., D] in o1's dtype.
    """
    w1 = torch.sigmoid(lse1 - lse2).unsqueeze_(-1)  # [..., 1] weight of the first run
    return torch.lerp(o2, o1.to(o2.dtype), w1.to(o2.dtype)).to(o1.dtype)
