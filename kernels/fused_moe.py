"""Fused mixture-of-experts MLP: every token's top-k experts' down(silu(gate(x)) * up(x)), weighted by
the routing weights and summed over the k.

Layout: w_gate_up [E, 2I, H] (gate rows, then up rows), w_down [E, H, I], weights [T, k] float32,
ids [T, k] int64 (expert of each (token, slot)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
           ids: torch.Tensor) -> None:
    if x.dim() != 2 or w_gate_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError(f"x must be [T, H], w_gate_up [E, 2I, H], w_down [E, H, I]; got {tuple(x.shape)}, "
                         f"{tuple(w_gate_up.shape)}, {tuple(w_down.shape)}")
    e, two_i, h = w_gate_up.shape
    if two_i % 2 or h != x.shape[1] or w_down.shape != (e, h, two_i // 2):
        raise ValueError(f"w_gate_up {tuple(w_gate_up.shape)} and w_down {tuple(w_down.shape)} do not fit "
                         f"x {tuple(x.shape)} (want [E, 2I, H] and [E, H, I])")
    if weights.shape != ids.shape or weights.dim() != 2 or weights.shape[0] != x.shape[0]:
        raise ValueError(f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be [T, k] "
                         f"with T = {x.shape[0]}")


def fused_moe_ref(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """Torch reference: the (token, slot) pairs sorted by expert, one gated MLP per expert that got
    any, its rows scaled by their routing weight and added into their token's row. -> [T, H] in x's dtype."""
    _check(x, w_gate_up, w_down, weights, ids)
    t, k = ids.shape
    inter = w_gate_up.shape[1] // 2
    out = torch.zeros_like(x)
    flat = ids.reshape(-1)  # [T*k]
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=w_gate_up.shape[0]).tolist()
    token_of = order // k  # [T*k] token of each sorted pair
    w_sorted = weights.reshape(-1)[order]
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        rows = token_of[start:start + n]
        gate, up = F.linear(x[rows], w_gate_up[expert]).split(inter, dim=-1)  # [n, I] each
        y = F.linear(F.silu(gate) * up, w_down[expert])  # [n, H]
        out.index_add_(0, rows, (y * w_sorted[start:start + n, None].to(y.dtype)).to(x.dtype))
        start += n
    return out
