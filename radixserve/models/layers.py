"""Layers shared by the model families: linear, embedding, RMSNorm, rotary embedding, gated MLP.

Parameters are allocated with `torch.empty` directly on the target device and dtype (no init
pass, no CPU float32 copy); real weights arrive through `load_weights`, random ones through
`radixserve.models.dummy`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.models import cpu_ops
from radixserve.models.linear_methods import UNQUANTIZED, single_row


# NOTE: with fused ops (EngineConfig.fused_ops, set on a loaded model by set_fused_ops), RMSNorm
# (+ residual add), rotary and SiLU*mul run as fused Triton kernels on CUDA (each torch op is
# several kernels; the fused ones cut the Llama-3.1-8B batch-1 decode step from 8.5 to 6.4 ms on an
# H100, benchmarks/results/gpu_runtime_h100.md) and as in-place torch sequences on CPU
# (radixserve/models/cpu_ops.py). Without, plain torch ops everywhere.


def set_fused_ops(model: nn.Module, enabled: bool) -> None:
    """Turn the fused elementwise ops of every layer of `model` on or off."""
    for module in model.modules():
        if hasattr(module, "fused_ops"):
            module.fused_ops = enabled


class Linear(nn.Module):
    """y = x W^T (+ b); weight [out, in], uninitialised until loaded. `method` (linear_methods.py)
    says how the weight is stored and applied: dense by default, fp8 or int4 once quantized."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = UNQUANTIZED
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)
        self.fused_ops = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 like the reference implementations."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps
        self.fused_ops = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ops and x.is_cuda:
            from radixserve.kernels.rmsnorm import rmsnorm
            return rmsnorm(x, self.weight, self.eps)
        if self.fused_ops and x.device.type == "cpu":
            return cpu_ops.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (norm(x + residual), x + residual); fused, it updates `residual` in place."""
        if self.fused_ops and x.is_cuda:
            from radixserve.kernels.rmsnorm import fused_add_rmsnorm
            return tuple(fused_add_rmsnorm(x, residual, self.weight, self.eps))
        if self.fused_ops and x.device.type == "cpu":
            return cpu_ops.add_rms_norm(x, residual, self.weight, self.eps)
        residual = x + residual
        return self(residual), residual


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj, self.down_proj = self._projections(hidden, intermediate, bias, dtype, device)
        self.fused_ops = True

    def _projections(self, hidden: int, intermediate: int, bias: bool, dtype: torch.dtype,
                     device: torch.device | str) -> tuple[Linear, Linear]:
        """(gate_up [2I, hidden], down [hidden, I]); the tensor-parallel MLP splits them."""
        return Linear(hidden, 2 * intermediate, bias, dtype, device), Linear(intermediate, hidden, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if single_row(x, self.fused_ops) and self.gate_up_proj.method.dense:  # one kernel for gate|up and SiLU-mul
            from radixserve.kernels.gemv import gemv
            return self.down_proj(gemv(x, self.gate_up_proj.weight, self.gate_up_proj.bias, gated=True))
        if self.fused_ops and x.is_cuda:
            from radixserve.kernels.silu_mul import silu_mul
            return self.down_proj(silu_mul(self.gate_up_proj(x)))  # [T, 2I] -> [T, I] -> [T, hidden]
        if self.fused_ops and x.device.type == "cpu":
            return self.down_proj(cpu_ops.silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)  # [T, I] each
        return self.down_proj(F.silu(gate) * up)


def rope_params(config) -> dict:
    """The rope settings of an HF config as one dict with at least `rope_type` and `rope_theta`.

    Reads `config.rope_parameters` (transformers >= 5) and falls back to the older
    `rope_scaling` + `rope_theta` attributes.
    """
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]  # per-layer-type form; these families only use full attention
    params = dict(params or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    if "rope_type" not in params:
        params["rope_type"] = params.pop("type", "default")
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def rope_inv_freq(params: dict, head_dim: int, max_position: int) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] float32 (on CPU) for the given rope settings."""
    base = float(params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    kind = params["rope_type"]
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(params["factor"])
    if kind == "dynamic":
        # NOTE: dynamic NTK only changes frequencies beyond max_position_embeddings; the loader caps
        # the context length there, where it equals the default rope.
        return inv_freq
    if kind == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, out)
    raise ValueError(f"rope_type {kind!r} is not supported; supported: default, linear, dynamic, llama3")


class RotaryEmbedding(nn.Module):
    """Rotate-half rope with cos/sin precomputed for every position up to `max_position`."""

    def __init__(self, head_dim: int, max_position: int, params: dict, device: torch.device | str,
                 freq_factors: torch.Tensor | None = None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(params, head_dim, max_position)  # [D/2]
        if freq_factors is not None:  # llama.cpp stores llama3 scaling as per-frequency divisors
            inv_freq = inv_freq / freq_factors.float().cpu()
        pos = torch.arange(max_position, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # [P, D/2]
        self.register_buffer("cos", angles.cos().to(device), persistent=False)  # [P, D/2]
        self.register_buffer("sin", angles.sin().to(device), persistent=False)  # [P, D/2]
        self.fused_ops = True

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, H, D], k [T, Hkv, D] -> rotated q, k (in place when fused)."""
        if self.fused_ops and q.is_cuda:
            from radixserve.kernels.rotary import apply_rotary
            apply_rotary(q, k, positions, self.cos, self.sin)
            return q, k
        if self.fused_ops and q.device.type == "cpu":
            cpu_ops.apply_rotary(q, k, positions, self.cos, self.sin)
            return q, k
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, D/2]
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # [T, H, D/2] each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
