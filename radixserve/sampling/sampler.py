"""Batched sampling on the device: penalties, masks, temperature, top-k/top-p/min-p, draw.

Pipeline per row (vLLM / OpenAI conventions):
  1. penalties on the raw logits: repetition (seen prompt+output tokens: positive logits divided,
     negative multiplied), presence (minus p once per present output token), frequency (minus
     f x count); then each request's logit_bias added; then forbidden tokens (min_new_tokens /
     ignore_eos block, vocab_mask, the grammar's packed token bitmask) set to -inf;
  2. greedy rows (temperature 0 or top_k 1) take the argmax of these logits;
  3. other rows: divide by temperature, keep the top-k, then the smallest prefix (by probability,
     renormalised over the top-k) whose mass reaches top_p, then drop tokens with probability
     below min_p x the largest probability, and (typical_p < 1) outside the locally typical set;
     draw with the exponential race
     argmax(log p - log E), E ~ Exp(1) from a counter-based hash of (seed, step, token).
No host sync happens inside; the Python branches test host flags and None-ness only.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from radixserve.core.transfer import tensor_on
from radixserve.sampling.bitmask import apply_token_bitmask

from radixserve.sampling.logprobs import raw_logprobs
from radixserve.sampling.noise import gumbel_noise
from radixserve.sampling.tensors import SamplingTensors


class SampleResult(NamedTuple):
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] float32: sampled token under log_softmax of the raw logits
    top_ids: torch.Tensor | None  # [B, k] int64, best first (k = top_logprobs_k)
    top_logprobs: torch.Tensor | None  # [B, k] float32


def penalized_logits(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """logits [B, V] -> [B, V] float32 after penalties and masks (forbidden tokens at -inf)."""
    x = logits.to(torch.float32)
    if t.seen_mask is not None:
        rp = t.repetition_penalties[:, None]  # [B, 1]
        x = torch.where(t.seen_mask, torch.where(x > 0, x / rp, x * rp), x)
    if t.token_counts is not None:
        counts = t.token_counts  # [B, V]
        x = x - t.frequency_penalties[:, None] * counts - t.presence_penalties[:, None] * (counts > 0)
    if t.logit_bias is not None:
        x = x + t.logit_bias  # [B, V]
    if t.min_tokens_block is not None:
        x = x.masked_fill(t.min_tokens_block, float("-inf"))
    if t.vocab_mask is not None:
        x = x.masked_fill(~t.vocab_mask, float("-inf"))
    if t.token_bitmask is not None:
        if x is logits:
            x = x.clone()  # NOTE: in place below; the raw logits stay intact for logprobs
        apply_token_bitmask(x, t.token_bitmask)
    return x


def filtered_logits(x: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """Penalised logits [B, V] -> temperature-scaled logits [B, V] with filtered-out tokens at -inf.

    Greedy rows are scaled by 1 (their temperature 0 is replaced) and filtered like the others;
    callers pick their argmax separately.
    """
    greedy = t.temperatures == 0  # [B]
    temp = torch.where(greedy, torch.ones_like(t.temperatures), t.temperatures)
    x = x / temp[:, None]  # [B, V]
    if not t.need_filter:
        return x
    vocab = x.shape[-1]
    sorted_x, order = torch.sort(x, dim=-1, descending=True, stable=True)  # [B, V]
    ranks = torch.arange(vocab, device=x.device)[None, :]  # [1, V]
    keep = ranks < t.top_ks[:, None]  # [B, V] top-k, in sorted order
    probs = torch.softmax(sorted_x.masked_fill(~keep, float("-inf")), dim=-1)  # renormalised over top-k
    mass_before = probs.cumsum(dim=-1) - probs  # [B, V] exclusive prefix sum
    keep &= mass_before < t.top_ps[:, None]  # smallest prefix reaching top_p; rank 0 always kept
    keep &= probs >= t.min_ps[:, None] * probs[:, :1]  # min-p relative to the most likely token
    keep_vocab = torch.zeros_like(keep).scatter_(1, order, keep)  # back to vocabulary order
    if t.typical_ps is not None:
        keep_vocab &= typical_keep(x, t.typical_ps)
    return x.masked_fill(~keep_vocab, float("-inf"))


def typical_keep(x: torch.Tensor, typical_ps: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling over temperature-scaled logits x [B, V]: keep the tokens whose
    surprise -log p is closest to the entropy, fewest first, until their mass reaches typical_p
    (the token that crosses it included; at least one) -> [B, V] bool. Rows at 1.0 keep all."""
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).nan_to_num().sum(-1, keepdim=True)  # [B, 1]; -inf * 0 is nan
    distance = (-logp - entropy).abs()  # [B, V]
    d_sorted, order = torch.sort(distance, dim=-1, stable=True)
    mass_before = p.gather(1, order).cumsum(-1) - p.gather(1, order)  # exclusive prefix sum, in that order
    keep_sorted = mass_before < typical_ps[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return keep | (typical_ps >= 1.0)[:, None]


def processed_probs(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """The distribution each row samples from, [B, V] float32; greedy rows are one-hot."""
    x = penalized_logits(logits, t)
    probs = torch.softmax(filtered_logits(x, t), dim=-1)  # [B, V]
    one_hot = torch.zeros_like(probs).scatter_(1, x.argmax(dim=-1, keepdim=True), 1.0)
    return torch.where((t.temperatures == 0)[:, None], one_hot, probs)


def greedy_argmax(logits: torch.Tensor, blocked: Sequence[Sequence[int]]) -> torch.Tensor:
    """Greedy rows without penalties: the argmax of each row of logits [B, V] over the ids not in
    its `blocked` list (see greedy_blocked_ids) -> [B] int64, as `sample` would pick.

    NOTE: writes -inf into `logits` where ids are blocked (pass a tensor of your own).
    """
    if any(blocked):
        if all(b == blocked[0] for b in blocked):  # the usual case: every row blocks the same EOS ids
            logits.index_fill_(1, tensor_on(blocked[0], torch.int64, logits.device), float("-inf"))
        else:
            rows = tensor_on([i for i, b in enumerate(blocked) for _ in b], torch.int64, logits.device)
            ids = tensor_on([t for b in blocked for t in b], torch.int64, logits.device)
            # NOTE: a tensor value, not a scalar: a scalar is copied from the host and syncs.
            logits.index_put_((rows, ids), torch.full_like(ids, float("-inf"), dtype=logits.dtype))
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, t: SamplingTensors) -> SampleResult:
    """Draw one token per row of logits [B, V] (float32 raw model logits)."""
    x = penalized_logits(logits, t)  # [B, V]
    greedy_ids = x.argmax(dim=-1)  # [B]
    if t.all_greedy:
        token_ids = greedy_ids
    else:
        noisy = filtered_logits(x, t) + gumbel_noise(t.seeds, t.steps, x.shape[-1])  # [B, V]
        token_ids = torch.where(t.temperatures == 0, greedy_ids, noisy.argmax(dim=-1))
    if not t.want_logprobs:
        return SampleResult(token_ids, None, None, None)
    raw = raw_logprobs(logits)  # [B, V]
    lp = raw.gather(1, token_ids[:, None]).squeeze(1)  # [B]
    if t.top_logprobs_k <= 0:
        return SampleResult(token_ids, lp, None, None)
    top_lps, top_ids = raw.topk(t.top_logprobs_k, dim=-1)  # [B, k], sorted best first
    return SampleResult(token_ids, lp, top_ids, top_lps)
