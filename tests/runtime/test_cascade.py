"""Cascade attention end to end: the scheduler groups decode rows sharing a cached system prompt,
every group it sends is true to the request table, and greedy outputs equal those with cascade
attention off (and transformers')."""
from __future__ import annotations

import pytest

from engine_fixtures import QUESTIONS, chat_ids, hf_greedy, hf_smollm2, make_engine
from radixserve import SamplingParams

GREEDY = SamplingParams(max_new_tokens=16, temperature=0)


def _check_groups(batch, table) -> None:
    """PrefixGroups semantics (core/prefix_groups.py) against the request table."""
    pg = batch.prefix_groups
    rows, seq = batch.req_rows.tolist(), batch.seq_lens.tolist()
    members, bounds = pg.group_rows.tolist(), pg.group_starts.tolist()
    row_prefix = pg.row_prefix_lens.tolist()
    assert batch.is_decode and len(bounds) == pg.num_groups + 1
    assert len(members) == len(set(members)), "a row is in two groups"
    for g, (p, lead) in enumerate(zip(pg.group_prefix_lens.tolist(), pg.group_table_rows.tolist())):
        group = members[bounds[g]:bounds[g + 1]]
        assert len(group) >= 2 and p >= 1
        for b in group:
            assert row_prefix[b] == p < seq[b]
            assert table[rows[b], :p].tolist() == table[lead, :p].tolist()
    assert all(row_prefix[b] == 0 for b in range(len(rows)) if b not in members)
    assert pg.max_group_size == max(bounds[g + 1] - bounds[g] for g in range(pg.num_groups))
    assert pg.max_prefix_len == max(pg.group_prefix_lens.tolist())


def _run(engine, prompts):
    seen = []
    forward = engine.scheduler.forward

    def checked(batch):
        if batch.prefix_groups is not None:
            _check_groups(batch, engine.runner.req_table.table)
            seen.append(batch.prefix_groups.num_groups)
        return forward(batch)

    engine.scheduler.forward = checked
    try:
        return [o.token_ids for o in engine.generate(input_ids=prompts, sampling_params=GREEDY)], seen
    finally:
        engine.scheduler.forward = forward


VARIANTS = {"cascade": dict(), "off": dict(cascade_attention=False),
            "plain": dict(cascade_attention=False, fused_ops=False)}  # + no KV mirror, below


@pytest.fixture(scope="module")
def outputs():
    from radixserve.runtime.attention.torch_native import TorchNativeBackend

    results = {}
    for name, options in VARIANTS.items():
        e = make_engine(**options)
        if name == "plain":  # a mirror without budget: decode gathers K/V from the pool every step
            e.runner.attn = TorchNativeBackend(e.runner.pool, e.runner.req_table, mirror_max_bytes=0)
        try:
            prompts, eos = [chat_ids(e, q) for q in QUESTIONS], e.eos_ids
            results[name] = _run(e, prompts)
            e.check_integrity()
        finally:
            e.shutdown()
    return prompts, eos, results


def test_groups_are_formed_and_true(outputs):
    *_, results = outputs
    _, seen = results["cascade"]
    assert seen and max(seen) >= 1  # the decode steps of the 8 requests shared the system prompt
    assert results["off"][1] == [] == results["plain"][1]  # off: no batch carries groups


def test_cascade_on_equals_off(outputs):
    *_, results = outputs
    assert results["cascade"][0] == results["off"][0]


def test_mirror_and_fused_ops_do_not_change_outputs(outputs):
    *_, results = outputs
    assert results["plain"][0] == results["off"][0]


def test_cascade_matches_transformers(outputs):
    prompts, eos, results = outputs
    hf = hf_smollm2()
    for ids, got in list(zip(prompts, results["cascade"][0]))[:2]:
        expected = hf_greedy(hf, ids, GREEDY.max_new_tokens, eos)
        assert got == expected


def test_grouping_options_are_validated():
    from radixserve import EngineConfig

    with pytest.raises(ValueError, match="cascade_min_group_size"):
        EngineConfig(cascade_min_group_size=1)
    with pytest.raises(ValueError, match="cascade_min_prefix_len"):
        EngineConfig(cascade_min_prefix_len=0)
