"""Per-step sampling tensors: each request's SamplingParams turned into batched device tensors."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from radixserve.core.transfer import tensor_on, to_device

from radixserve.sampling_params import SamplingParams

_U64 = (1 << 64) - 1


class SamplingRow(NamedTuple):
    """What the sampler needs to know about one request this step."""

    params: SamplingParams
    seed: int  # the request's seed (the scheduler draws one for unseeded requests)
    step: int  # index of the output token being sampled: 0 for the first
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    eos_ids: Sequence[int]
    vocab_mask: torch.Tensor | None = None  # [V] bool, True = allowed (grammar); None = all allowed
    logit_bias: torch.Tensor | None = None  # [V] float32 on the device (see logit_bias_row); None = no bias


class SamplingTensors(NamedTuple):
    """Batched sampling parameters of B rows over a vocabulary of V tokens."""

    temperatures: torch.Tensor  # [B] float32, 0 = greedy row
    top_ks: torch.Tensor  # [B] int64, V when off
    top_ps: torch.Tensor  # [B] float32, 1 when off
    min_ps: torch.Tensor  # [B] float32, 0 when off
    repetition_penalties: torch.Tensor  # [B] float32, 1 when off
    presence_penalties: torch.Tensor  # [B] float32
    frequency_penalties: torch.Tensor  # [B] float32
    seeds: torch.Tensor  # [B] int64
    steps: torch.Tensor  # [B] int64
    token_counts: torch.Tensor | None  # [B, V] float32 output-token counts; None when no row has presence/frequency
    seen_mask: torch.Tensor | None  # [B, V] bool prompt+output tokens; None when no row has repetition penalty
    vocab_mask: torch.Tensor | None  # [B, V] bool, True = allowed; None = all allowed
    min_tokens_block: torch.Tensor | None  # [B, V] bool, True = forbidden (EOS / stop ids before min_new_tokens)
    top_logprobs_k: int  # max over rows of requested alternatives; 0 = none
    want_logprobs: bool  # some row asked for logprobs
    need_filter: bool = True  # some sampled row uses top-k / top-p / min-p (host flag: skips the sort)
    all_greedy: bool = False  # every row is greedy (host flag: skips the noise)
    logit_bias: torch.Tensor | None = None  # [B, V] float32 added to the logits; None when no row has a bias
    token_bitmask: torch.Tensor | None = None  # [B, ceil(V/32)] int32 grammar masks (bit set = allowed); None = none
    typical_ps: torch.Tensor | None = None  # [B] float32, 1 when off; None when no row uses typical_p


def _as_int64(seed: int) -> int:
    """Any Python int -> the int64 with the same low 64 bits."""
    s = seed & _U64
    return s - (1 << 64) if s >= 1 << 63 else s


def _row_index_pairs(id_lists: Sequence[Sequence[int]], vocab_size: int, what: str,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten per-row id lists into (row index [N], token id [N]) int64 tensors on `device`."""
    rows: list[int] = []
    ids: list[int] = []
    for b, lst in enumerate(id_lists):
        rows.extend([b] * len(lst))
        ids.extend(lst)
    ids_t = torch.tensor(ids, dtype=torch.int64)
    if ids and (int(ids_t.min()) < 0 or int(ids_t.max()) >= vocab_size):
        raise ValueError(f"{what} contain a token id outside the vocabulary [0, {vocab_size}); "
                         "check that the tokenizer matches the model")
    return tensor_on(rows, torch.int64, device), to_device(ids_t, device)


def _mask_from_ids(id_lists: Sequence[Sequence[int]], vocab_size: int, what: str,
                   device: torch.device) -> torch.Tensor:
    rows, ids = _row_index_pairs(id_lists, vocab_size, what, device)
    mask = torch.zeros(len(id_lists), vocab_size, dtype=torch.bool, device=device)  # [B, V]
    # NOTE: a tensor value, not the scalar True: a scalar is copied from the host and syncs.
    mask[rows, ids] = torch.ones_like(ids, dtype=torch.bool)
    return mask


