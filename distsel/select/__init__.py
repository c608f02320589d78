"""Selectors: each turns a pool of scored documents into a chosen set under the budget."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from distsel.config import Config
from distsel.select.pool import Pool, gather_pool
from distsel.select.samplers import fill_budget, random_order

__all__ = ["Pool", "Selector", "gather_pool", "selector_for"]


class Selector(Protocol):
    def required_stages(self, config: Config) -> tuple[str, ...]: ...

    def select(self, pool: Pool, config: Config) -> tuple[np.ndarray, dict[str, Any]]:
        """Indices into the pool of the chosen documents, and the manifest section."""
        ...


class AllSelector:
    """Every accepted document (the budget, if given, caps it in pool order)."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    def select(self, pool: Pool, config: Config) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(np.arange(len(pool)), pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config)}


class RandomSelector:
    """A seeded uniform sample without replacement, to the exact budget."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    def select(self, pool: Pool, config: Config) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(random_order(pool.random_key), pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), "seed": config.seed}


def _budget(config: Config) -> dict[str, int] | None:
    budget = config.select.budget
    return budget.model_dump(exclude_none=True) if budget else None


SELECTORS: dict[str, Selector] = {"all": AllSelector(), "random": RandomSelector()}


def selector_for(config: Config) -> Selector:
    return SELECTORS[config.select.method]
