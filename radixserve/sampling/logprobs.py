"""Log-probabilities under the model's raw distribution (before penalties or temperature)."""
from __future__ import annotations

from typing import Sequence

import torch

from radixserve.outputs import TokenLogprob


def raw_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, V] -> log_softmax [N, V] computed in float32."""
    return torch.log_softmax(logits.to(torch.float32), dim=-1)


def prompt_logprobs(logits: torch.Tensor, next_ids: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprob of each actual next token and the top-k alternatives.

    logits [N, V] at N positions, next_ids [N] int64 (the token that follows each position)
    -> (logprobs [N] float32, top_ids [N, k] int64, top_lps [N, k] float32), best first.
    """
    if logits.dim() != 2 or next_ids.shape != logits.shape[:1]:
        raise ValueError(f"prompt_logprobs wants logits [N, V] and next_ids [N], "
                         f"got {tuple(logits.shape)} and {tuple(next_ids.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    lps = raw_logprobs(logits)  # [N, V]
    chosen = lps.gather(1, next_ids.to(torch.int64)[:, None]).squeeze(1)  # [N]
    top_lps, top_ids = lps.topk(min(k, lps.shape[-1]), dim=-1)  # [N, k]
    return chosen, top_ids, top_lps


def to_token_logprobs(token_ids: torch.Tensor | Sequence[int], logprobs: torch.Tensor,
                      top_ids: torch.Tensor | None = None, top_lps: torch.Tensor | None = None,
                      ks: Sequence[int] | int = 0) -> list[TokenLogprob]:
    """Tensors of N positions -> N TokenLogprob (one host copy per tensor).

    token_ids [N], logprobs [N], top_ids/top_lps [N, k] or None; ks: alternatives wanted per
    position (one int for all, or N ints, each <= k), so rows of one batch can ask for fewer.
    """
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    lps = logprobs.tolist()
    n = len(ids)
    per_row = [ks] * n if isinstance(ks, int) else list(ks)
    if len(lps) != n or len(per_row) != n:
        raise ValueError(f"to_token_logprobs got {n} token ids, {len(lps)} logprobs and {len(per_row)} ks")
    if top_ids is None or top_lps is None:
        if any(per_row):
            raise ValueError("top alternatives were asked for (ks > 0) but top_ids/top_lps are None")
        return [TokenLogprob(i, lp) for i, lp in zip(ids, lps)]
    if any(k > top_ids.shape[-1] for k in per_row):
        raise ValueError(f"asked for up to {max(per_row)} alternatives but only {top_ids.shape[-1]} were computed")
    tid, tlp = top_ids.tolist(), top_lps.tolist()
    return [TokenLogprob(i, lp, list(zip(tid[r][:k], tlp[r][:k])))
            for r, (i, lp, k) in enumerate(zip(ids, lps, per_row))]
