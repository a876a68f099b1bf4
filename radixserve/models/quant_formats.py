"""Quantized checkpoints' on-disk conventions, decoded into radixserve's linear-method layouts.

Into (linear_methods.py): int4 `qweight` [N, K/2] uint8 (even k in the low nibble), `scales`
[N, groups], `zeros` [N, groups] uint8 (unsigned zero point), `g_idx` [K] int32 (act-order only);
fp8 `weight` [N, K] float8_e4m3fn and `weight_scale` [N] float32. From:

- GPTQ v1 (AutoGPTQ / GPTQModel): `qweight` int32 [K/8, N] packed along K (k % 8 at bits
  4 (k % 8)); `qzeros` int32 [groups, N/8] packed along N and stored as zero - 1 (readers add 1
  back, unmasked, so a stored 15 from a zero of 0 reads as 16, as every v1 reader does);
  `scales` [groups, N]; `g_idx` [K] (act-order: the group of each column, else k // G).
- AWQ GEMM (AutoAWQ): `qweight` int32 [K, N/8] and `qzeros` int32 [groups, N/8] packed along N
  in the interleaved nibble order 0 2 4 6 1 3 5 7 (nibble i holds column 8j + AWQ_ORDER[i]);
  `scales` [groups, N]; zeros stored as they are.
- compressed-tensors `pack-quantized`: `weight_packed` int32 [N, K/8] (element i at bits 4i,
  stored as value + 8), `weight_scale` [N, groups], `weight_zero_point` int32 [N/8, groups]
  (packed along N, value + 8) when asymmetric, `weight_shape` [2], `weight_g_idx` [K] (actorder group);
  `float-quantized`: `weight` float8_e4m3fn [N, K] and `weight_scale` [N, 1] (channel) or one
  value (tensor).

A module's pieces may arrive in any order and from different files; each module is emitted once
all its pieces are in. Tensors of other modules pass through.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from radixserve.models.linear_methods import pack_int4
from radixserve.models.quant_config import QuantPlan

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_SHIFTS = torch.arange(8, dtype=torch.int32) * 4


def _nibbles(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their 8 nibbles (low first) spread along `dim` (0 or 1), as uint8."""
    words = packed.to(torch.int32)
    if dim == 0:  # [R, C] -> [R, 8, C] -> [8R, C]
        out = (words[:, None, :] >> _SHIFTS[None, :, None]) & 0xF
        return out.reshape(-1, words.shape[1]).to(torch.uint8)
    out = (words[:, :, None] >> _SHIFTS[None, None, :]) & 0xF  # [R, C, 8]
    return out.reshape(words.shape[0], -1).to(torch.uint8)


def _awq_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """AWQ int32 [R, C/8] -> [R, C] uint8, undoing the interleaved order."""
    raw = _nibbles(packed, 1).reshape(packed.shape[0], -1, 8)  # [R, C/8, 8]: nibble i of each word
    out = torch.empty_like(raw)
    out[:, :, list(AWQ_ORDER)] = raw
    return out.reshape(packed.shape[0], -1)


def _check_trivial_g_idx(name: str, g_idx: torch.Tensor, group: int | None) -> None:
    k = g_idx.shape[0]
    expect = torch.arange(k) // group if group else torch.zeros(k, dtype=torch.long)
    if not torch.equal(g_idx.long(), expect):
        raise ValueError(f"{name} is an act-order group map but quantization_config.desc_act is false; "
                         "set desc_act true (the checkpoint was written with act-order)")


def _gptq(prefix: str, p: dict[str, torch.Tensor], plan: QuantPlan) -> dict[str, torch.Tensor]:
    q = _nibbles(p["qweight"], 0).t()  # [N, K]
    zeros = (_nibbles(p["qzeros"], 1).to(torch.int32) + 1).to(torch.uint8).t()  # [N, groups], v1: stored z - 1
    out = {"qweight": pack_int4(q), "scales": p["scales"].t().contiguous(), "zeros": zeros.contiguous()}
    if plan.method.act_order:
        out["g_idx"] = p["g_idx"].to(torch.int32)
    _check_groups(prefix, out, q.shape[1], plan)
    return out


def _awq(prefix: str, p: dict[str, torch.Tensor], plan: QuantPlan) -> dict[str, torch.Tensor]:
    q = _awq_nibbles(p["qweight"]).t()  # [N, K]
    out = {"qweight": pack_int4(q), "scales": p["scales"].t().contiguous(),
           "zeros": _awq_nibbles(p["qzeros"]).t().contiguous()}
    _check_groups(prefix, out, q.shape[1], plan)
    return out


