"""Which linear method a model gets: from its checkpoint's `quantization_config`, or the engine's
`quantization` option (fp8 / int4 quantize a float checkpoint or dummy weights at load).

Everything a checkpoint asks for that radixserve cannot compute exactly is refused here, before any
weight is read, with the config field and what is supported.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch

from radixserve.models.linear_methods import Fp8Method, Int4Method

ON_THE_FLY = ("fp8", "int4")  # quantize a float checkpoint (or dummy weights) at load
CHECKPOINT_METHODS = ("gptq", "awq", "compressed-tensors")  # decoded from the checkpoint's own tensors
QUANTIZATIONS = ON_THE_FLY + CHECKPOINT_METHODS
ON_THE_FLY_INT4_GROUP = 128


# a compressed-tensors `ignore` entry naming mixture-of-experts routers (kept dense by every method:
# models/moe.py Router), e.g. 're:.*mlp.gate$', 'model.layers.0.mlp.gate', 're:.*shared_expert_gate$'
_ROUTER = re.compile(r"(mlp|block_sparse_moe|\.\*)\\?\.(shared_expert_)?gate\$?$|shared_expert_gate\$?$")


class QuantPlan(NamedTuple):
    method: Any  # the linear method of every projection (Fp8Method / Int4Method)
    fmt: str | None  # checkpoint convention to decode (gptq, awq, ct-int4, ct-fp8); None: quantize on the fly
    symmetric: bool = True  # ct-int4: no zero-point tensor (zero 8)


def _dict(qc) -> dict:
    return qc if isinstance(qc, dict) else qc.to_dict()


def _bad(field: str, value, supported: str) -> ValueError:
    return ValueError(f"unsupported quantization: quantization_config.{field} = {value!r}; supported: {supported}")


def resolve_quantization(option: str | None, config, dtype: torch.dtype) -> QuantPlan | None:
    """The plan for a model with HF `config` loaded in `dtype`, or None (dense weights)."""
    if option is not None and option not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} (or None), got {option!r}")
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        if option in CHECKPOINT_METHODS:
            raise ValueError(f"quantization={option!r} needs a checkpoint quantized with it, but this model has no "
                             f"quantization_config; use one of {ON_THE_FLY} to quantize at load")
        if option == "fp8":
            return QuantPlan(Fp8Method(), None)
        if option == "int4":
            return QuantPlan(Int4Method(ON_THE_FLY_INT4_GROUP), None)
        return None
    qc = _dict(qc)
    method = qc.get("quant_method")
    if option in ON_THE_FLY:
        raise ValueError(f"the checkpoint is already quantized (quantization_config.quant_method = {method!r}); "
                         f"drop quantization={option!r} or pass {method!r}")
    if option is not None and option != method:
        raise ValueError(f"quantization={option!r} but the checkpoint's quantization_config.quant_method is {method!r}")
    # NOTE: GPTQ / AWQ scales are float16 by their convention; kept exact in a float32 model.
    scale16 = None if dtype == torch.float32 else torch.float16
    if method == "gptq":
        return _gptq(qc, scale16)
    if method == "awq":
        return _awq(qc, scale16)
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    raise _bad("quant_method", method, ", ".join(CHECKPOINT_METHODS))


def _group(qc: dict, key: str) -> int | None:
    group = int(qc.get(key, -1))
    if group == -1:
        return None  # one scale per output row
    if group < 2 or group % 2:
        raise _bad(key, group, "an even group size (32, 64, 128, ...) or -1")
    return group


def _gptq(qc: dict, scale_dtype) -> QuantPlan:
    if int(qc.get("bits", 0)) != 4:
        raise _bad("bits", qc.get("bits"), "4")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt != "gptq":
        raise _bad("checkpoint_format", fmt, "'gptq' (v1, as AutoGPTQ / GPTQModel write by default)")
    group = _group(qc, "group_size")
    act_order = bool(qc.get("desc_act", False)) and group is not None
    return QuantPlan(Int4Method(group, act_order, scale_dtype), "gptq")


def _awq(qc: dict, scale_dtype) -> QuantPlan:
    bits = qc.get("bits", qc.get("w_bit"))
    if int(bits or 0) != 4:
        raise _bad("bits", bits, "4")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise _bad("version", version, "'gemm'")
    if not qc.get("zero_point", True):
        raise _bad("zero_point", False, "true")
    group = _group(qc, "group_size" if "group_size" in qc else "q_group_size")
    return QuantPlan(Int4Method(group, False, scale_dtype), "awq")


def _compressed_tensors(qc: dict) -> QuantPlan:
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise _bad("config_groups", sorted(groups), "exactly one scheme for every Linear")
    (name, scheme), = groups.items()
    ignore = {entry for entry in qc.get("ignore") or [] if entry != "lm_head" and not _ROUTER.search(entry)}
    if ignore:
        raise _bad("ignore", sorted(ignore), "'lm_head' and mixture-of-experts routers (e.g. 're:.*mlp.gate$'); "
                   "every projection and expert quantized alike")
    w, act = scheme.get("weights") or {}, scheme.get("input_activations")
    fmt = scheme.get("format") or qc.get("format")
    where = f"config_groups.{name}"
    if fmt == "pack-quantized":
        if w.get("type", "int") != "int" or int(w.get("num_bits", 0)) != 4:
            raise _bad(f"{where}.weights.num_bits", w.get("num_bits"), "4 (type int) for pack-quantized")
        if act is not None:
            raise _bad(f"{where}.input_activations", act, "null (weight-only W4A16)")
        strategy = w.get("strategy")
        if strategy not in ("group", "channel"):
            raise _bad(f"{where}.weights.strategy", strategy, "group, channel")
        group = int(w["group_size"]) if strategy == "group" else None
        actorder = w.get("actorder")
        if actorder not in (None, "group", "weight", "static"):
            raise _bad(f"{where}.weights.actorder", actorder, "null, group, weight")
        return QuantPlan(Int4Method(group, actorder == "group"), "ct-int4", bool(w.get("symmetric", True)))
    if fmt == "float-quantized":
        if w.get("type") != "float" or int(w.get("num_bits", 0)) != 8:
            raise _bad(f"{where}.weights", {k: w.get(k) for k in ("type", "num_bits")}, "type float, num_bits 8")
        if w.get("strategy") not in ("channel", "tensor") or not w.get("symmetric", True):
            raise _bad(f"{where}.weights.strategy", w.get("strategy"), "channel or tensor, symmetric")
        if act is None or not act.get("dynamic") or act.get("strategy") != "token":
            raise _bad(f"{where}.input_activations", act, "dynamic per-token fp8 ({'dynamic': true, 'strategy': 'token'})")
        return QuantPlan(Fp8Method(), "ct-fp8")
    raise _bad(f"{where}.format", fmt, "pack-quantized, float-quantized")
