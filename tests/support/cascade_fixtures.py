"""Greedy decoding straight through a ModelRunner, with rows that share a cached prefix, and the
PrefixGroups a scheduler would hand over for them (imported, not collected).

Row 0 prefills the shared prefix and its own suffix; every other row finds the prefix cached (its
request-table row holds the same slots) and computes only its suffix; then all rows decode
greedily together. With `groups`, every decode batch says which rows share the prefix, so a
cascade backend reads it once per step; without, each row reads its whole context.
"""
from __future__ import annotations

import torch

from radixserve.cache.allocator import PageAllocator
from radixserve.core.forward_batch import ForwardBatch
from radixserve.core.prefix_groups import PrefixGroups


def _t(xs, device) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int64, device=device)


def greedy_shared_prefix(runner, prefix_len: int, suffix_lens: list[int], steps: int, groups: bool,
                         seed: int = 0, lone_rows: int = 1) -> tuple[list[list[int]], list[torch.Tensor]]:
    """-> (greedy tokens per row, logits [B, V] of each decode step).

    The last `lone_rows` rows share nothing (a distinct prompt of prefix_len + suffix tokens), so
    they are in no group. Slots come from an allocator over the runner's pool, in shuffled order.
    """
    dev = runner.device
    gen = torch.Generator().manual_seed(seed)
    n = len(suffix_lens)
    vocab = min(runner.vocab_size, 40000)
    prefix = torch.randint(3, vocab, (prefix_len,), generator=gen).tolist()
    prompts = [(torch.randint(3, vocab, (prefix_len,), generator=gen).tolist() if i >= n - lone_rows else prefix)
               + torch.randint(3, vocab, (s,), generator=gen).tolist() for i, s in enumerate(suffix_lens)]
    total = prefix_len * (1 + lone_rows) + sum(suffix_lens) + n * steps
    pool = PageAllocator(runner.num_pages, 1).alloc(total)  # the runners here have page size 1
    pool = pool[torch.randperm(total, generator=gen)].tolist()
    shared_slots = [pool.pop() for _ in range(prefix_len)]
    rows = [runner.req_table.alloc() for _ in range(n)]
    slots = []
    for i, p in enumerate(prompts):
        own = [pool.pop() for _ in range(len(p) - prefix_len + steps)]
        mine = ([pool.pop() for _ in range(prefix_len)] if i >= n - lone_rows else shared_slots) + own
        slots.append(mine)
        runner.req_table.write(rows[i], 0, torch.tensor(mine))

    def extend(batch_rows: list[int], starts: list[int]) -> torch.Tensor:
        ids, pos, out, ext, ext_starts, last = [], [], [], [], [], []
        for i, s in zip(batch_rows, starts):
            ext_starts.append(len(ids))
            ids += prompts[i][s:]
            pos += range(s, len(prompts[i]))
            out += slots[i][s:len(prompts[i])]
            ext.append(len(prompts[i]) - s)
            last.append(len(ids) - 1)
        batch = ForwardBatch(
            input_ids=_t(ids, dev), positions=_t(pos, dev), out_slots=_t(out, dev),
            req_rows=_t([rows[i] for i in batch_rows], dev), seq_lens=_t([len(prompts[i]) for i in batch_rows], dev),
            extend_lens=_t(ext, dev), extend_starts=_t(ext_starts, dev), logits_indices=_t(last, dev),
            max_seq_len=max(len(prompts[i]) for i in batch_rows), max_extend_len=max(ext), is_decode=False)
        return runner.forward(batch)

    # row 0 writes the shared prefix first; then the others, whose prefix (if shared) is cached
    first = extend([0], [0])
    rest = extend(list(range(1, n)), [prefix_len if i < n - lone_rows else 0 for i in range(1, n)])
    tokens = [[int(x)] for x in torch.cat([first, rest]).argmax(-1).tolist()]
    members = list(range(n - lone_rows))
    prefix_groups = PrefixGroups(
        row_prefix_lens=_t([prefix_len if i in members else 0 for i in range(n)], dev),
        group_rows=_t(members[::-1], dev), group_starts=_t([0, len(members)], dev),
        group_prefix_lens=_t([prefix_len], dev), group_table_rows=_t([rows[members[-1]]], dev),
        max_group_size=len(members), max_prefix_len=prefix_len) if groups and len(members) >= 2 else None
    all_logits = []
    for step in range(steps):
        pos = [len(p) + step for p in prompts]
        batch = ForwardBatch(
            input_ids=_t([t[-1] for t in tokens], dev), positions=_t(pos, dev),
            out_slots=_t([slots[i][p] for i, p in enumerate(pos)], dev), req_rows=_t(rows, dev),
            seq_lens=_t([p + 1 for p in pos], dev), extend_lens=_t([1] * n, dev), extend_starts=_t(range(n), dev),
            logits_indices=_t(range(n), dev), max_seq_len=max(pos) + 1, max_extend_len=1, is_decode=True,
            prefix_groups=prefix_groups)
        logits = runner.forward(batch)
        all_logits.append(logits)
        for t, x in zip(tokens, logits.argmax(-1).tolist()):
            t.append(int(x))
    return tokens, all_logits
