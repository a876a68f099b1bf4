"""Copy HF-named tensors into a model whose q/k/v and gate/up projections are fused.

Mixture-of-experts blocks (models/moe.py) stack their experts into [E, ...] parameters: a module with
`expert_target` places each `<owner>.experts.<e>.<part>.<leaf>` tensor itself (leaf: weight, or a
quantized expert method's qweight / scales / zeros / weight_scale; models/moe_quant.py).

Under tensor parallelism each module cuts its rank's slice out of the checkpoint tensor
(`shard_checkpoint`, `checkpoint_offset`; see parallel.py), so a rank copies only its part.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# HF module name -> (our fused module name, shard index within it)
STACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
# one expert's projection of a mixture-of-experts MLP: <owner>.experts.<e>.<part>.<leaf>
EXPERT_NAME = re.compile(r"^(?P<owner>.+)\.experts\.(?P<expert>\d+)\.(?P<part>\w+)\.(?P<leaf>\w+)$")


def _shard_range(module: nn.Module, fused: str, shard: int) -> tuple[int, int]:
    """(start, size) along dim 0 of shard `shard` of a fused projection owned by `module`."""
    if fused == "qkv_proj":
        sizes = [module.q_size, module.kv_size, module.kv_size]
    else:
        sizes = [module.intermediate, module.intermediate]
    return sum(sizes[:shard]), sizes[shard]


def _whole_in_stack(model: nn.Module, parts: list[str]) -> bool:
    """Whether parameter `parts[-1]` of the stacked projection is indexed by no output row (one copy
    serves every component), per the layer's linear method."""
    method = getattr(model.get_submodule(".".join(parts[:-1])), "method", None)
    return method is not None and method.layout(parts[-1]).row_dim is None


def _fmt(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _piece(key: object) -> str:
    """Which piece of a stacked parameter a load key names: '', [shard s], [expert e] or [expert e, shard s]."""
    if isinstance(key, tuple):
        expert, shard = key
        return f"[expert {expert}" + (f", shard {shard}]" if shard is not None else "]")
    return f"[shard {key}]" if key is not None else ""


def load_stacked_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load (HF name, tensor) pairs; raise ValueError naming missing, unexpected or mis-shaped tensors.

    Expects the model to have `tie_word_embeddings` and HF-like module names below the
    `model.` prefix (embed_tokens, layers.N.self_attn/mlp, norm) plus lm_head.
    """
    params = dict(model.named_parameters())
    needed: set[tuple[str, object]] = set()
    for name, _ in params.items():
        module_name, _, leaf = name.rpartition(".")
        fused = module_name.rpartition(".")[2]
        holder = model.get_submodule(module_name) if module_name else model
        if hasattr(holder, "expert_keys"):  # stacked experts [E, ...]: one tensor per expert (and gate/up)
            needed.update((name, key) for key in holder.expert_keys(leaf))
        elif fused in ("qkv_proj", "gate_up_proj"):
            needed.update((name, s) for s in range(3 if fused == "qkv_proj" else 2))
        else:
            needed.add((name, None))
    loaded: set[tuple[str, object]] = set()
    modules = dict(model.named_modules())
    unexpected: list[str] = []
    mismatched: list[str] = []
    with torch.no_grad():
        for hf_name, tensor in weights:
            if hf_name.endswith(IGNORED_SUFFIXES):
                continue
            name = hf_name.removeprefix("model.")
            if name == "lm_head.weight" and model.tie_word_embeddings:
                name = "embed_tokens.weight"
            expert = EXPERT_NAME.match(name)
            owner = modules.get(expert["owner"]) if expert else None
            if owner is not None and hasattr(owner, "expert_target"):
                found = owner.expert_target(int(expert["expert"]), expert["part"], tensor, expert["leaf"])
                if found is None:
                    unexpected.append(hf_name)
                    continue
                leaf, shard, target, tensor = found
                key = (f"{expert['owner']}.{leaf}", (int(expert["expert"]), shard))
                if tuple(target.shape) != tuple(tensor.shape):
                    mismatched.append(f"{hf_name}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
                    continue
                target.copy_(tensor)
                loaded.add(key)
                continue
            parts = name.split(".")
            shard = None
            if len(parts) >= 2 and parts[-2] in STACKED:
                fused, shard = STACKED[parts[-2]]
                parts[-2] = fused
                name = ".".join(parts)
            param = params.get(name)
            if param is None:
                unexpected.append(hf_name)
                continue
            target = param.data
            if shard is not None and _whole_in_stack(model, parts):
                # NOTE: e.g. act-order g_idx: q/k/v (gate/up) share their input, so one serves all
                if any((name, s) in loaded for s in range(3)) and not torch.equal(target, tensor.to(target.dtype)):
                    mismatched.append(f"{hf_name}: differs from the projections stacked with it in {parts[-2]}")
                    continue
            elif shard is not None:
                owner = model.get_submodule(".".join(parts[:-2]))
                start, size = _shard_range(owner, parts[-2], shard)
                target = target[start:start + size]
                # NOTE: under tensor parallelism the fused projection holds this rank's rows of
                # each component; they start at checkpoint_offset in the checkpoint's tensor.
                # A tensor of the wrong full size is left whole, so the shape check below reports it.
                if hasattr(owner, "checkpoint_rows"):
                    offset, full = owner.checkpoint_rows(shard)
                    if tensor.shape[0] == full:
                        tensor = tensor.narrow(0, offset, size)
            else:
                holder = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                if hasattr(holder, "shard_checkpoint"):
                    tensor = holder.shard_checkpoint(name.rpartition(".")[2], tensor)
            if tuple(target.shape) != tuple(tensor.shape):
                mismatched.append(f"{hf_name}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
                continue
            target.copy_(tensor)
            loaded.add((name, shard))
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_fmt(mismatched)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_fmt(unexpected)}")
    missing = needed - loaded
    if missing:
        problems.append("missing tensors: " + _fmt(n + _piece(s) for n, s in missing))
    if problems:
        raise ValueError(f"checkpoint does not fit {type(model).__name__} "
                         f"(check config.json matches the weights): " + "; ".join(problems))
    logger.debug("loaded %d tensors into %s", len(loaded), type(model).__name__)
