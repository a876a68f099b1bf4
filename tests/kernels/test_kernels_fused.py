"""KV store and the fused elementwise kernels (RMSNorm, add+RMSNorm, rotary, SiLU-mul) vs references.

The references are checked against HF transformers' own modules where one exists, so the kernels
are pinned to the numerics the models are validated against.
"""
from __future__ import annotations

import pytest
import torch

from radixserve.kernels.kv_store import kv_store, kv_store_ref
from radixserve.kernels.rmsnorm import fused_add_rmsnorm, fused_add_rmsnorm_ref, rmsnorm, rmsnorm_ref
from radixserve.kernels.rotary import apply_rotary, apply_rotary_ref, apply_rotary_store, rope_cos_sin
from radixserve.kernels.silu_mul import silu_mul, silu_mul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Kernels and references compute in float32 and round to the dtype at the same (at most two)
# points, so results agree to two ulps (eps = 2^-7 bf16, 2^-10 fp16). NOTE: Triton's interpreter
# rounds float32 -> bf16 toward zero where GPUs round to nearest, so on CPU one of those ulps is
# spent on that.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2 * 2**-10, 2 * 2**-10),
       torch.bfloat16: (2 * 2**-7, 2 * 2**-7)}  # (atol, rtol)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    atol, rtol = TOL[ref.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("src_dtype,dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("page_size", [1, 16])
def test_kv_store_writes_only_out_slots(src_dtype, dtype, page_size):
    num_slots, hkv, d = 64, 2, 80
    gen = torch.Generator().manual_seed(page_size)
    if page_size == 1:
        slots = torch.randperm(num_slots - 1, generator=gen)[:11] + 1  # scattered
    else:
        slots = 16 + torch.arange(11)  # a run inside page 1
    slots = slots.to(DEVICE)
    # k, v as strided slices of one fused [T, (2 Hkv) D] buffer, as a qkv projection gives them
    kv = randn(11, 2 * hkv * d, dtype=src_dtype, seed=1).view(11, 2 * hkv, d)
    k, v = kv[:, :hkv], kv[:, hkv:]
    pools = [randn(num_slots, hkv, d, dtype=dtype, seed=s) for s in (2, 3)]
    ref_pools = [p.clone() for p in pools]
    kv_store(k, v, *pools, slots)
    kv_store_ref(k, v, *ref_pools, slots)
    # a copy is exact; a downcast may differ by one ulp (the interpreter rounds toward zero)
    rtol = 0 if src_dtype == dtype else 2**-7
    for pool, ref in zip(pools, ref_pools):
        torch.testing.assert_close(pool, ref, atol=0, rtol=rtol)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    torch.testing.assert_close(pools[0][untouched], randn(num_slots, hkv, d, dtype=dtype, seed=2)[untouched])


def test_kv_store_rejects_mismatched_shapes():
    pool = torch.zeros((8, 2, 64), device=DEVICE)
    k = torch.zeros((3, 4, 64), device=DEVICE)
    with pytest.raises(ValueError, match="matching the pools"):
        kv_store(k, k, pool, pool, torch.zeros(3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="int64"):
        kv_store(k[:, :2], k[:, :2], pool, pool, torch.zeros(3, dtype=torch.int32, device=DEVICE))


def test_rmsnorm_ref_matches_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    norm = LlamaRMSNorm(96, eps=1e-6).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(randn(96, seed=5))
    x = randn(7, 96, dtype=torch.bfloat16, seed=6)
    torch.testing.assert_close(rmsnorm_ref(x, norm.weight, 1e-6), norm(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 96), (3, 4, 80)])  # a hidden row; per-head q/k norm
def test_rmsnorm(dtype, shape):
    x = randn(*shape, dtype=dtype, seed=1) * 3
    w = randn(shape[-1], dtype=dtype, seed=2)
    assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rmsnorm_updates_residual_in_place(dtype):
    x, residual = randn(6, 200, dtype=dtype, seed=1), randn(6, 200, dtype=dtype, seed=2)
    w = randn(200, dtype=dtype, seed=3)
    ref = fused_add_rmsnorm_ref(x, residual, w, 1e-5)
    res = fused_add_rmsnorm(x, residual, w, 1e-5)
    assert res.residual is residual
    assert_close(residual, ref.residual)
    assert_close(res.out, ref.out)


def test_rotary_ref_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    d, positions = 64, torch.tensor([0, 5, 3, 100], device=DEVICE)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device=DEVICE).float() / d))
    cos, sin = rope_cos_sin(inv_freq, 128)
    q, k = randn(4, 4, d, seed=1), randn(4, 2, d, seed=2)
    full_cos = torch.cat([cos, cos], -1)[positions][None]  # [1, T, D] as HF builds it
    full_sin = torch.cat([sin, sin], -1)[positions][None]
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], full_cos, full_sin)
    ref_q, ref_k = apply_rotary_ref(q, k, positions, cos, sin)
    torch.testing.assert_close(ref_q, hf_q[0].transpose(0, 1))
    torch.testing.assert_close(ref_k, hf_k[0].transpose(0, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 64), (8, 2, 80), (8, 1, 128)])
