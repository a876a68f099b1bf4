"""The token a verify step keeps at a draft position is distributed as the target model's sampling
distribution, whatever was drafted: a chi-square test over a small vocabulary and many seeds,
through the engine's own verify path (ResultProcessor), which fails for a wrong acceptance rule."""
from __future__ import annotations

import torch

from radixserve.sampling_params import SamplingParams
from radixserve.scheduler.batch_builder import LogitsPlan, Row
from radixserve.scheduler.request import Request
from radixserve.scheduler.results import ResultProcessor
from radixserve.speculative.verify import SpecState, accept_greedy

V = 8
# chi-square critical value, 7 degrees of freedom, p = 0.001 (tables): a correct rule fails 1 run in 1000
CRITICAL_7DF = 24.32


def _kept_first_tokens(logits_row: torch.Tensor, draft: tuple[int, ...], seeds: range, temperature: float,
                       rule=accept_greedy) -> torch.Tensor:
    results = ResultProcessor(V, eos_ids={100}, emit=lambda ev: None)  # no EOS in this vocabulary: nothing blocked
    reqs = []
    for s in seeds:
        r = Request(f"r{s}", [1, 2, 3], SamplingParams(temperature=temperature, max_new_tokens=8, ignore_eos=True), seed=s)
        r.decode.spec = SpecState(length=len(draft), draft=draft)
        reqs.append(r)
    k1 = len(draft) + 1
    logits = logits_row.repeat(len(reqs) * k1, 1)
    plan = LogitsPlan([], [], [], [], [(i, i * k1, k1) for i in range(len(reqs))])
    verify, targets = results._verify_targets([Row(r, k1) for r in reqs], plan, logits)
    t = targets.tolist()
    return torch.tensor([rule(draft, t[off:off + k1])[0] for _, off in verify])


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    observed = torch.bincount(tokens, minlength=V).double()
    expected = probs.double() * tokens.numel()
    return float(((observed - expected) ** 2 / expected).sum())


def test_kept_token_follows_the_target_distribution():
    torch.manual_seed(0)
    logits = torch.randn(V) * 1.5
    temperature = 1.0
    probs = torch.softmax(logits / temperature, -1)
    draft = (int(probs.argmin()), 3)  # an unlikely first draft token
    kept = _kept_first_tokens(logits, draft, range(6000), temperature)
    assert _chi_square(kept, probs) < CRITICAL_7DF
    # how often the draft's first token was kept: p(token), what rejection sampling accepts too
    assert abs(float((kept == draft[0]).double().mean()) - float(probs[draft[0]])) < 0.02


def test_a_wrong_acceptance_rule_fails_the_test():
    torch.manual_seed(0)
    logits = torch.randn(V) * 1.5
    probs = torch.softmax(logits, -1)
    draft = (int(probs.argmin()), 3)

    def accept_if_plausible(d, targets):  # wrong: keeps a draft token the model gives >= 5% probability
        return [d[0]] if float(probs[d[0]]) >= 0.05 else [targets[0]]
    kept = _kept_first_tokens(logits, draft, range(6000), 1.0, rule=accept_if_plausible)
    if float(probs[draft[0]]) >= 0.05:
        assert _chi_square(kept, probs) > CRITICAL_7DF