def logit_bias_row(bias: dict[int, float], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """A request's logit_bias as a dense [V] float32 tensor on `device`: built once per request
    (one host->device copy), then reused by every step that samples it."""
    if any(t >= vocab_size for t in bias):
        raise ValueError(f"logit_bias has token id {max(bias)} outside the vocabulary [0, {vocab_size})")
    dense = torch.zeros(vocab_size, dtype=torch.float32)  # [V]
    dense[torch.tensor(list(bias), dtype=torch.int64)] = torch.tensor(list(bias.values()), dtype=torch.float32)
    return to_device(dense, torch.device(device))


def greedy_blocked_ids(row: SamplingRow, vocab_size: int) -> list[int] | None:
    """For a greedy row without penalties, logit bias, logprobs or vocab mask, the ids it may not take this
    step (EOS under ignore_eos; EOS and stop ids before min_new_tokens): its next token is the
    argmax of the raw logits over the other ids, which needs no sampling tensors. None otherwise."""
    p = row.params
    if not (p.greedy and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0 and p.logprobs is None and row.vocab_mask is None
            and not p.logit_bias):
        return None
    return _blocked_ids(row, vocab_size)


def _blocked_ids(row: SamplingRow, vocab_size: int) -> list[int]:
    """EOS ids under ignore_eos or before min_new_tokens, stop ids before min_new_tokens."""
    ids: set[int] = set()
    early = len(row.output_ids) < row.params.min_new_tokens
    if row.params.ignore_eos or early:
        ids.update(row.eos_ids)
    if early:
        ids.update(row.params.stop_token_ids)
    return sorted(i for i in ids if i < vocab_size)  # ids past the vocab cannot be sampled anyway


def build_sampling_tensors(rows: Sequence[SamplingRow], vocab_size: int,
                           device: torch.device | str = "cpu",
                           token_bitmask: torch.Tensor | None = None) -> SamplingTensors:
    """Turn B rows into SamplingTensors on `device` (one host->device copy per tensor).
    `token_bitmask` [B, ceil(V/32)] int32, already on `device`: the rows' grammar masks."""
    device = torch.device(device)
    ps = [r.params for r in rows]
    greedy = [p.greedy for p in ps]

    def f32(values: list[float]) -> torch.Tensor:
        return tensor_on(values, torch.float32, device)

    def i64(values: list[int]) -> torch.Tensor:
        return tensor_on(values, torch.int64, device)

    top_ks = [vocab_size if p.top_k <= 0 else min(p.top_k, vocab_size) for p in ps]
    need_filter = any(not g and (k < vocab_size or p.top_p < 1.0 or p.min_p > 0.0 or p.typical_p < 1.0)
                      for g, k, p in zip(greedy, top_ks, ps))

    seen_mask = None
    if any(p.repetition_penalty != 1.0 for p in ps):
        seen_mask = _mask_from_ids([list(r.prompt_ids) + list(r.output_ids) for r in rows],
                                   vocab_size, "prompt/output ids", device)

    token_counts = None
    if any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in ps):
        rix, ids = _row_index_pairs([r.output_ids for r in rows], vocab_size, "output ids", device)
        token_counts = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)  # [B, V]
        token_counts.index_put_((rix, ids), torch.ones_like(ids, dtype=torch.float32), accumulate=True)

    vocab_mask = None
    if any(r.vocab_mask is not None for r in rows):
        vocab_mask = torch.ones(len(rows), vocab_size, dtype=torch.bool, device=device)  # [B, V]
        for b, r in enumerate(rows):
            if r.vocab_mask is not None:
                if tuple(r.vocab_mask.shape) != (vocab_size,) or r.vocab_mask.dtype != torch.bool:
                    raise ValueError(f"vocab_mask of row {b} must be a bool tensor of shape [{vocab_size}], "
                                     f"got {r.vocab_mask.dtype} {tuple(r.vocab_mask.shape)}")
                vocab_mask[b] = r.vocab_mask.to(device)

    logit_bias = None
    if any(r.params.logit_bias for r in rows):
        zeros = None
        parts = []
        for b, r in enumerate(rows):
            if not r.params.logit_bias:
                zeros = zeros if zeros is not None else torch.zeros(vocab_size, dtype=torch.float32, device=device)
                parts.append(zeros)
                continue
            bias = r.logit_bias
            if bias is None or tuple(bias.shape) != (vocab_size,) or bias.device.type != device.type:
                raise ValueError(f"row {b} has a logit_bias but no [{vocab_size}] tensor on {device}; "
                                 "build it once per request with logit_bias_row")
            parts.append(bias)
        # NOTE: a device-side stack of tensors already on the device: no host->device copy per step.
        logit_bias = torch.stack(parts)  # [B, V]

    blocked = [_blocked_ids(r, vocab_size) for r in rows]
    min_tokens_block = (_mask_from_ids(blocked, vocab_size, "eos/stop token ids", device)
                        if any(blocked) else None)

    return SamplingTensors(
        temperatures=f32([0.0 if g else p.temperature for g, p in zip(greedy, ps)]),
        top_ks=i64(top_ks),
        top_ps=f32([p.top_p for p in ps]),
        min_ps=f32([p.min_p for p in ps]),
        typical_ps=f32([p.typical_p for p in ps]) if any(p.typical_p < 1.0 for p in ps) else None,
        repetition_penalties=f32([p.repetition_penalty for p in ps]),
        presence_penalties=f32([p.presence_penalty for p in ps]),
        frequency_penalties=f32([p.frequency_penalty for p in ps]),
        seeds=i64([_as_int64(r.seed) for r in rows]),
        steps=i64([r.step for r in rows]),
        token_counts=token_counts,
        seen_mask=seen_mask,
        vocab_mask=vocab_mask,
        min_tokens_block=min_tokens_block,
        top_logprobs_k=max([p.logprobs or 0 for p in ps], default=0),
        want_logprobs=any(p.logprobs is not None for p in ps),
        need_filter=need_filter,
        all_greedy=all(greedy),
        logit_bias=logit_bias,
        token_bitmask=token_bitmask,
    )
