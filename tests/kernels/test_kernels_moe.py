"""The fused MoE kernel (kernels/fused_moe.py) vs its torch reference, and the reference vs a plain
per-token loop over each token's experts (the definition). Small shapes: under TRITON_INTERPRET=1 on CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radixserve.kernels.fused_moe import MoeConfig, align_by_expert, fused_moe, fused_moe_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}
SMALL = MoeConfig(16, 16, 16, 4, 1)  # the smallest tl.dot tiles: several N and K blocks at these shapes


def _problem(t: int, e: int, k: int, hidden: int, inter: int, dtype=torch.float32, seed: int = 0,
             experts_used: int | None = None):
    """Random x, expert weights, and a routing of each token to k distinct experts among the first
    `experts_used` (the rest get no tokens)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, hidden, generator=gen)
    w13 = torch.randn(e, 2 * inter, hidden, generator=gen) * 0.2
    w2 = torch.randn(e, hidden, inter, generator=gen) * 0.2
    pool = experts_used or e
    ids = torch.stack([torch.randperm(pool, generator=gen)[:k] for _ in range(t)]) if t else torch.empty(0, k)
    weights = torch.softmax(torch.randn(t, k, generator=gen), -1)
    return [v.to(DEVICE) for v in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights)] + [ids.long().to(DEVICE)]


def _definition(x, w13, w2, weights, ids):
    """Each token on its own: sum over its slots of weight * down(silu(gate x) * up x), in float32."""
    inter = w13.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = (w13[e].float() @ x[t].float()).split(inter)
            out[t] += float(weights[t, j]) * (w2[e].float() @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("t,e,k,hidden,inter,used", [
    (1, 8, 2, 32, 16, None),  # one token: six experts empty
    (5, 8, 2, 48, 40, 3),  # five experts never routed to; H and I not multiples of the blocks
    (40, 4, 2, 32, 32, None),  # 80 pairs over 4 experts: more than one block of 16 per expert
    (7, 6, 1, 16, 16, None),  # top-1
])
def test_reference_is_the_definition(t, e, k, hidden, inter, used):
    x, w13, w2, weights, ids = _problem(t, e, k, hidden, inter, experts_used=used)
    torch.testing.assert_close(fused_moe_ref(x, w13, w2, weights, ids), _definition(x, w13, w2, weights, ids),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hidden,inter,used", [
    (1, 8, 2, 32, 16, None),
    (5, 8, 2, 48, 40, 3),
    (40, 4, 2, 32, 32, None),
    (7, 6, 1, 16, 16, None),
])
def test_kernel_matches_reference(dtype, t, e, k, hidden, inter, used):
    x, w13, w2, weights, ids = _problem(t, e, k, hidden, inter, dtype, seed=t, experts_used=used)
    out = fused_moe(x, w13, w2, weights, ids, config=SMALL)
    ref = fused_moe_ref(x, w13, w2, weights, ids)
    assert out.shape == x.shape and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_kernel_with_no_tokens():
    x, w13, w2, weights, ids = _problem(0, 4, 2, 16, 16)
    assert fused_moe(x, w13, w2, weights, ids, config=SMALL).shape == (0, 16)


def test_align_by_expert_groups_and_pads():
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEVICE)  # expert 1 empty
    pairs, block_expert = align_by_expert(ids, 4, 4)
    assert pairs.numel() % 4 == 0 and pairs.numel() == block_expert.numel() * 4
    seen = []
    for b, e in enumerate(block_expert.tolist()):
        block = [p for p in pairs[b * 4:(b + 1) * 4].tolist() if p < 6]
        if e < 0:
            assert not block
            continue
        assert all(int(ids.view(-1)[p]) == e for p in block)
        seen += block
    assert sorted(seen) == list(range(6))  # every pair exactly once
    assert 1 not in block_expert.tolist()  # no block for the empty expert


def test_rejects_mismatched_shapes():
    x, w13, w2, weights, ids = _problem(3, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="do not fit"):
        fused_moe_ref(x, w13, w2[:, :, :8], weights, ids)
    with pytest.raises(ValueError, match=r"\[T, k\]"):
        fused_moe(x, w13, w2, weights[:, :1], ids, config=SMALL)


@pytest.mark.parametrize("t", [1, 20])
def test_kernel_default_config_at_model_shapes(t):
    """The launcher's own block choice (blocks wider than these tiny H and I) at the test models' shapes."""
    x, w13, w2, weights, ids = _problem(t, 8, 2, 64, 32, seed=40 + t)
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids), fused_moe_ref(x, w13, w2, weights, ids),
                               atol=1e-4, rtol=1e-4)
