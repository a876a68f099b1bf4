"""Stop conditions: token reasons, stop strings across token boundaries, held-back text,
against a brute-force scan of every end position (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.sampling import StopChecker, StopStringBuffer

EOS = [2]


# ---------------------------------------------------------------- stop handling


def test_check_token_reasons() -> None:
    c = StopChecker([], stop_token_ids=[9], eos_ids=[2], ignore_eos=False, max_new_tokens=4, min_new_tokens=1)
    assert c.check_token(2, 1) is None  # EOS before min_new_tokens is reached does not count
    assert c.check_token(5, 2) is None
    assert c.check_token(9, 3) == "stop" and c.matched_stop == 9
    assert c.check_token(5, 4) == "length"
    assert c.check_token(2, 4) == "stop"  # EOS as the last allowed token: "stop" wins
    c2 = StopChecker([], [], eos_ids=[2], ignore_eos=True, max_new_tokens=3)
    assert c2.check_token(2, 1) is None and c2.check_token(2, 3) == "length"


def test_stop_string_across_token_boundaries_is_cut_and_held_back() -> None:
    b = StopStringBuffer(["</answer>"])
    assert b.feed("The result is 4") == ("The result is 4", None)
    assert b.feed(" </an") == (" ", None)  # "</an" could start the stop string: held
    assert b.pending == "</an"
    assert b.feed("sw") == ("", None)
    assert b.feed("er> and more") == ("", "</answer>")
    assert b.feed("later text") == ("", None)  # text after a stop is dropped


def test_held_text_released_when_it_cannot_be_a_stop() -> None:
    b = StopStringBuffer(["STOP"])
    assert b.feed("ab ST") == ("ab ", None)
    assert b.feed("OOP") == ("STOOP", None)
    assert b.feed("x S") == ("x ", None)
    assert b.flush() == "S"  # request ended for another reason: held text is emitted


def test_multiple_stop_strings_earliest_wins() -> None:
    b = StopStringBuffer(["world", "lo w", "xyz"])
    assert b.feed("hello world") == ("hel", "lo w")
    b = StopStringBuffer(["b", "abc"])
    assert b.feed("xxabc") == ("xxa", "b")  # "b" completes before "abc"
    b = StopStringBuffer(["ab", "abc"])
    assert b.feed("zabc") == ("z", "ab")


def test_stop_at_very_start() -> None:
    c = StopChecker(["\n\n"], [], [2], False, 10)
    assert c.check_text("\n") == ("", None)
    assert c.check_text("\nHello") == ("", "stop")
    assert c.matched_stop == "\n\n"


def ref_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The stop whose match ends earliest (ties: longest), by scanning every end position."""
    for end in range(1, len(text) + 1):
        for s in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(s):
                return text[:end - len(s)], s
    return text, None


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc \n", max_size=30),
       stops=st.lists(st.text(alphabet="abc \n", min_size=1, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_buffer_matches_reference_for_any_split(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    want = ref_stop(text, stops)
    b = StopStringBuffer(stops)
    out, matched = "", None
    for lo, hi in zip(bounds, bounds[1:]):
        piece, matched = b.feed(text[lo:hi])
        out += piece
        # what the client has seen is always a prefix of the final text: no partial stop shown
        assert want[0].startswith(out), (out, want)
        if matched is not None:
            break
    if matched is None:
        out += b.flush()
    assert (out, matched) == want
