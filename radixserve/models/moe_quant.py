"""Expert methods: how a mixture-of-experts block (models/moe.py) stores its stacked experts and runs them.

The two stacks are `experts_gate_up` [E, 2I, H] (gate rows, then up rows) and `experts_down` [E, H, I].
Each method keeps, per stack and per checkpoint leaf of one expert's projection, one parameter with
the experts stacked in front (`expert_param`), in the layout of the matching linear method
(linear_methods.py) per expert:

- `UnquantizedExperts`: `<stack>` [E, N, K] in the model dtype.
- `Int4Experts`: `<stack>_qweight` [E, N, K/2] uint8 (even k in the low nibble), `<stack>_scales`
  and `<stack>_zeros` [E, N, groups] (asymmetric, unsigned zero point; `group_size` input columns
  per group, or one per row). No act-order.
- `Fp8Experts`: `<stack>` [E, N, K] float8_e4m3fn and `<stack>_weight_scale` [E, N] float32 (per
  output channel); weight-only: the activations stay in the model dtype.

Quantized experts run, on CUDA with fused ops, the fused kernel that dequantizes each expert's weight
tiles in registers (kernels/fused_moe_quant.py; fp8 from compute capability 8.9), elsewhere the torch
loop of kernels/fused_moe.py over the experts that got tokens, dequantizing only those experts' weights.
"""
from __future__ import annotations

import torch
from torch import nn

STACKS = ("experts_gate_up", "experts_down")


def expert_param(stack: str, leaf: str) -> str:
    """The parameter holding checkpoint leaf `leaf` of every expert's `stack` projection."""
    return stack if leaf == "weight" else f"{stack}_{leaf}"


