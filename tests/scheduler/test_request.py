"""Request's parts: token views over prompt + output, and the KV placement's asserted invariants."""
from __future__ import annotations

import pytest

from radixserve.sampling_params import SamplingParams
from radixserve.scheduler.request import KVPlacement, Request


def test_fill_slice_and_todo_against_the_concatenation() -> None:
    r = Request(rid="a", prompt_ids=[1, 2, 3], params=SamplingParams(), seed=0)
    r.output_ids += [4, 5]
    whole = r.prompt_ids + r.output_ids
    for start in range(len(whole) + 1):
        for end in range(start, len(whole) + 1):
            assert r.fill_slice(start, end) == whole[start:end]
    r.kv.kv_len, r.decode.pending = 4, 1
    assert r.todo == len(whole) + 1 - 4 and r.prefill_done


@pytest.mark.parametrize("placement", [
    KVPlacement(row=0, slots=[0, 1], kv_len=3, tree_len=0, node=object()),  # more computed than allocated
    KVPlacement(row=0, slots=[0, 1, 2, 3], kv_len=1, tree_len=2, node=object()),  # tree part not computed
    KVPlacement(row=0, slots=[0, 1, 2], kv_len=2, tree_len=0, node=object()),  # not whole pages
    KVPlacement(row=0, slots=[], kv_len=0, tree_len=0, node=None),  # a row but no lock
])
def test_placement_check_catches_broken_invariants(placement: KVPlacement) -> None:
    with pytest.raises(AssertionError):
        placement.check(page_size=2)


def test_placement_check_accepts_a_consistent_placement() -> None:
    KVPlacement(row=0, slots=[0, 1, 2, 3], kv_len=3, tree_len=2, node=object()).check(page_size=2)
    KVPlacement().check(page_size=2)  # waiting: nothing placed
