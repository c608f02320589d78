"""Selectors that need no target: every document, a random sample, and the top or a threshold of
any score column (CCS strata of one: distsel.methods.ccs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distsel.core.candidates import HEAD_MARGIN, MIN_HEAD, Walk
from distsel.core.config import Config, StrictModel
from distsel.core.pool import Pool
from distsel.core.quantiles import Column, ColumnParts, PoolColumn, count_between, median
from distsel.core.registry import register_selector, stage_for_column
from distsel.core.samplers import descending, fill_budget, random_order, random_ranking
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext
from distsel.core.storage import Store


class TopkOptions(StrictModel):
    column: str = "similarity"
    descending: bool = True


class ThresholdOptions(StrictModel):
    """Keep documents whose `column` lies in [min, max] (default min: the pool's median)."""

    column: str = "similarity"
    min: float | None = None
    max: float | None = None


def pool_order(pool: Pool, config: Config) -> list[np.ndarray]:
    """`all`'s ranking (distsel.core.candidates): the pool's own order, part by part."""
    return [np.arange(len(pool), dtype=np.int64)]


@register_selector("all", needs_budget=False)
class AllSelector:
    """Every accepted document (the budget, if given, caps it in pool order: the parts then send
    their first documents, distsel.core.candidates)."""

    rankings = staticmethod(pool_order)

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


@dataclass(frozen=True)
class ThresholdPlan:
    """The documents whose `column` lies in [low, high], in seeded random order, walked under
    the budget (`limit` documents or tokens; None: all of them); `passing` of them in the pool."""

    column: str
    low: float
    high: float
    passing: int
    limit: int | None
    by_tokens: bool
    share: float
    min_head: int = MIN_HEAD

    def order(self, pool: Pool) -> np.ndarray:
        values = score_column(pool, self.column)
        passing = np.flatnonzero((values >= self.low) & (values <= self.high))
        return passing[random_order(pool.random_key[passing])]

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]]:
        return [(self.order(part), None if self.limit is None else self.share)]

    def walks(self, pool: Pool) -> list[Walk]:
        return [Walk(self.order(pool), self.limit, self.by_tokens)]


@register_selector("threshold", options=ThresholdOptions, needs_budget=False)
class ThresholdSelector:
    """Documents whose score lies in [min, max]; a budget samples among them at random. The
    default min, the pool's median, and the count passing are computed part by part
    (distsel.core.quantiles); the parts send only passing documents."""

    filters = True

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.options("threshold").column),)

    def plan(
        self, store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray]
    ) -> ThresholdPlan:
        column = config.select.options("threshold").column
        return self.plan_for(ColumnParts(store, parts, column, dropped), config)

    def plan_for(self, column: Column, config: Config) -> ThresholdPlan:
        options = config.select.options("threshold")
        low = median(column) if options.min is None else options.min
        high = np.inf if options.max is None else options.max
        budget = config.select.budget
        by_tokens = budget is not None and budget.by_tokens
        limit = None if budget is None else budget.limit
        share = HEAD_MARGIN * (limit or 0) / max(len(column.parts), 1)
        passing = count_between(column, low, high)
        return ThresholdPlan(options.column, low, high, passing, limit, by_tokens, share)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.options("threshold")
        plan = pool.plan or self.plan_for(PoolColumn(pool, options.column), config)
        chosen = plan.walks(pool)[0].taken(pool.tokens)
        section = {"budget": budget_section(config), **options.model_dump(), "min_used": plan.low}
        return chosen, {**section, "passing_docs": plan.passing}
