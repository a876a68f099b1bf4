"""xgrammar's view of the model's vocabulary: token strings, padded size, stop tokens."""
from __future__ import annotations

import logging
from typing import Sequence

logger = logging.getLogger(__name__)


def build_tokenizer_info(tokenizer, vocab_size: int, stop_token_ids: Sequence[int]):
    """TokenizerInfo for a transformers fast tokenizer and a model whose logits have `vocab_size` columns.

    NOTE: ids in [len(tokenizer), vocab_size) (the model's padding of its embedding) and the
    tokenizer's special added tokens (<|im_start|>, <repo_name>, ...) are given empty strings, which
    xgrammar treats as special: never allowed by a grammar. Left as text, a grammar would admit
    "<|im_start|>" inside a JSON string, which the detokenizer then drops, so the text would no
    longer match the grammar. Stop tokens are the engine's EOS ids; the grammar admits them only
    where the output may end.
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
    info = xgr.TokenizerInfo(encoded, vocab_type=detected.vocab_type, vocab_size=vocab_size,
                             stop_token_ids=list(stop_token_ids), add_prefix_space=detected.add_prefix_space)
    logger.info("grammar vocabulary: %d entries (%d from the tokenizer, %d special), %s, stop ids %s",
                vocab_size, len(vocab), len(special), detected.vocab_type.name, list(stop_token_ids))
    return info
