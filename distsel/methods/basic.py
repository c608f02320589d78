"""Selectors that need no target: every document, a random sample, and the top, a threshold or
CCS strata of any score column."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from distsel.core.config import Config, StrictModel
from distsel.core.pool import Pool
from distsel.core.registry import register_selector, stage_for_column
from distsel.core.samplers import (
    ccs_stratified,
    descending,
    fill_budget,
    random_order,
    random_ranking,
)
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext


class TopkOptions(StrictModel):
    column: str = "similarity"
    descending: bool = True


class ThresholdOptions(StrictModel):
    """Keep documents whose `column` lies in [min, max] (default min: the pool's median)."""

    column: str = "similarity"
    min: float | None = None
    max: float | None = None


class StratifiedOptions(StrictModel):
    """CCS: drop the hardest `hard_fraction`, then equal budgets over `bins` equal-width strata."""

    column: str = "similarity"
    bins: int = Field(default=50, gt=0)
    hard_fraction: float = Field(default=0.0, ge=0, lt=1)
    hard_is_high: bool = True


@register_selector("all", needs_budget=False)
class AllSelector:
    """Every accepted document (the budget, if given, caps it in pool order)."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(np.arange(len(pool)), pool.tokens, config.select.budget)
        return chosen, {"budget": budget_section(config)}


@register_selector("random")
class RandomSelector:
    """A seeded uniform sample without replacement, to the exact budget."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    rankings = staticmethod(random_ranking)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(random_order(pool.random_key), pool.tokens, config.select.budget)
        return chosen, {"budget": budget_section(config), "seed": config.seed}


@register_selector("topk", options=TopkOptions)
class TopkSelector:
    """The documents with the highest (or lowest) value of any score column."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.options("topk").column),)

    def rankings(self, pool: Pool, config: Config) -> list[np.ndarray]:
        options = config.select.options("topk")
        values = score_column(pool, options.column)
        return [descending(values if options.descending else -values, pool.random_key)]

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(self.rankings(pool, config)[0], pool.tokens, config.select.budget)
        options = config.select.options("topk")
        return chosen, {"budget": budget_section(config), **options.model_dump()}


@register_selector("threshold", options=ThresholdOptions, needs_budget=False)
class ThresholdSelector:
    """Documents whose score lies in [min, max]; a budget samples among them at random."""

    filters = True

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.options("threshold").column),)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.options("threshold")
        values = score_column(pool, options.column)
        low = float(np.nanmedian(values)) if options.min is None else options.min
        high = np.inf if options.max is None else options.max
        passing = np.flatnonzero((values >= low) & (values <= high))
        order = passing[random_order(pool.random_key[passing])]
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        section = {"budget": budget_section(config), **options.model_dump(), "min_used": low}
        return chosen, {**section, "passing_docs": int(len(passing))}


@register_selector("stratified", options=StratifiedOptions)
class StratifiedSelector:
    """CCS coverage-centric sampling over equal-width score strata."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.options("stratified").column),)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.options("stratified")
        values = score_column(pool, options.column)
        chosen = ccs_stratified(
            values,
            pool.random_key,
            pool.tokens,
            config.select.budget,
            bins=options.bins,
            hard_fraction=options.hard_fraction,
            hard_is_high=options.hard_is_high,
        )
        return chosen, {"budget": budget_section(config), **options.model_dump()}
