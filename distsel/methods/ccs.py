"""CCS: coverage-centric sampling over equal-width strata of a score (the `stratified` selector).

Zheng et al., *Coverage-centric Coreset Selection for High Pruning Rates* (ICLR 2023).

Of the n documents with a score, drop the hardest h = ⌊hard_fraction · n⌋ (ties: the first in
pool order), cut the kept scores' range [min, max] into `bins` equal-width strata, and visit the
non-empty strata from the smallest (ties: the one whose first document comes first). Stratum j
of the S still to visit gets

    share_j = ⌊remaining budget / S⌋   (documents or tokens),

taken in seeded random order by fill_budget's rule; what it takes leaves the budget for the
rest. Documents without a score (NaN) are never selected.

Without the pool on the driver: the cut and the kept range are exact order statistics of the
score (distsel.core.quantiles); each part counts its documents at the cut, then its documents and
tokens per stratum; each part sends, per stratum, the head of its random order that it is
expected to fill (distsel.core.candidates), grown where the walk could reach past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from distsel.core.candidates import HEAD_MARGIN, Walk
from distsel.core.config import Config, StrictModel
from distsel.core.pool import Pool, take
from distsel.core.quantiles import (
    Column,
    ColumnParts,
    PoolColumn,
    leading_digit_counts,
    order_statistics,
)
from distsel.core.registry import register_selector, stage_for_column
from distsel.core.samplers import random_order
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext
from distsel.core.storage import Store

# a part's head of a stratum: its expected take HEAD_MARGIN times over, plus this many documents
MIN_STRATUM_HEAD = 2


class StratifiedOptions(StrictModel):
    """CCS: drop the hardest `hard_fraction`, then equal budgets over `bins` equal-width strata."""

    column: str = "similarity"
    bins: int = Field(default=50, gt=0)
    hard_fraction: float = Field(default=0.0, ge=0, lt=1)
    hard_is_high: bool = True


@dataclass(frozen=True)
class Cut:
    """The hard documents dropped: every score beyond `value` (above it when `hard_is_high`)
    and, per part, its first `ties[part]` documents at it (None: nothing dropped)."""

    value: float | None
    hard_is_high: bool
    ties: dict[str, int]

    def kept(self, values: np.ndarray, part: str) -> np.ndarray:
        """Which of one part's documents (its `values`, in row order) are kept."""
        if self.value is None:
            return ~np.isnan(values)
        beyond = values > self.value if self.hard_is_high else values < self.value
        kept = ~beyond & ~np.isnan(values)
        at_cut = np.flatnonzero(values == self.value)
        kept[at_cut[: self.ties.get(part, 0)]] = False
        return kept


