"""PageAllocator: page-aligned slot handout, exhaustion, double-free detection."""
import random

import pytest
import torch

from radixserve.cache.allocator import PageAllocator


def pages_of(slots: torch.Tensor, page_size: int) -> list[int]:
    return sorted(set((slots // page_size).tolist()))


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_alloc_hands_out_whole_aligned_pages_never_page_zero(page_size):
    a = PageAllocator(num_pages=8, page_size=page_size)
    assert a.capacity == a.num_free_slots == 8 * page_size
    slots = a.alloc(3)
    assert slots.dtype == torch.int64 and slots.shape == (3 * page_size,)
    by_page = slots.view(3, page_size)
    for row in by_page.tolist():
        assert row[0] % page_size == 0
        assert row == list(range(row[0], row[0] + page_size))
        assert row[0] // page_size != 0
    assert a.num_free_slots == 5 * page_size
    rest = a.alloc(5)
    everything = torch.cat([slots, rest]).tolist()
    assert sorted(everything) == list(range(page_size, 9 * page_size))  # pages 1..8, page 0 absent
    assert a.num_free_slots == 0


def test_alloc_too_many_returns_none_and_takes_nothing():
    a = PageAllocator(num_pages=4, page_size=2)
    assert a.alloc(3) is not None
    assert a.alloc(2) is None
    assert a.num_free_slots == 2
    assert a.alloc(1) is not None
    assert a.alloc(1) is None
    assert a.alloc(0).numel() == 0


def test_free_returns_pages_and_they_are_reused():
    a = PageAllocator(num_pages=4, page_size=4)
    s = a.alloc(4)
    a.free(s[4:12])  # pages 2 and 3 of the handout
    assert a.num_free_slots == 8
    again = a.alloc(2)
    assert pages_of(again, 4) == pages_of(s[4:12], 4)


def test_double_free_raises_and_changes_nothing():
    a = PageAllocator(num_pages=4, page_size=2)
    s = a.alloc(2)
    a.free(s[:2])
    with pytest.raises(ValueError, match="double free"):
        a.free(s[:2])
    with pytest.raises(ValueError, match="double free"):
        a.free(s)  # one page free, one not: nothing may change
    assert a.num_free_slots == 6
    with pytest.raises(ValueError, match="double free"):
        a.free(torch.cat([s[2:], s[2:]]))  # same page twice in one call
    assert a.num_free_slots == 6
    a.free(s[2:])
    assert a.num_free_slots == 8


def test_free_rejects_partial_misaligned_and_out_of_range_pages():
    a = PageAllocator(num_pages=4, page_size=4)
    s = a.alloc(2)
    with pytest.raises(ValueError, match="whole pages"):
        a.free(s[:3])
    with pytest.raises(ValueError, match="whole pages"):
        a.free(s[1:5])
    with pytest.raises(ValueError, match="whole pages"):
        a.free(torch.tensor([4, 5, 7, 6]))
    with pytest.raises(ValueError, match="reserved"):
        a.free(torch.arange(0, 4))
    with pytest.raises(ValueError, match="out of range"):
        a.free(torch.arange(20, 24))
    with pytest.raises(ValueError, match="int64"):
        a.free(s.to(torch.int32))
    assert a.num_free_slots == 8


def test_reset_frees_everything():
    a = PageAllocator(num_pages=5, page_size=1)
    a.alloc(5)
    a.reset()
    assert a.num_free_slots == 5
    assert sorted(a.alloc(5).tolist()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("page_size", [1, 4])
def test_random_alloc_free_matches_set_model(page_size):
    rng = random.Random(0)
    num_pages = 50
    a = PageAllocator(num_pages, page_size)
    held: list[torch.Tensor] = []
    for _ in range(400):
        if held and rng.random() < 0.45:
            a.free(held.pop(rng.randrange(len(held))))
        else:
            n = rng.randint(0, 8)
            free_before = a.num_free_slots
            s = a.alloc(n)
            if n * page_size > free_before:
                assert s is None and a.num_free_slots == free_before
            else:
                held.append(s)
        owned = torch.cat(held).tolist() if held else []
        assert len(owned) == len(set(owned)), "a slot was handed out twice"
        assert a.num_free_slots + len(owned) == a.capacity
        if owned:
            assert not a.is_free(torch.tensor(owned)).any()
