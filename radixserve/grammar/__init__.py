"""Structured output on xgrammar: grammar specs from SamplingParams, checks, compilation in a thread
pool, per-request matchers, batch bitmasks and jump-forward."""
from radixserve.grammar.spec import GrammarSpec, grammar_spec

__all__ = ["GrammarSpec", "grammar_spec"]