def _ct_int4(prefix: str, p: dict[str, torch.Tensor], plan: QuantPlan) -> dict[str, torch.Tensor]:
    n, k = (int(v) for v in p["weight_shape"].tolist())
    q = _nibbles(p["weight_packed"], 1)[:, :k]  # [N, K], value + 8
    scales = p["weight_scale"]
    if plan.symmetric:
        zeros = torch.full(scales.shape, 8, dtype=torch.uint8)
    else:
        zeros = _nibbles(p["weight_zero_point"], 0)[:n]  # [N, groups], value + 8
    out = {"qweight": pack_int4(q), "scales": scales.contiguous(), "zeros": zeros.contiguous()}
    if plan.method.act_order:
        out["g_idx"] = p["weight_g_idx"].to(torch.int32)
    _check_groups(prefix, out, k, plan)
    return out


def _ct_fp8(prefix: str, p: dict[str, torch.Tensor], plan: QuantPlan) -> dict[str, torch.Tensor]:
    w = p["weight"]
    scale = p["weight_scale"].float().reshape(-1)
    if scale.numel() == 1:  # per-tensor: the same scale on every row
        scale = scale.expand(w.shape[0])
    if scale.numel() != w.shape[0]:
        raise ValueError(f"{prefix}.weight_scale has {scale.numel()} values for {w.shape[0]} rows; "
                         "supported: one per output channel or one per tensor")
    return {"weight": w, "weight_scale": scale.contiguous()}


def _check_groups(prefix: str, out: dict[str, torch.Tensor], k: int, plan: QuantPlan) -> None:
    group = plan.method.group_size or k
    groups = -(-k // group)
    if out["scales"].shape[1] != groups or out["zeros"].shape != out["scales"].shape:
        raise ValueError(f"{prefix}: scales {tuple(out['scales'].shape)} / zeros {tuple(out['zeros'].shape)} do not "
                         f"hold {groups} groups of {group} over {k} input columns (check quantization_config.group_size)")


_DECODERS = {"gptq": _gptq, "awq": _awq, "ct-int4": _ct_int4, "ct-fp8": _ct_fp8}


def _pieces(plan: QuantPlan) -> tuple[set[str], set[str]]:
    """(required, optional) checkpoint leaves of one quantized module."""
    act = plan.method.act_order if hasattr(plan.method, "act_order") else False
    if plan.fmt == "gptq":
        return {"qweight", "qzeros", "scales"} | ({"g_idx"} if act else set()), set() if act else {"g_idx"}
    if plan.fmt == "awq":
        return {"qweight", "qzeros", "scales"}, set()
    if plan.fmt == "ct-int4":
        need = {"weight_packed", "weight_scale", "weight_shape"}
        return need | (set() if plan.symmetric else {"weight_zero_point"}) | ({"weight_g_idx"} if act else set()), set()
    return {"weight", "weight_scale"}, set()


def decode_checkpoint(weights: Iterable[tuple[str, torch.Tensor]], plan: QuantPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) -> (name in the linear-method layout, tensor)."""
    required, optional = _pieces(plan)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        prefix, _, leaf = name.rpartition(".")
        if plan.fmt == "ct-fp8" and leaf == "weight" and tensor.dtype != torch.float8_e4m3fn:
            yield name, tensor  # a dense tensor (embedding, norm, the ignored LM head)
            continue
        if plan.fmt == "ct-fp8" and leaf == "input_scale":
            raise ValueError(f"{name}: static activation scales are not supported; supported: dynamic per-token")
        if leaf in optional and plan.fmt == "gptq":
            _check_trivial_g_idx(name, tensor, plan.method.group_size)
            continue
        if leaf not in required:
            yield name, tensor
            continue
        parts = pending.setdefault(prefix, {})
        parts[leaf] = tensor
        if required <= parts.keys():
            for out_leaf, out in _DECODERS[plan.fmt](prefix, pending.pop(prefix), plan).items():
                yield f"{prefix}.{out_leaf}", out
    if pending:
        missing = {p: sorted(required - set(parts)) for p, parts in pending.items()}
        some = sorted(missing.items())[:4]
        raise ValueError(f"quantized checkpoint is incomplete: {len(missing)} module(s) lack tensors, e.g. "
                         + "; ".join(f"{p}: missing {m}" for p, m in some))
