"""Turn the rows chosen for one step into a ForwardBatch."""
from __future__ import annotations

from typing import NamedTuple

import torch

from radixserve.core.forward_batch import ForwardBatch
from radixserve.core.prefix_groups import PrefixGroups
from radixserve.core.transfer import tensor_on
from radixserve.scheduler.prefix_grouping import Group, GroupingOptions, group_by_prefix
from radixserve.scheduler.request import Request


class Row(NamedTuple):
    req: Request
    extend_len: int  # tokens computed for this request in this step (1 for decode)


class LogitsPlan(NamedTuple):
    """Which logits rows belong to what: sampling rows and prompt-logprob spans."""

    sample_rows: list[int]  # indices into rows of requests that sample a next token
    sample_logits: list[int]  # their positions in the logits tensor
    prompt_spans: list[tuple[int, int, int, int]]  # (row, first logits pos, count, first target position)
    pending_inputs: list[tuple[int, Request]]  # (token index, request): input is its pending device sample
    verify_rows: list[tuple[int, int, int]]  # (row, first logits pos, count) of rows verifying a draft


def build(rows: list[Row], device: torch.device,
          grouping: GroupingOptions | None = None) -> tuple[ForwardBatch, LogitsPlan]:
    """The step's ForwardBatch; with `grouping`, a decode-only batch also gets its PrefixGroups."""
    ids: list[int] = []
    pos: list[int] = []
    out_slots: list[int] = []
    starts, logits_idx = [], []
    plan = LogitsPlan([], [], [], [], [])
    for i, (req, ext) in enumerate(rows):
        start, kv = len(ids), req.kv.kv_len
        draft = req.decode.draft  # fed after the known tokens; every position's logits verify it
        known = req.fill_slice(kv, kv + ext - len(draft))
        ids.extend(known)
        if len(known) < ext - len(draft):  # NOTE: only a decode row's single input can still be on the device
            assert ext == 1 and req.decode.pending == 1, (req.rid, ext, req.decode.pending)
            plan.pending_inputs.append((len(ids), req))
            ids.append(0)  # placeholder, filled on the device from the previous step's samples
        ids.extend(draft)
        pos.extend(range(kv, kv + ext))
        out_slots.extend(req.kv.slots[kv:kv + ext])
        starts.append(start)
        first, last = _prompt_logprob_positions(req, kv, ext)
        if first <= last:
            plan.prompt_spans.append((i, len(logits_idx), last - first + 1, first + 1))
            logits_idx.extend(range(start + first - kv, start + last - kv + 1))
        if draft:
            plan.verify_rows.append((i, len(logits_idx), ext))
            logits_idx.extend(range(start, start + ext))
        elif kv + ext == req.seq_len + req.decode.pending:
            plan.sample_rows.append(i)
            plan.sample_logits.append(len(logits_idx))
            logits_idx.append(start + ext - 1)
    ext_lens = [ext for _, ext in rows]
    seq_lens = [req.kv.kv_len + ext for req, ext in rows]
    is_decode = all(e == 1 for e in ext_lens)
    groups = group_by_prefix([req.kv for req, _ in rows], grouping) if grouping is not None and is_decode else []

    # NOTE: one host->device copy for the whole batch; the fields are views into it.
    parts = [ids, pos, out_slots, [req.kv.row for req, _ in rows], seq_lens, ext_lens, starts, logits_idx]
    if groups:
        parts += _group_parts(groups, rows)
    flat = tensor_on([x for part in parts for x in part], torch.int64, device)
    f = flat.split([len(part) for part in parts])
    prefix_groups = None
    if groups:
        prefix_groups = PrefixGroups(*f[8:13], max_group_size=max(len(g.rows) for g in groups),
                                     max_prefix_len=max(g.prefix_len for g in groups))
    batch = ForwardBatch(
        input_ids=f[0], positions=f[1], out_slots=f[2], req_rows=f[3], seq_lens=f[4], extend_lens=f[5],
        extend_starts=f[6], logits_indices=f[7],
        max_seq_len=max(seq_lens), max_extend_len=max(ext_lens), is_decode=is_decode, prefix_groups=prefix_groups)
    return batch, plan


def _group_parts(groups: list[Group], rows: list[Row]) -> list[list[int]]:
    """PrefixGroups' five tensors as lists, in its field order."""
    row_prefix = [0] * len(rows)
    members: list[int] = []
    bounds = [0]
    for g in groups:
        for r in g.rows:
            row_prefix[r] = g.prefix_len
        members += g.rows
        bounds.append(len(members))
    # NOTE: any member's table row holds the prefix slots; the first keeps it stable across steps.
    return [row_prefix, members, bounds, [g.prefix_len for g in groups], [rows[g.rows[0]].req.kv.row for g in groups]]


def _prompt_logprob_positions(req: Request, kv: int, ext: int) -> tuple[int, int]:
    """Positions p in [kv, kv+ext) whose logits give a still-missing prompt logprob of token p+1."""
    start = req.logprob_start()
    if start is None:
        return 0, -1
    first = max(kv, start - 1 + len(req.prompt_logprobs))
    last = min(kv + ext - 1, len(req.prompt_ids) - 2)
    return first, last
