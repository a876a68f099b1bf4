"""The grammar mask, piece by piece: xgrammar's view of the vocabulary (special and padded ids never
admitted), the bitmask kernel against a plain torch reference, the sampler's mask hook (masked
tokens never drawn, raw logprobs untouched), and choice literals."""
from __future__ import annotations

import pytest
import torch
import xgrammar as xgr

from radixserve import SamplingParams
from radixserve.grammar.spec import choice_ebnf
from radixserve.grammar.tokenizer_info import build_tokenizer_info
from radixserve.models.loader import embedded_model_path
from radixserve.models.tokenizer import load_tokenizer
from radixserve.sampling.bitmask import apply_token_bitmask, unpack_bitmask
from radixserve.sampling.sampler import sample
from radixserve.sampling.tensors import SamplingRow, build_sampling_tensors

EOS = 2  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(embedded_model_path())


@pytest.fixture(scope="module")
def padded(tokenizer):
    """A compiler for a model whose logits are 64 columns wider than the tokenizer."""
    vocab = len(tokenizer) + 64
    return vocab, xgr.GrammarCompiler(build_tokenizer_info(tokenizer, vocab, [EOS]))


def _allowed(compiled, prefix: str, vocab: int) -> torch.Tensor:
    m = xgr.GrammarMatcher(compiled)
    assert m.accept_string(prefix)
    mask = xgr.allocate_token_bitmask(1, vocab)
    m.fill_next_token_bitmask(mask)
    return unpack_bitmask(mask, vocab)[0]


def test_special_and_padded_ids_are_never_admitted(tokenizer, padded):
    vocab, compiler = padded
    specials = [i for i, t in tokenizer.added_tokens_decoder.items() if t.special]
    assert {0, 1, 2} <= set(specials)
    # inside a JSON string almost anything goes, yet not "<|im_start|>" (it would vanish from the text)
    free_text = _allowed(compiler.compile_regex(r'"[^"]*"'), '"ab', vocab)
    assert int(free_text.sum()) > 40000
    assert not free_text[specials].any()
    assert not free_text[len(tokenizer):].any()
    # where the output may end, EOS (and only EOS among the specials) is admitted
    done = _allowed(compiler.compile_regex("abc"), "abc", vocab)
    assert done.nonzero().flatten().tolist() == [EOS]


def test_json_view_never_admits_raw_control_characters(tokenizer):
    """xgrammar 0.2.8 lets a string with maxLength take a raw tab (invalid JSON); the JSON view of the
    vocabulary has no token holding a control character, so it cannot."""
    vocab = len(tokenizer)
    schema = '{"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}}}'
    tab_ids = [i for i in range(vocab) if "\t" in tokenizer.decode([i])]
    assert tab_ids
    plain = xgr.GrammarCompiler(build_tokenizer_info(tokenizer, vocab, [EOS]))
    admitted = _allowed(plain.compile_json_schema(schema, any_whitespace=False), '{"a": "x', vocab)
    assert admitted[tab_ids].any()  # the behaviour guarded against
    info = build_tokenizer_info(tokenizer, vocab, [EOS], json_only=True)
    json_view = xgr.GrammarCompiler(info)
    admitted = _allowed(json_view.compile_json_schema(schema, any_whitespace=False), '{"a": "x', vocab)
    assert int(admitted.sum()) > 1000 and not admitted[tab_ids].any()
    controls = [i for i in range(vocab) if any(ord(c) < 0x20 for c in tokenizer.decode([i]))]
    assert not admitted[controls].any()


def test_tokenizer_wider_than_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match="does not match the model"):
        build_tokenizer_info(tokenizer, 1000, [EOS])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bitmask_kernel_matches_torch_reference(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(0)
    for rows, vocab in ((1, 32), (3, 100), (5, 49152), (2, 128256)):
        logits = torch.randn(rows, vocab, generator=g).to(device)
        bitmask = torch.randint(-2**31, 2**31 - 1, (rows, (vocab + 31) // 32), generator=g,
                                dtype=torch.int64).to(torch.int32).to(device)
        expected = logits.masked_fill(~unpack_bitmask(bitmask, vocab), float("-inf"))
        got = logits.clone()
        apply_token_bitmask(got, bitmask)
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="does not cover"):
        apply_token_bitmask(torch.zeros(2, 64, device=device), torch.zeros(2, 1, dtype=torch.int32, device=device))


def _row(p: SamplingParams, seed: int, step: int) -> SamplingRow:
    return SamplingRow(p, seed, step, [5, 6], [], [EOS])


def test_sampler_never_draws_a_masked_token_and_logprobs_stay_raw():
    vocab = 300
    g = torch.Generator().manual_seed(1)
    params = [SamplingParams(temperature=1.0, logprobs=3), SamplingParams(temperature=0.7, top_p=0.9, logprobs=0),
              SamplingParams(temperature=0, logprobs=2), SamplingParams(temperature=1.5, top_k=50)]
    for step in range(60):
        logits = torch.randn(len(params), vocab, generator=g) * 3
        allowed = torch.rand(len(params), vocab, generator=g) < 0.05
        allowed[:, step % vocab] = True
        packed = torch.zeros(len(params), (vocab + 31) // 32, dtype=torch.int64)
        for b, a in enumerate(allowed):
            for v in a.nonzero().flatten().tolist():
                packed[b, v // 32] |= 1 << (v % 32)
        bitmask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        assert torch.equal(unpack_bitmask(bitmask, vocab), allowed)
        rows = [_row(p, seed=7 + b, step=step) for b, p in enumerate(params)]
        before = logits.clone()
        out = sample(logits, build_sampling_tensors(rows, vocab, token_bitmask=bitmask))
        assert torch.equal(logits, before)  # the caller's logits are not masked in place
        for b, tok in enumerate(out.token_ids.tolist()):
            assert allowed[b, tok], (step, b, tok)
        raw = torch.log_softmax(logits, dim=-1)
        assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids[:, None]).squeeze(1))
        greedy = logits[2].masked_fill(~allowed[2], float("-inf")).argmax().item()
        assert out.token_ids[2].item() == greedy


@pytest.mark.parametrize("choices", [["yes", "no"], ['He said "hi"', "back\\slash", "two\nlines", "tab\there",
                                                     "café ☕", "", "\x01ctl"], ["a", "a", "ab"]])
def test_choice_literals_accept_exactly_the_choices(choices):
    info = xgr.TokenizerInfo([chr(c) for c in range(1, 128)] + ["é", "☕"], vocab_type=xgr.VocabType.RAW)
    compiled = xgr.GrammarCompiler(info).compile_grammar(choice_ebnf(choices))
    for c in set(choices):
        m = xgr.GrammarMatcher(compiled)
        assert m.accept_string(c) and m.is_completed(), repr(c)
    for wrong in ("maybe", "ye", "yes!", 'He said "hi', "two lines", "a b"):
        if wrong in choices:
            continue
        m = xgr.GrammarMatcher(compiled)
        assert not (m.accept_string(wrong) and m.is_completed()), repr(wrong)
