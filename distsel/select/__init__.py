"""Selectors: each turns a pool of scored documents into a chosen set under the budget."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from distsel import registry
from distsel.config import Config
from distsel.errors import DistselError
from distsel.select.pool import Pool, gather_pool
from distsel.stage import StageContext

__all__ = ["Pool", "Selector", "budget_section", "gather_pool", "score_column", "selector_for"]


class Selector(Protocol):
    """A selector may set `filters = True` when it keeps only documents that pass a test (the
    budget then only caps them): a budget larger than the pool selects every passing document
    instead of the whole pool (see distsel.pipeline.choose)."""

    def required_stages(self, config: Config) -> tuple[str, ...]: ...

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Indices into the pool of the chosen documents, and the manifest section."""
        ...


def budget_section(config: Config) -> dict[str, int] | None:
    budget = config.select.budget
    return budget.model_dump(exclude_none=True) if budget else None


def score_column(pool: Pool, name: str) -> np.ndarray:
    if name not in pool.scores:
        known = ", ".join(sorted(pool.scores)) or "none"
        raise DistselError(f"no numeric score column '{name}' (score columns: {known})")
    return np.asarray(pool.scores[name], dtype=np.float64)


def selector_for(config: Config) -> Selector:
    """The registered selector of `select.method` (distsel.registry)."""
    return registry.selector(config.select.method)
