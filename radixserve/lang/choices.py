"""How `select` picks among its choices from the choices' token log-probabilities.

Each method sees, per choice, the log-probability of each of the choice's tokens given the
program's tokens so far (`conditional`), and, when it asks for them, the same tokens' log-probs
with no context at all (`unconditional`: the choice's tokens alone; the first token has no
context, so its unconditional log-prob counts as 0). The definitions follow SGLang's:

- token_length_normalized: the highest mean token log-prob.
- greedy_token_selection: compare token by token: keep the choices with the best log-prob at
  the first position, then among those the best at the next, until one is left. A choice shorter
  than the longest is padded with its own mean log-prob.
- unconditional_likelihood_normalized: the highest mean of (conditional - unconditional)
  log-prob per token, i.e. what the context adds over the choice's prior likelihood.

Ties go to the first choice.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence


class ChoiceDecision(NamedTuple):
    index: int  # the chosen choice
    scores: list[float]  # per choice, what the method compared (higher is better)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _first_argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


class ChoicesMethod:
    """A named rule from per-choice token log-probs to a decision."""

    name = ""
    needs_unconditional = False

    def decide(self, conditional: list[list[float]], unconditional: list[list[float]] | None) -> ChoiceDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesMethod):
    name = "token_length_normalized"

    def decide(self, conditional, unconditional=None):
        scores = [_mean(lps) for lps in conditional]
        return ChoiceDecision(_first_argmax(scores), scores)


class GreedyTokenSelection(ChoicesMethod):
    name = "greedy_token_selection"

    def decide(self, conditional, unconditional=None):
        width = max(len(lps) for lps in conditional)
        matrix = [list(lps) + [_mean(lps)] * (width - len(lps)) for lps in conditional]
        alive = list(range(len(conditional)))
        for j in range(width):
            best = max(matrix[i][j] for i in alive)
            alive = [i for i in alive if matrix[i][j] == best]
            if len(alive) == 1:
                break
        # NOTE: the reported score is the mean (padded) log-prob; the decision is the greedy one.
        return ChoiceDecision(alive[0], [_mean(row) for row in matrix])


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    name = "unconditional_likelihood_normalized"
    needs_unconditional = True

    def decide(self, conditional, unconditional=None):
        if unconditional is None:
            raise ValueError("unconditional_likelihood_normalized needs the choices' unconditional log-probs")
        scores = []
        for cond, uncond in zip(conditional, unconditional):
            if len(cond) != len(uncond):
                raise ValueError(f"a choice has {len(cond)} conditional but {len(uncond)} unconditional log-probs")
            scores.append(_mean([c - u for c, u in zip(cond, uncond)]))
        return ChoiceDecision(_first_argmax(scores), scores)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                unconditional_likelihood_normalized)}


def resolve(method: ChoicesMethod | str) -> ChoicesMethod:
    """A ChoicesMethod from itself or its name; ValueError for anything else."""
    if isinstance(method, ChoicesMethod):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    raise ValueError(f"unknown choices_method {method!r}; use one of {', '.join(METHODS)}")
