"""Budgeted samplers shared by the selectors.

CCS stratified sampling follows Zheng et al., *Coverage-centric Coreset Selection for High Pruning
Rates* (ICLR 2023).
"""

from __future__ import annotations

import numpy as np

from distsel.core.config import Budget, Config
from distsel.core.pool import Pool


def fill_budget(order: np.ndarray, tokens: np.ndarray, budget: Budget | None) -> np.ndarray:
    """Take documents in `order` (most wanted first) until the budget is met.

    docs: exactly the first `docs` documents (all of them if the pool is smaller).
    tokens: walk the order and keep each document that still fits, so the total never exceeds
    the budget and stops short of it only when no remaining document fits.
    """
    if budget is None:
        return np.asarray(order, dtype=np.int64)
    if budget.docs is not None:
        return _fill(order, tokens, budget.docs, by_tokens=False)
    return _fill(order, tokens, budget.tokens, by_tokens=True)


def _fill(order: np.ndarray, tokens: np.ndarray, limit: int, by_tokens: bool) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64)
    if not by_tokens:
        return order[: max(limit, 0)]
    ordered_tokens = tokens[order]
    within = np.cumsum(ordered_tokens) <= limit
    prefix = len(order) if within.all() else int(np.argmin(within))
    taken = [order[:prefix]]
    remaining = limit - int(ordered_tokens[:prefix].sum())
    position = prefix
    while remaining > 0 and position < len(order):
        fits = np.flatnonzero(ordered_tokens[position:] <= remaining)
        if not len(fits):
            break
        position += int(fits[0])
        taken.append(order[position : position + 1])
        remaining -= int(ordered_tokens[position])
        position += 1
    return np.concatenate(taken)


def random_order(random_key: np.ndarray) -> np.ndarray:
    """Documents in the seeded random order given by their keys (ties cannot change it)."""
    return np.argsort(random_key, kind="stable")


def random_ranking(pool: Pool, config: Config) -> list[np.ndarray]:
    """The `random` selector's ranking (distsel.core.candidates): the seeded random order."""
    return [random_order(pool.random_key)]


def descending(scores: np.ndarray, random_key: np.ndarray) -> np.ndarray:
    """Highest score first; equal scores in seeded random order; NaN scores last."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((random_key, -filled))


def ccs_stratified(
    scores: np.ndarray,
    random_key: np.ndarray,
    tokens: np.ndarray,
    budget: Budget,
    bins: int = 50,
    hard_fraction: float = 0.0,
    hard_is_high: bool = True,
) -> np.ndarray:
    """CCS: drop the hardest ⌊hard_fraction · N⌋ documents, cut the remaining score range
    [min, max] into `bins` equal-width strata, then visit the non-empty strata from the smallest:
    stratum j of the S left gets min(size_j, remaining budget // S) (documents or tokens), drawn
    uniformly at random inside it.
    """
    hardness = scores if hard_is_high else -scores
    kept = np.sort(np.argsort(-hardness, kind="stable")[int(hard_fraction * len(scores)) :])
    if not len(kept):
        return kept
    values = scores[kept]
    edges = np.linspace(values.min(), values.max(), bins + 1)
    stratum = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    strata = sorted((kept[stratum == j] for j in np.unique(stratum)), key=lambda m: (len(m), m[0]))
    by_tokens = budget.tokens is not None
    remaining = budget.tokens if by_tokens else budget.docs
    chosen = []
    for visited, members in enumerate(strata):
        share = remaining // (len(strata) - visited)
        order = members[random_order(random_key[members])]
        taken = _fill(order, tokens, share, by_tokens)
        chosen.append(taken)
        remaining -= int(tokens[taken].sum()) if by_tokens else len(taken)
    return np.concatenate(chosen)
