"""The fused CPU elementwise ops give bitwise the results of the plain torch ops (float32), and
the same to rounding in bfloat16; set_fused_ops switches a whole model."""
from __future__ import annotations

import pytest
import torch

from radixserve.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, set_fused_ops


def _pair(module_fn):
    plain, fused = module_fn(), module_fn()
    fused.load_state_dict(plain.state_dict())
    plain.fused_ops, fused.fused_ops = False, True
    return plain, fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_and_residual_add(dtype):
    gen = torch.Generator().manual_seed(0)
    plain, fused = _pair(lambda: RMSNorm(48, 1e-5, dtype, "cpu"))
    with torch.no_grad():
        plain.weight.copy_(torch.randn(48, generator=gen).to(dtype))
        fused.weight.copy_(plain.weight)
    x = (torch.randn(7, 48, generator=gen) * 3).to(dtype)
    res = torch.randn(7, 48, generator=gen).to(dtype)
    exact = dtype == torch.float32
    check = torch.testing.assert_close if not exact else (lambda a, b: torch.testing.assert_close(a, b, atol=0, rtol=0))
    check(fused(x), plain(x))
    res_fused = res.clone()
    n_plain, s_plain = plain.add_forward(x, res)
    n_fused, s_fused = fused.add_forward(x, res_fused)
    check(n_fused, n_plain)
    check(s_fused, s_plain)
    assert s_fused.data_ptr() == res_fused.data_ptr()  # the sum went into the residual in place


def test_silu_mul():
    gen = torch.Generator().manual_seed(1)
    plain, fused = _pair(lambda: GatedMLP(32, 40, False, torch.float32, "cpu"))
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(5, 32, generator=gen)
    torch.testing.assert_close(fused(x), plain(x), atol=0, rtol=0)


@pytest.mark.parametrize("adjacent", [True, False])
def test_rotary_in_place_on_q_and_k(adjacent):
    gen = torch.Generator().manual_seed(2)
    params = {"rope_type": "default", "rope_theta": 10000.0}
    plain, fused = _pair(lambda: RotaryEmbedding(16, 256, params, "cpu"))
    t, h, hkv, d = 6, 9, 3, 16
    qkv = torch.randn(t, (h + 2 * hkv) * d, generator=gen)  # a qkv projection output
    if adjacent:
        q, k, _ = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
        q, k = q.view(t, h, d), k.view(t, hkv, d)
    else:
        q, k = torch.randn(t, h, d, generator=gen), torch.randn(t, hkv, d, generator=gen)
    pos = torch.tensor([0, 5, 17, 100, 255, 3])
    q_ref, k_ref = plain(pos, q.clone(), k.clone())
    q_out, k_out = fused(pos, q, k)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()  # in place
    torch.testing.assert_close(q_out, q_ref, atol=0, rtol=0)
    torch.testing.assert_close(k_out, k_ref, atol=0, rtol=0)


def test_set_fused_ops_reaches_every_layer():
    from radixserve.models.loader import load_model

    model = load_model("dummy:tiny-llama", torch.float32, "cpu").model
    flags = lambda: {m.fused_ops for m in model.modules() if hasattr(m, "fused_ops")}  # noqa: E731
    assert flags() == {True}
    set_fused_ops(model, False)
    assert flags() == {False}
