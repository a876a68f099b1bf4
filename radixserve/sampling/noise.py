"""Counter-based random numbers for sampling: a pure function of (seed, step, token index).

No generator state: the noise of a row depends only on its own seed and step, so a request
samples the same tokens whichever requests share its batch, in whatever order, and after it
was retracted and re-admitted. Everything is int64 tensor arithmetic (no overflow: 32-bit
products are split into 16-bit halves), so CPU and GPU produce the same bits.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_STEP_SALT = 0x85EBCA6B
_TOKEN_SALT = 0xC2B2AE35


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) int64, without int64 overflow."""
    if c < 1 << 31:
        return (x * c) & _M32  # < 2**63
    # c = 2**31 + c_low: x * 2**31 mod 2**32 keeps only the lowest bit of x
    return (x * (c - (1 << 31)) + ((x & 1) << 31)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (Wellons' lowbias32) on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """seeds [B] int64 (any 64-bit value), steps [B] int64 -> keys [B] int64 in [0, 2**32)."""
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32  # arithmetic shift, then mask: the high 32 bits of the two's complement
    k = mix32(lo ^ _GOLDEN)
    k = mix32(k ^ hi)
    return mix32(k ^ mix32((steps & _M32) ^ _STEP_SALT))


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform (0, 1) float32 noise [B, V]; element [b, i] is a function of (seeds[b], steps[b], i)."""
    keys = row_keys(seeds, steps)[:, None]  # [B, 1]
    keys2 = mix32(keys ^ _TOKEN_SALT)  # [B, 1]
    tok = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)[None, :]  # [1, V]
    h = mix32(mix32(tok ^ keys) ^ keys2)  # [B, V] in [0, 2**32)
    # top 24 bits, centred: k + 0.5 over 2**24. NOTE: for the largest k that is 1 - 2**-25, which
    # float32 rounds to exactly 1.0; Gumbel noise would then be +inf and win over any logit, even a
    # masked (-inf: NaN) one. Clamp it to the largest float32 below 1.
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return u.clamp_(max=1.0 - 2.0 ** -24)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise [B, V] float32: -log(E) with E ~ Exp(1) from `uniform_noise`.

    argmax(log p + gumbel) = argmax(p / E) draws a token with probability p (exponential race).
    """
    u = uniform_noise(seeds, steps, vocab_size)  # [B, V]
    return -torch.log(-torch.log(u))
