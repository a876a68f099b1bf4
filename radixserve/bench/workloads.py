"""Seeded benchmark workloads made of random token ids (no downloads).

Every generator returns a `Workload`: independent requests, or conversations whose later turns
depend on earlier outputs (multi-turn chat). Output lengths are forced (ignore_eos), so every
engine and baseline generates the same number of tokens.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

FIRST_ID = 100  # skip the special tokens at the start of every vocabulary


@dataclass(frozen=True)
class BenchRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    group: int = -1  # shared-prefix group (-1: none)


@dataclass(frozen=True)
class Conversation:
    """A chat: turn t sends system + (user_1, answer_1, ..., user_t); answers come from the engine."""

    system: list[int]
    user_turns: list[list[int]]
    output_lens: list[int]

    def __post_init__(self) -> None:
        if len(self.user_turns) != len(self.output_lens) or not self.user_turns:
            raise ValueError("a conversation needs one output length per user turn, and at least one turn")


@dataclass(frozen=True)
class Workload:
    name: str
    settings: dict  # the generator's arguments, for the report
    requests: list[BenchRequest] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.requests) == bool(self.conversations):
            raise ValueError("a workload holds either requests or conversations (exactly one, non-empty)")

    @property
    def is_multi_turn(self) -> bool:
        return bool(self.conversations)

    @property
    def num_requests(self) -> int:
        return len(self.requests) or sum(len(c.user_turns) for c in self.conversations)


def _ids(rng: random.Random, n: int, vocab_size: int) -> list[int]:
    hi = min(vocab_size, 32000)  # NOTE: ids below every supported model's vocabulary
    return [rng.randrange(FIRST_ID, hi) for _ in range(n)]


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def shared_prefix(groups: int, prompts_per_group: int, system_len: int, question_len: int, output_len: int,
                  vocab_size: int, seed: int = 0) -> Workload:
    """G groups x P prompts: group system prompt (S tokens) + unique question (Q tokens); shuffled."""
    _check_positive(groups=groups, prompts_per_group=prompts_per_group, system_len=system_len,
                    question_len=question_len, output_len=output_len)
    rng = random.Random(seed)
    reqs = []
    for g in range(groups):
        system = _ids(rng, system_len, vocab_size)
        reqs += [BenchRequest(system + _ids(rng, question_len, vocab_size), output_len, g)
                 for _ in range(prompts_per_group)]
    rng.shuffle(reqs)
    settings = dict(groups=groups, prompts_per_group=prompts_per_group, system_len=system_len,
                    question_len=question_len, output_len=output_len, seed=seed)
    return Workload("shared-prefix", settings, requests=reqs)


def subset_groups(w: Workload, num_groups: int) -> Workload:
    """The requests of the first `num_groups` groups, in the workload's order (same sharing shape)."""
    keep = set(range(num_groups))
    reqs = [r for r in w.requests if r.group in keep]
    if not reqs:
        raise ValueError(f"no requests in the first {num_groups} groups of {w.name}")
    return Workload(w.name + "-subset", {**w.settings, "subset_groups": num_groups}, requests=reqs)


def multi_turn(conversations: int, turns: int, user_len: int, output_len: int, system_len: int,
               vocab_size: int, seed: int = 0) -> Workload:
    """C conversations x T turns; user messages and answers of ~user_len / ~output_len tokens (+-25%)."""
    _check_positive(conversations=conversations, turns=turns, user_len=user_len, output_len=output_len,
                    system_len=system_len)
    rng = random.Random(seed)

    def jitter(n: int) -> int:
        return max(1, round(n * rng.uniform(0.75, 1.25)))
    convs = [Conversation(_ids(rng, system_len, vocab_size),
                          [_ids(rng, jitter(user_len), vocab_size) for _ in range(turns)],
                          [jitter(output_len) for _ in range(turns)]) for _ in range(conversations)]
    settings = dict(conversations=conversations, turns=turns, user_len=user_len, output_len=output_len,
                    system_len=system_len, seed=seed)
    return Workload("multi-turn", settings, conversations=convs)


def _lognormal(rng: random.Random, mean: float, sigma: float, lo: int, hi: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2  # NOTE: E[lognormal(mu, sigma)] = mean before clipping
    return int(min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))))


def sharegpt(num_requests: int, vocab_size: int, seed: int = 0, mean_in: float = 202, mean_out: float = 179,
             sigma: float = 1.0, max_in: int = 2048, max_out: int = 1024, system_len: int = 8) -> Workload:
    """ShareGPT-shaped lengths: long-tailed (lognormal, clipped) prompts and outputs with ShareGPT's
    means, and a short shared system prompt."""
    _check_positive(num_requests=num_requests, system_len=system_len)
    rng = random.Random(seed)
    system = _ids(rng, system_len, vocab_size)
    reqs = []
    for _ in range(num_requests):
        n_in = _lognormal(rng, mean_in, sigma, 4, max_in)
        reqs.append(BenchRequest(system + _ids(rng, max(1, n_in - system_len), vocab_size),
                                 _lognormal(rng, mean_out, sigma, 4, max_out)))
    settings = dict(num_requests=num_requests, mean_in=mean_in, mean_out=mean_out, sigma=sigma, max_in=max_in,
                    max_out=max_out, system_len=system_len, seed=seed)
    return Workload("sharegpt", settings, requests=reqs)


def batch1(num_requests: int, prompt_len: int, output_len: int, vocab_size: int, seed: int = 0) -> Workload:
    """Unrelated requests meant to be sent one at a time (latency, not throughput)."""
    _check_positive(num_requests=num_requests, prompt_len=prompt_len, output_len=output_len)
    rng = random.Random(seed)
    reqs = [BenchRequest(_ids(rng, prompt_len, vocab_size), output_len) for _ in range(num_requests)]
    return Workload("batch1", dict(num_requests=num_requests, prompt_len=prompt_len, output_len=output_len,
                                   seed=seed), requests=reqs)


def trie_size(seqs: list[list[int]]) -> int:
    """Distinct prefixes (nodes of a trie) of all sequences."""
    size, prev = 0, []
    for p in sorted(seqs):  # NOTE: in sorted order a sequence shares most with its predecessor
        lcp = 0
        for a, b in zip(prev, p):
            if a != b:
                break
            lcp += 1
        size += len(p) - lcp
        prev = p
    return size


def optimal_hit_rate(prompts: list[list[int]], outputs: list[tuple[list[int], list[int]]] = ()) -> float:
    """1 - unique prompt tokens / total prompt tokens: the best a prefix cache of unlimited size
    can do. A token is unique per distinct prefix; with `outputs` ((prompt, output) pairs), tokens
    an earlier request generated count as known (turn t+1 re-sends turn t's answer)."""
    total = sum(len(p) for p in prompts)
    if total == 0:
        return 0.0
    if not outputs:
        return 1.0 - trie_size(prompts) / total
    generated = sum(len(o) for _, o in outputs)
    unique = trie_size(list(prompts) + [p + o for p, o in outputs if o]) - generated
    return max(0.0, 1.0 - unique / total)
