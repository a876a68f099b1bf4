"""Stop conditions: token reasons, stop strings across token boundaries, held-back text,
against a brute-force scan of every end position (hypothesis); the text side's decision
(RequestText.feed), the same whether tokens come one at a time (in process) or in batches
(the split server's front end)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.engine.text import RequestText
from radixserve.sampling import StopChecker, StopStringBuffer

EOS = [2]


# ---------------------------------------------------------------- stop handling


def test_check_token_reasons() -> None:
    c = StopChecker(stop_token_ids=[9], eos_ids=[2], ignore_eos=False, max_new_tokens=4, min_new_tokens=1)
    assert c.check_token(2, 1) is None  # EOS before min_new_tokens is reached does not count
    assert c.check_token(5, 2) is None
    assert c.check_token(9, 3) == "stop" and c.matched_stop == 9
    assert c.check_token(5, 4) == "length"
    assert c.check_token(2, 4) == "stop"  # EOS as the last allowed token: "stop" wins
    c2 = StopChecker([], eos_ids=[2], ignore_eos=True, max_new_tokens=3)
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


class CharTokenizer:
    """Token id = a character's code point: text and tokens line up one to one."""

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(map(chr, ids))


def request_text(stop: list[str]) -> RequestText:
    return RequestText(CharTokenizer(), [], True, stop)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_stop_at_very_start() -> None:
    t = request_text(["\n\n"])
    assert t.feed(ids("\n"), None) == ("", 1, None)
    assert t.feed(ids("\nHello"), None) == ("", 1, "\n\n")  # ends at the token completing the stop


def test_feed_keeps_tokens_up_to_the_stop_and_drops_the_rest() -> None:
    t = request_text(["</a>"])
    assert t.feed(ids("x</"), None) == ("x", 3, None)
    assert t.feed(ids("a>yz"), "length") == ("", 2, "</a>")  # a stop string wins over a token-level reason


def test_token_level_reason_releases_held_text() -> None:
    t = request_text(["STOP"])
    assert t.feed(ids("ab S"), None) == ("ab ", 4, None)
    assert t.feed(ids("T"), "length") == ("ST", 1, None)  # nothing can complete "ST" now


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


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abc \n", max_size=30),
       stops=st.lists(st.text(alphabet="abc \n", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_feed_one_at_a_time_or_in_batches_agree_with_reference(text: str, stops: list[str],
                                                              cuts: list[int]) -> None:
    """The in-process layout feeds each token as it is sampled, the split server's front end a
    step's tokens at once; both end where the reference ends, with the same text and tokens."""
    want_text, want_stop = ref_stop(text, stops)
    want_kept = len(want_text) + len(want_stop) if want_stop is not None else len(text)
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    for pieces in ([text[i:i + 1] for i in range(len(text))], [text[lo:hi] for lo, hi in zip(bounds, bounds[1:])]):
        t = request_text(stops)
        out, kept, matched = "", 0, None
        for n, piece in enumerate(pieces, start=1):
            last = n == len(pieces)
            got = t.feed(ids(piece), "length" if last else None)
            out, kept, matched = out + got.text, kept + got.kept, got.matched_stop
            assert want_text.startswith(out), (out, want_text)  # never part of a stop string shown
            if matched is not None:
                break
        assert (out, kept, matched) == (want_text, want_kept, want_stop), pieces
