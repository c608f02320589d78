"""Budgeted samplers shared by the selectors."""

from __future__ import annotations

import numpy as np

from distsel.config import Budget


def fill_budget(order: np.ndarray, tokens: np.ndarray, budget: Budget | None) -> np.ndarray:
    """Take documents in `order` (most wanted first) until the budget is met.

    docs: exactly the first `docs` documents (all of them if the pool is smaller).
    tokens: walk the order and keep each document that still fits, so the total never exceeds
    the budget and stops short of it only when no remaining document fits.
    """
    if budget is None:
        return order
    if budget.docs is not None:
        return order[: budget.docs]
    ordered_tokens = tokens[order]
    within = np.cumsum(ordered_tokens) <= budget.tokens
    prefix = int(np.argmin(within)) if not within.all() else len(order)
    taken = list(order[:prefix])
    remaining = budget.tokens - int(ordered_tokens[:prefix].sum())
    position = prefix
    while remaining > 0 and position < len(order):
        fits = np.flatnonzero(ordered_tokens[position:] <= remaining)
        if not len(fits):
            break
        position += int(fits[0])
        taken.append(order[position])
        remaining -= int(ordered_tokens[position])
        position += 1
    return np.asarray(taken, dtype=np.int64)


def random_order(random_key: np.ndarray) -> np.ndarray:
    """Documents in the seeded random order given by their keys (ties cannot change it)."""
    return np.argsort(random_key, kind="stable")