def test_rotary_in_place(dtype, num_heads, num_kv_heads, head_dim):
    inv_freq = 1.0 / (500000 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    cos, sin = rope_cos_sin(inv_freq, 4096)
    positions = torch.tensor([0, 1, 4095, 7, 7, 300], device=DEVICE)
    # q, k as strided slices of a fused qkv buffer, which is how models hand them over
    qkv = randn(6, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=1)
    q = qkv[:, :num_heads * head_dim].view(6, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(6, num_kv_heads, head_dim)
    v_before = qkv[:, (num_heads + num_kv_heads) * head_dim:].clone()
    ref_q, ref_k = apply_rotary_ref(q, k, positions, cos, sin)
    apply_rotary(q, k, positions, cos, sin)
    assert_close(q, ref_q)
    assert_close(k, ref_k)
    torch.testing.assert_close(qkv[:, (num_heads + num_kv_heads) * head_dim:], v_before, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 64), (8, 2, 80), (6, 2, 128)])
def test_rotary_store_equals_rotary_then_kv_store(dtype, num_heads, num_kv_heads, head_dim):
    """The fused kernel = apply_rotary_ref + kv_store_ref: q rotated in place, rotated k and v in the
    pool at out_slots only, k itself untouched."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    cos, sin = rope_cos_sin(inv_freq, 512)
    t = 7
    positions = torch.tensor([0, 1, 511, 9, 9, 300, 2], device=DEVICE)
    slots = torch.tensor([5, 17, 3, 40, 41, 8, 30], device=DEVICE)
    qkv = randn(t, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=1)
    q = qkv[:, :num_heads * head_dim].view(t, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(t, num_kv_heads, head_dim)
    v = qkv[:, (num_heads + num_kv_heads) * head_dim:].view(t, num_kv_heads, head_dim)
    k_before = k.clone()
    ref_q, ref_k = apply_rotary_ref(q, k, positions, cos, sin)
    pools = [randn(48, num_kv_heads, head_dim, dtype=dtype, seed=s) for s in (2, 3)]
    ref_pools = [p.clone() for p in pools]
    kv_store_ref(ref_k, v, *ref_pools, slots)
    apply_rotary_store(q, k, v, positions, cos, sin, *pools, slots)
    assert_close(q, ref_q)
    assert_close(pools[0], ref_pools[0])
    torch.testing.assert_close(pools[1], ref_pools[1], atol=0, rtol=0)  # v: a plain copy
    torch.testing.assert_close(k, k_before, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 200])
def test_silu_mul(dtype, inter):
    x = randn(5, 2 * inter, dtype=dtype, seed=4) * 4
    assert_close(silu_mul(x, block=128), silu_mul_ref(x))


def test_silu_mul_ref_matches_transformers_mlp():
    from transformers.activations import ACT2FN
    x = randn(3, 2 * 48, seed=7)
    gate, up = x.chunk(2, -1)
    torch.testing.assert_close(silu_mul_ref(x), ACT2FN["silu"](gate) * up)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_serving_sizes_gpu(dtype):
    x, residual, w = randn(4096, 4096, dtype=dtype), randn(4096, 4096, dtype=dtype, seed=1), randn(4096, dtype=dtype)
    ref = fused_add_rmsnorm_ref(x, residual, w, 1e-6)
    res = fused_add_rmsnorm(x, residual, w, 1e-6)
    assert_close(res.residual, ref.residual)
    assert_close(res.out, ref.out)
    assert_close(silu_mul(randn(4096, 2 * 14336, dtype=dtype)), silu_mul_ref(randn(4096, 2 * 14336, dtype=dtype)))
    cos, sin = rope_cos_sin(1.0 / (10000 ** (torch.arange(0, 128, 2, device=DEVICE).float() / 128)), 8192)
    q, k = randn(4096, 32, 128, dtype=dtype), randn(4096, 8, 128, dtype=dtype, seed=1)
    positions = torch.randint(0, 8192, (4096,), device=DEVICE)
    ref_q, ref_k = apply_rotary_ref(q, k, positions, cos, sin)
    apply_rotary(q, k, positions, cos, sin)
    assert_close(q, ref_q)
    assert_close(k, ref_k)
    pool = torch.zeros((70000, 8, 128), dtype=dtype, device=DEVICE)
    ref_pool = pool.clone()
    slots = torch.randperm(70000, device=DEVICE)[:4096]
    kv_store(k, k, pool, pool, slots)
    kv_store_ref(k, k, ref_pool, ref_pool, slots)
    torch.testing.assert_close(pool, ref_pool, atol=0, rtol=0)