def _stack_shape(moe: nn.Module, stack: str) -> tuple[int, int]:
    """(N, K) of one expert's projection in `stack`, this rank's slice."""
    return (2 * moe.intermediate, moe.hidden) if stack == "experts_gate_up" else (moe.hidden, moe.intermediate)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class UnquantizedExperts:
    """Dense stacks in the model dtype: the fused Triton kernel on CUDA, its torch reference elsewhere."""

    name = "none"
    leaves = ("weight",)

    def cols_per_index(self, leaf: str) -> int | None:
        return 1

    def create_weights(self, moe: nn.Module) -> None:
        pass  # SparseMoE allocates its dense stacks itself

    def apply(self, moe: nn.Module, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if moe.fused_ops and x.is_cuda:
            from radixserve.kernels.fused_moe import fused_moe
            return fused_moe(x, moe.experts_gate_up, moe.experts_down, weights, ids)
        from radixserve.kernels.fused_moe import fused_moe_ref
        return fused_moe_ref(x, moe.experts_gate_up, moe.experts_down, weights, ids)


UNQUANTIZED_EXPERTS = UnquantizedExperts()


class _QuantizedExperts:
    """What int4 and fp8 share: the fused kernel, or the loop over the experts that got tokens, each
    dequantized on the way."""

    name = ""
    leaves: tuple[str, ...] = ()

    def dense(self, moe: nn.Module, stack: str, expert: int, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def stack(self, moe: nn.Module, stack: str):
        """`stack` as the fused kernel's QuantStack (kernels/fused_moe_quant.py)."""
        raise NotImplementedError

    def fused_on(self, device: torch.device) -> bool:
        return True

    def apply(self, moe: nn.Module, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if moe.fused_ops and x.is_cuda and self.fused_on(x.device):
            from radixserve.kernels.fused_moe_quant import fused_moe_quant
            return fused_moe_quant(x, self.stack(moe, "experts_gate_up"), self.stack(moe, "experts_down"),
                                   weights, ids)
        from radixserve.kernels.fused_moe import moe_ref_loop

        def expert_weights(e: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.dense(moe, "experts_gate_up", e, x.dtype), self.dense(moe, "experts_down", e, x.dtype)

        return moe_ref_loop(x, expert_weights, moe.num_experts, weights, ids)

    def _replace(self, moe: nn.Module, stack: str, leaves: dict[str, torch.Tensor]) -> None:
        """Drop the dense stack and register the quantized leaves (empty, to be filled)."""
        if stack in moe._parameters:
            del moe._parameters[stack]
        for leaf, t in leaves.items():
            moe.register_parameter(expert_param(stack, leaf), _param(t))


class Int4Experts(_QuantizedExperts):
    """4-bit unsigned expert weights, a scale and zero point per group of input columns (or per row)."""

    name = "int4"
    leaves = ("qweight", "scales", "zeros")

    def __init__(self, group_size: int | None, scale_dtype: torch.dtype | None = None) -> None:
        if group_size is not None and (group_size < 2 or group_size % 2):
            raise ValueError(f"int4 group_size must be an even number >= 2 (or None: one per row), got {group_size}")
        self.group_size, self.scale_dtype = group_size, scale_dtype

    def group(self, k: int) -> int:
        return self.group_size or k

    def cols_per_index(self, leaf: str) -> int | None:
        return 2 if leaf == "qweight" else self.group_size  # None (per row): scales are not split

    def create_weights(self, moe: nn.Module) -> None:
        device, dtype = moe.gate.weight.device, moe.gate.weight.dtype
        e = moe.num_experts
        for stack in STACKS:
            n, k = _stack_shape(moe, stack)
            g = self.group(k)
            if k % 2:
                raise ValueError(f"int4 experts need an even number of input features, {stack} has {k}")
            if stack == "experts_down" and moe.tp.size > 1 and k % g:
                raise ValueError(f"int4 group_size {g} does not divide the experts' {k} intermediate features per "
                                 f"rank; use a tp whose shards end on group boundaries")
            groups = -(-k // g)
            self._replace(moe, stack, {
                "qweight": torch.empty(e, n, k // 2, dtype=torch.uint8, device=device),
                "scales": torch.empty(e, n, groups, dtype=self.scale_dtype or dtype, device=device),
                "zeros": torch.empty(e, n, groups, dtype=torch.uint8, device=device)})

    def dense(self, moe: nn.Module, stack: str, expert: int, dtype: torch.dtype) -> torch.Tensor:
        from radixserve.kernels.int4_matmul import int4_dequantize
        q = getattr(moe, f"{stack}_qweight")[expert]
        return int4_dequantize(q, getattr(moe, f"{stack}_scales")[expert], getattr(moe, f"{stack}_zeros")[expert],
                               self.group(q.shape[1] * 2)).to(dtype)

    def stack(self, moe: nn.Module, stack: str):
        from radixserve.kernels.fused_moe_quant import QuantStack
        q = getattr(moe, f"{stack}_qweight")
        return QuantStack(q, getattr(moe, f"{stack}_scales"), getattr(moe, f"{stack}_zeros"),
                          self.group(q.shape[2] * 2))

    @torch.no_grad()
    def quantize(self, moe: nn.Module) -> None:
        """Round to nearest per expert (linear_methods.rtn_int4), one expert's float copy at a time."""
        from radixserve.models.linear_methods import pack_int4, rtn_int4
        dense = {stack: getattr(moe, stack).data for stack in STACKS}
        self.create_weights(moe)
        for stack, w in dense.items():
            for e in range(moe.num_experts):
                q, scales, zeros = rtn_int4(w[e], self.group(w.shape[2]))
                getattr(moe, f"{stack}_qweight").data[e].copy_(pack_int4(q))
                getattr(moe, f"{stack}_scales").data[e].copy_(scales)
                getattr(moe, f"{stack}_zeros").data[e].copy_(zeros)


class Fp8Experts(_QuantizedExperts):
    """fp8 e4m3 expert weights with a float32 scale per output channel; activations unquantized."""

    name = "fp8"
    leaves = ("weight", "weight_scale")

    def cols_per_index(self, leaf: str) -> int | None:
        return 1 if leaf == "weight" else None

    def create_weights(self, moe: nn.Module) -> None:
        device = moe.gate.weight.device
        for stack in STACKS:
            n, k = _stack_shape(moe, stack)
            self._replace(moe, stack, {
                "weight": torch.empty(moe.num_experts, n, k, dtype=torch.float8_e4m3fn, device=device),
                "weight_scale": torch.empty(moe.num_experts, n, dtype=torch.float32, device=device)})

    def dense(self, moe: nn.Module, stack: str, expert: int, dtype: torch.dtype) -> torch.Tensor:
        w, scale = getattr(moe, stack)[expert], getattr(moe, f"{stack}_weight_scale")[expert]
        return (w.float() * scale[:, None]).to(dtype)

    def stack(self, moe: nn.Module, stack: str):
        from radixserve.kernels.fused_moe_quant import QuantStack
        return QuantStack(getattr(moe, stack), getattr(moe, f"{stack}_weight_scale"), None, 0)

    def fused_on(self, device: torch.device) -> bool:
        return torch.cuda.get_device_capability(device) >= (8, 9)  # Triton's fp8 e4m3 conversions

    @torch.no_grad()
    def quantize(self, moe: nn.Module) -> None:
        """Per expert and output channel, as linear_methods.fp8_quantize."""
        from radixserve.models.linear_methods import fp8_quantize
        dense = {stack: getattr(moe, stack).data for stack in STACKS}
        self.create_weights(moe)
        for stack, w in dense.items():
            for e in range(moe.num_experts):
                w8, scale = fp8_quantize(w[e])
                getattr(moe, stack).data[e].copy_(w8)
                getattr(moe, f"{stack}_weight_scale").data[e].copy_(scale)


def experts_method(linear_method):
    """The expert method matching a model's linear method (Fp8Method / Int4Method)."""
    if linear_method.name == "fp8":
        return Fp8Experts()
    if linear_method.name == "int4":
        if linear_method.act_order:
            raise ValueError("act-order int4 (quantization_config.desc_act / actorder) is not supported for "
                             "mixture-of-experts experts; supported: group-wise int4 without act-order")
        return Int4Experts(linear_method.group_size, linear_method.scale_dtype)
    if linear_method.name == "none":
        return UNQUANTIZED_EXPERTS
    raise ValueError(f"no expert method for linear method {linear_method.name!r}; supported: none, fp8, int4")
