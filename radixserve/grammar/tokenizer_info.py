"""xgrammar's view of the model's vocabulary: token strings, padded size, stop tokens."""
from __future__ import annotations

import logging
from typing import Sequence

logger = logging.getLogger(__name__)


def build_tokenizer_info(tokenizer, vocab_size: int, stop_token_ids: Sequence[int], json_only: bool = False):
    """TokenizerInfo for a transformers fast tokenizer and a model whose logits have `vocab_size` columns.

    NOTE: ids in [len(tokenizer), vocab_size) (the model's padding of its embedding) and the
    tokenizer's special added tokens (<|im_start|>, <repo_name>, ...) are given empty strings, which
    xgrammar treats as special: never allowed by a grammar. Left as text, a grammar would admit
    "<|im_start|>" inside a JSON string, which the detokenizer then drops, so the text would no
    longer match the grammar. Stop tokens are the engine's EOS ids; the grammar admits them only
    where the output may end.

    `json_only`: also blank every token holding a raw control character (bytes 0x00-0x1f), for
    JSON-schema grammars, which are written on one line and never need one (inside strings they must
    be escaped). NOTE: xgrammar 0.2.8 admits raw tabs and other control characters in strings with
    minLength/maxLength, which is invalid JSON; without those tokens it cannot happen.
    """
    import xgrammar as xgr

    vocab = tokenizer.get_vocab()
    if not vocab or max(vocab.values()) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(vocab.values(), default=-1)} but the model's vocabulary "
                         f"has {vocab_size} entries; the tokenizer does not match the model")
    detected = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=list(stop_token_ids))
    encoded = [""] * vocab_size
    for token, idx in vocab.items():
        encoded[idx] = token
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = sorted(i for i, tok in decoder.items() if getattr(tok, "special", False) and i < vocab_size)
    for i in special:
        encoded[i] = ""
    controls = 0
    if json_only:
        for i, raw in enumerate(detected.decoded_vocab):
            if encoded[i] and any(b < 0x20 for b in raw):
                encoded[i] = ""
                controls += 1
    info = xgr.TokenizerInfo(encoded, vocab_type=detected.vocab_type, vocab_size=vocab_size,
                             stop_token_ids=list(stop_token_ids), add_prefix_space=detected.add_prefix_space)
    logger.info("grammar vocabulary%s: %d entries (%d from the tokenizer, %d special%s), %s, stop ids %s",
                " for JSON" if json_only else "", vocab_size, len(vocab), len(special),
                f", {controls} with control characters" if json_only else "", detected.vocab_type.name,
                list(stop_token_ids))
    return info
