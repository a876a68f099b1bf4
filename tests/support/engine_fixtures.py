"""Engines and oracles shared by the engine-level tests (imported, not collected)."""
from __future__ import annotations

import functools
import os

import torch

from radixserve import Engine
from radixserve.models.loader import embedded_model_path

# Prompts of mixed lengths: chat-formatted, plain text, and a long few-shot block.
SYSTEM = ("You are a careful assistant for a travel company. Answer briefly and truthfully. "
          "Our offices are in Lisbon, Oslo and Kyoto; we sell rail passes, ferry tickets and "
          "guided walking tours. Never invent prices. ") * 3
QUESTIONS = [
    "What is the capital of France?",
    "Name three rivers in Europe.",
    "How do I get from Oslo to Bergen?",
    "Write a haiku about trains.",
    "Why is the sky blue?",
    "What is 17 times 23?",
    "Suggest a day trip from Kyoto.",
    "Translate 'good morning' into Portuguese.",
]


def chat_ids(engine: Engine, question: str, system: str = SYSTEM) -> list[int]:
    return engine.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": question}])


def mixed_prompts() -> list[str]:
    return [
        "The capital of France is",
        "def fibonacci(n):\n    ",
        "Once upon a time, in a small village by the sea, there lived an old fisherman who",
        "1, 2, 3, 4, 5,",
        "Q: What is the largest planet in our solar system?\nA:",
        ("Review: The film was long, slow and yet strangely moving. " * 12) + "Sentiment:",
        "Hi",
        "List of European capitals: Paris, Berlin, Madrid,",
    ]


def make_engine(**options) -> Engine:
    # NOTE: the oracles here run on CPU in float32; pin the engine there too, also on a GPU machine.
    options.setdefault("device", "cpu")
    options.setdefault("dtype", "float32")
    options.setdefault("max_total_tokens", 16384)
    options.setdefault("check_integrity", True)
    return Engine(**options)


@functools.lru_cache(maxsize=1)
def hf_smollm2():
    """transformers' own GGUF loading of the embedded model: the oracle."""
    from transformers import AutoModelForCausalLM
    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()


def hf_greedy(model, ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """transformers' generate, greedy, one prompt (no padding), cut after the first EOS.
    An empty `eos` means ignore_eos: EOS is blocked, as transformers' min_new_tokens does."""
    extra = dict(eos_token_id=sorted(eos), pad_token_id=sorted(eos)[0]) if eos else dict(
        min_new_tokens=max_new_tokens, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, **extra)
    new = out[0, len(ids):].tolist()
    for i, t in enumerate(new):
        if t in eos:
            return new[:i + 1]
    return new
