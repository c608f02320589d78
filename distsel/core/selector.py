"""Selectors: each turns a pool of scored documents into a chosen set under the budget."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from distsel.core import registry
from distsel.core.config import Config
from distsel.core.errors import DistselError
from distsel.core.pool import Pool, gather_pool
from distsel.core.stage import StageContext

__all__ = [
    "Pool",
    "Selector",
    "budget_section",
    "gather_pool",
    "score_column",
    "selector_for",
    "with_resolved_budget",
]

log = logging.getLogger("distsel")


class Selector(Protocol):
    """A selector may set `filters = True` when it keeps only documents that pass a test (the
    budget then only caps them): a budget larger than the pool selects every passing document
    instead of the whole pool (see distsel.app.pipeline.choose).

    A selector may also declare a phase of its method's name (`distsel run --phase <method>`),
    run after scoring in place of the selection: `search(pool, config, context)` returns the
    summary that the driver writes to the output path `search_output`."""

    def required_stages(self, config: Config) -> tuple[str, ...]: ...

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Indices into the pool of the chosen documents, and the manifest section."""
        ...


def budget_section(config: Config) -> dict[str, int | float] | None:
    """The budget for the manifest: `docs` or `tokens`, and beside it the share it was
    resolved from when given as `docs_share` or `tokens_share` (`with_resolved_budget`)."""
    budget = config.select.budget
    return budget.model_dump(exclude_none=True) if budget else None


def with_resolved_budget(config: Config, pool: Pool) -> Config:
    """`config` with a budget given as a share of the pool resolved against `pool` (the accepted
    documents, after duplicates): ceil(share · documents) or ceil(share · tokens), tokens being
    the pool's `tokens` column (ceil(chars / 4)). Unchanged for any other budget."""
    budget = config.select.budget
    if budget is None or budget.share is None:
        return config
    pool_docs, pool_tokens = len(pool), int(pool.tokens.sum())
    resolved = budget.resolved(pool_docs, pool_tokens)
    if resolved.docs_share is not None:
        what = f"{resolved.docs:,} of the pool's {pool_docs:,} documents"
    else:
        what = f"{resolved.tokens:,} of the pool's ~{pool_tokens:,} tokens"
    log.info("select: budget %s (%g of the pool)", what, budget.share)
    select = config.select.model_copy(update={"budget": resolved})
    return config.model_copy(update={"select": select})


def score_column(pool: Pool, name: str) -> np.ndarray:
    """A numeric score column of the pool; noted in `pool.ranked_by`, the score columns that
    selected/ carries (distsel.app.output)."""
    if name not in pool.scores:
        known = ", ".join(sorted(pool.scores)) or "none"
        raise DistselError(f"no numeric score column '{name}' (score columns: {known})")
    if name not in pool.ranked_by:
        pool.ranked_by.append(name)
    return np.asarray(pool.scores[name], dtype=np.float64)


def selector_for(config: Config) -> Selector:
    """The registered selector of `select.method` (distsel.core.registry)."""
    return registry.selector(config.select.method)