@dataclass(frozen=True)
class StrataPlan:
    """The pool-wide facts of a CCS selection, and its walks: one per visited stratum."""

    column: str
    cut: Cut
    edges: np.ndarray
    visit: tuple[int, ...]  # the non-empty strata, in the order they are visited
    expected: tuple[float, ...]  # per visited stratum: the share of it expected to be taken
    limit: int
    by_tokens: bool
    min_head: int = MIN_STRATUM_HEAD

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]]:
        values = score_column(part, self.column)
        kept = np.flatnonzero(self.cut.kept(values, part.parts[0]))
        stratum = stratum_of(self.edges, values[kept])
        orders = []
        for position, index in enumerate(self.visit):
            members = kept[stratum == index]
            size = part.tokens[members].sum() if self.by_tokens else len(members)
            expected = self.expected[position]
            share = None if expected >= 1 else HEAD_MARGIN * expected * float(size)
            orders.append((members[random_order(part.random_key[members])], share))
        return orders

    def kept_rows(self, pool: Pool) -> np.ndarray:
        """The documents of a whole pool that the cut keeps."""
        values = score_column(pool, self.column)
        kept = np.zeros(len(pool), dtype=bool)
        for index, part in enumerate(pool.parts):
            rows = np.flatnonzero(pool.part_index == index)
            kept[rows] = self.cut.kept(values[rows], part)
        return np.flatnonzero(kept)

    def chosen(self, pool: Pool) -> np.ndarray:
        """The walks' documents, stratum after stratum."""
        taken = [walk.taken(pool.tokens) for walk in self.walks(pool)]
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    def walks(self, pool: Pool) -> list[Walk]:
        """The visited strata's walks over the gathered documents (every one of them kept)."""
        stratum = stratum_of(self.edges, score_column(pool, self.column))
        walks, remaining = [], self.limit
        for position, index in enumerate(self.visit):
            members = np.flatnonzero(stratum == index)
            order = members[random_order(pool.random_key[members])]
            walk = Walk(order, remaining // (len(self.visit) - position), self.by_tokens)
            taken = walk.taken(pool.tokens)
            remaining -= int(pool.tokens[taken].sum()) if self.by_tokens else len(taken)
            walks.append(walk)
        return walks


@register_selector("stratified", options=StratifiedOptions)
class StratifiedSelector:
    """CCS coverage-centric sampling over equal-width score strata."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.options("stratified").column),)

    def plan(
        self, store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray]
    ) -> StrataPlan:
        column = config.select.options("stratified").column
        return self.plan_for(ColumnParts(store, parts, column, dropped), config)

    def plan_for(self, column: Column, config: Config) -> StrataPlan:
        options = config.select.options("stratified")
        by_tokens, limit = config.select.budget.by_tokens, config.select.budget.limit
        cut, low, high = hard_cut(column, options.hard_fraction, options.hard_is_high)
        edges = np.linspace(low, high, options.bins + 1)
        counts, tokens, first = _strata_totals(column, cut, edges)
        sizes = tokens if by_tokens else counts
        visit = sorted(np.flatnonzero(counts), key=lambda j: (counts[j], first[j]))
        expected, remaining = [], limit
        for position, index in enumerate(visit):
            taken = min(int(sizes[index]), remaining // (len(visit) - position))
            expected.append(taken / sizes[index] if sizes[index] else 1.0)
            remaining -= taken
        return StrataPlan(
            options.column,
            cut,
            edges,
            tuple(int(j) for j in visit),
            tuple(expected),
            limit,
            by_tokens,
        )

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.options("stratified")
        if pool.plan is None:  # the whole pool in memory: its hard documents are still there
            plan = self.plan_for(PoolColumn(pool, options.column), config)
            kept = plan.kept_rows(pool)
            chosen = kept[plan.chosen(take(pool, kept))]
        else:
            chosen = pool.plan.chosen(pool)
        return chosen, {"budget": budget_section(config), **options.model_dump()}


def stratum_of(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's equal-width stratum of `edges` (the top edge in the last)."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def hard_cut(column: Column, hard_fraction: float, hard_is_high: bool) -> tuple[Cut, float, float]:
    """The cut that drops the ⌊hard_fraction · n⌋ hardest of the column's n scores, and the
    kept scores' smallest and largest value (NaN, NaN when none is kept)."""
    first_digits = leading_digit_counts(column)
    count = int(first_digits.sum())
    hard = int(hard_fraction * count)
    if count - hard <= 0:
        return Cut(None, hard_is_high, {}), float("nan"), float("nan")
    kept_ranks = [0, count - hard - 1] if hard_is_high else [hard, count - 1]
    if not hard:
        low, high = order_statistics(column, kept_ranks, first_digits)
        return Cut(None, hard_is_high, {}), low.value, high.value
    cut_rank = count - hard if hard_is_high else hard - 1
    low, high, at = order_statistics(column, [*kept_ranks, cut_rank], first_digits)
    beyond = count - at.below - at.equal if hard_is_high else at.below
    ties, left = {}, hard - beyond
    for part, tied in zip(column.parts, column.map(_count_equal, at.value), strict=True):
        ties[part], left = min(tied, left), left - min(tied, left)
    return Cut(at.value, hard_is_high, ties), low.value, high.value


def _count_equal(column: Column, index: int, value: float) -> int:
    return int(np.count_nonzero(column.values(index) == value))


def _part_strata(
    column: Column, index: int, cut: Cut, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stratum: the part's kept documents, their tokens, and the pool position of its first
    one (part index · 2⁴⁰ + row; the largest int64 where it has none)."""
    values = column.values(index)
    kept = np.flatnonzero(cut.kept(values, column.parts[index]))
    bins = len(edges) - 1
    stratum = stratum_of(edges, values[kept])
    counts = np.bincount(stratum, minlength=bins)
    tokens = np.bincount(stratum, weights=column.tokens(index)[kept], minlength=bins)
    first = np.full(bins, np.iinfo(np.int64).max)
    np.minimum.at(first, stratum, (index << 40) + kept)
    return counts, tokens.astype(np.int64), first


def _strata_totals(
    column: Column, cut: Cut, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not column.parts:
        bins = len(edges) - 1
        return np.zeros(bins, np.int64), np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    return column.map_reduce(_part_strata, _combine_strata, cut, edges)


def _combine_strata(*totals: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple:
    counts, tokens, first = zip(*totals, strict=True)
    return np.sum(counts, axis=0), np.sum(tokens, axis=0), np.min(first, axis=0)
