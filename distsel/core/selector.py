"""Selectors: each turns a pool of scored documents into a chosen set under the budget."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from distsel.core import registry
from distsel.core.candidates import gather_heads, gather_ranked
from distsel.core.config import Config
from distsel.core.errors import DistselError
from distsel.core.pool import Pool, PoolTotals, gather_pool, pool_totals
from distsel.core.stage import StageContext
from distsel.core.storage import Store

__all__ = [
    "Pool",
    "Selector",
    "budget_section",
    "gather_pool",
    "score_column",
    "selection_pool",
    "selector_for",
    "with_resolved_budget",
]

log = logging.getLogger("distsel")


class Selector(Protocol):
    """A selector may set `filters = True` when it keeps only documents that pass a test (the
    budget then only caps them): a budget larger than the pool selects every passing document
    instead of the whole pool (see distsel.app.pipeline.choose).

    A selector may also declare a phase of its method's name (`distsel run --phase <method>`),
    run after scoring in place of the selection: `search(config, context)` returns the summary
    that the driver writes to the output path `search_output` (it reads the pool from the
    context's parts itself).

    A selector that walks a ranking may declare `rankings(pool, config)`: its order of the
    pool (or one per target task, taken round-robin), the same on any subset of the pool. Its
    select must then be the walk of the one ranking (`fill_budget`), and it is handed only the
    parts' heads of it (distsel.core.candidates).

    A selector whose walks need pool-wide statistics first (a median, strata) or are not one
    ranking's (round-robin over target tasks) may instead declare
    `plan(store, parts, config, dropped)`: it returns a HeadPlan (distsel.core.candidates); its
    select is handed the heads, with the plan as `pool.plan`."""

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


def with_resolved_budget(config: Config, pool: Pool | PoolTotals) -> Config:
    """`config` with a budget given as a share of the pool resolved against `pool` (the accepted
    documents, after duplicates, or their totals): ceil(share · documents) or
    ceil(share · tokens), tokens being the pool's `tokens` column (ceil(chars / 4)). Unchanged
    for any other budget."""
    budget = config.select.budget
    if budget is None or budget.share is None:
        return config
    totals = pool.totals if isinstance(pool, Pool) else pool
    pool_docs, pool_tokens = totals.docs, totals.tokens
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


def selection_pool(
    selector: Selector,
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    dropped: dict[str, np.ndarray] | None = None,
) -> tuple[Pool, Config]:
    """The pool `selector` chooses from, and `config` with its budget resolved. A selector that
    declares `rankings` under a budget gets only the parts' heads of its ranking
    (distsel.core.candidates), and one that declares `plan` the heads of its plan; any other
    gets every document."""
    if config.select.budget is not None and config.select.budget.share is not None:
        config = with_resolved_budget(config, pool_totals(store, parts, config, dropped))
    planner = getattr(selector, "plan", None)
    if planner is not None:
        plan = planner(store, parts, config, dict(dropped or {}))
        return gather_heads(store, parts, stages, config, plan, dropped), config
    rankings = getattr(selector, "rankings", None)
    if rankings is None or config.select.budget is None:
        return gather_pool(store, parts, stages, config, dropped), config
    return gather_ranked(store, parts, stages, config, rankings, dropped), config


def selector_for(config: Config) -> Selector:
    """The registered selector of `select.method` (distsel.core.registry)."""
    return registry.selector(config.select.method)
