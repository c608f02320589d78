"""Budgeted samplers shared by the selectors."""

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
        return fill_limit(order, tokens, budget.docs, by_tokens=False)
    return fill_limit(order, tokens, budget.tokens, by_tokens=True)


def fill_limit(order: np.ndarray, tokens: np.ndarray, limit: int, by_tokens: bool) -> np.ndarray:
    """fill_budget under `limit` documents, or tokens with `by_tokens` (a limit may be 0)."""
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
