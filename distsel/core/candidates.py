"""Ranked selection without the whole pool on the driver.

A ranking selector walks one order of the pool (its `rankings`: highest score first, ties in
seeded random order) and keeps each document that still fits the budget
(distsel.core.samplers.fill_budget). Every part ranks its own documents the same way and sends the
driver only the head of its order: at first 1.25 · B/P + 16 documents (a budget of B documents
over P parts), or its first documents until their tokens exceed 1.25 · B/P + 16 t̄ (a budget of B
tokens; t̄ the part's mean tokens per document). The driver walks the merged heads.

The walk over the heads equals the walk over the whole pool unless it could have taken a document
some part left out. A part's left-out documents all rank after the last one it sent, and the
budget left only falls along the walk, so none of them can be taken while the budget left after
that last document is below the fewest tokens of a left-out document (for a document budget:
below 1). Each part for which this fails sends a head twice as long, and the walk is redone, until
none fails: the selection is exact, and the driver holds about 1.25 B + 16 P documents (B in
documents) instead of the pool. A part holding more than its share of the best documents (a
shard of the target's domain) costs a few more rounds, each reading only the parts still short.

The same holds for several orders, each walked under its own limit: CCS's strata
(distsel.methods.ccs), or several target tasks' rankings taken round-robin, where a task's walk is
the part of its ranking the round-robin looked at (distsel.methods.similarity; under a token
budget, a part is short for a task whose turn looked past its head while the fill could still take
a document). A selector's HeadPlan says how each part orders its
documents and how the driver walks the heads; a part's last document in an order is the last it
sent for that order, and each (part, order) that fails the test sends twice as many.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from distsel.core.config import Config
from distsel.core.pool import (
    Head,
    PartColumns,
    Pool,
    gather_parts,
    gather_pool,
    selection_fields,
    stack,
)
from distsel.core.samplers import fill_limit
from distsel.core.storage import Store

log = logging.getLogger("distsel")

Rankings = Callable[[Pool, Config], list[np.ndarray]]
# A part's first head: its share of the budget, HEAD_MARGIN times over, plus MIN_HEAD documents.
# Where parts are like mixtures of the pool, the best B documents fall about B/P per part, with
# a spread of about √(B/P): the margin covers it many times over when B/P is large, MIN_HEAD
# when it is small.
HEAD_MARGIN = 1.25
MIN_HEAD = 16
GROWTH = 2


@dataclass(frozen=True)
class Walk:
    """An order of pool documents, walked by fill_budget's rule under `limit` documents (or
    tokens, `by_tokens`); a limit of None takes the whole order."""

    order: np.ndarray
    limit: int | None
    by_tokens: bool

    def taken(self, tokens: np.ndarray) -> np.ndarray:
        if self.limit is None:
            return np.asarray(self.order, dtype=np.int64)
        return fill_limit(self.order, tokens, self.limit, self.by_tokens)

    def short(
        self, pool: Pool, sent: np.ndarray, left_out: np.ndarray, fewest_left_out: float
    ) -> np.ndarray:
        """Per part, whether the walk could have taken a document the part left out of this
        order: the limit left after the last document it sent is at least the fewest tokens of
        one it left out (`left_out`, inf where it left none; for a document limit, at least 1).
        `fewest_left_out`: the fewest tokens of any document any part left out of any order (a
        walk whose order depends on the others may need it)."""
        left_after = _limit_left_after(pool, self, sent)
        return left_after >= (left_out if self.by_tokens else 1)


class HeadPlan(Protocol):
    """How a selector's documents are gathered: each part's orders, and the driver's walks."""

    by_tokens: bool
    min_head: int

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]] | None:
        """Each order of the part's documents, best first, with the documents (or tokens) of it
        the part expects to have taken (None: all); None: send every document."""

    def walks(self, pool: Pool) -> list[Walk]:
        """The walks over the gathered documents, one per order, in the same order."""


@dataclass(frozen=True)
class RankedPlan:
    """A ranking selector's plan: one order, walked under the budget."""

    rankings: Rankings
    config: Config
    parts: int

    @property
    def by_tokens(self) -> bool:
        return self.config.select.budget.by_tokens

    @property
    def min_head(self) -> int:
        return MIN_HEAD

    @property
    def limit(self) -> int:
        return self.config.select.budget.limit

    @property
    def share(self) -> float:
        """A part's expected take of the budget, HEAD_MARGIN times over."""
        return HEAD_MARGIN * self.limit / self.parts

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]] | None:
        orders = self.rankings(part, self.config)
        return [(orders[0], self.share)] if len(orders) == 1 else None

    def walks(self, pool: Pool) -> list[Walk]:
        return [Walk(self.rankings(pool, self.config)[0], self.limit, self.by_tokens)]


def gather_ranked(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    rankings: Rankings,
    dropped: dict[str, np.ndarray] | None = None,
    step: str = "select",
) -> Pool:
    """The pool a ranking selector needs: each part's head of `rankings`, grown until the walk
    over the heads is the walk over the whole pool. `config.select.budget` is resolved (in
    documents or tokens). `step` names the work in the console line."""
    budget = config.select.budget
    assert budget is not None and (budget.docs or budget.tokens), "a resolved budget"
    plan = RankedPlan(rankings, config, max(len(parts), 1))
    return gather_heads(store, parts, stages, config, plan, dropped, step)


def gather_heads(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    plan: HeadPlan,
    dropped: dict[str, np.ndarray] | None = None,
    step: str = "select",
) -> Pool:
    """The pool `plan`'s walks need: each part's heads of its orders, each grown until the walks
    over the heads are the walks over the whole pool; `step` names the work in the console
    line."""
    if not parts:
        pool = gather_pool(store, parts, stages, config, dropped)
        pool.plan = plan
        return pool
    scales: list[np.ndarray | None] = [None] * len(parts)
    gathered: list[PartColumns | None] = [None] * len(parts)
    short, rounds = list(range(len(parts))), 0
    while short:
        rounds += 1
        keeps = [partial(_head, plan, scales[i]) for i in short]
        fetched = gather_parts(store, [parts[i] for i in short], stages, config, dropped, keeps)
        for index, columns in zip(short, fetched, strict=True):
            gathered[index] = columns
        pool = stack(parts, gathered, selection_fields(config))
        pairs = short_parts(pool, gathered, plan)
        for index, order in pairs:
            if scales[index] is None:
                scales[index] = np.ones(len(gathered[index].left_out_min_tokens))
            scales[index][order] *= GROWTH
        short = sorted({index for index, _ in pairs})
    log.info(
        "%s: the parts sent their best-ranked %s of the pool's %s documents (%d round%s)",
        step,
        f"{len(pool):,}",
        f"{pool.totals.docs:,}",
        rounds,
        "s" if rounds > 1 else "",
    )
    pool.dropped = dict(dropped or {})
    pool.plan = plan
    return pool


def _head(plan: HeadPlan, scales: np.ndarray | None, pool: Pool) -> Head | None:
    """Per order of the part, its first (`share` + min_head) · scale documents, or (by tokens)
    its first documents until their tokens exceed (`share` + min_head · its mean tokens per
    document) · scale; None (every document) when the plan cuts nothing."""
    orders = plan.part_orders(pool)
    if orders is None:
        return None
    rows, lengths, left_out = [], np.zeros(len(orders), np.int64), np.full(len(orders), np.inf)
    for index, (order, share) in enumerate(orders):
        scale = 1.0 if scales is None else scales[index]
        count = len(order) if share is None else _head_length(plan, pool, order, share, scale)
        rows.append(order[:count])
        lengths[index] = min(count, len(order))
        if count < len(order):
            left_out[index] = pool.tokens[order[count:]].min()
    kept = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    return Head(kept, lengths, left_out)


def _head_length(plan: HeadPlan, pool: Pool, order: np.ndarray, share: float, scale: float) -> int:
    """The head's length: its share and min_head documents, both `scale` times over (so a head
    grows even when the part expects to fill none of the limit)."""
    if not plan.by_tokens:
        return min(len(order), math.ceil(scale * (share + plan.min_head)))
    tokens = scale * (share + plan.min_head * float(pool.tokens.mean())) if len(pool) else 0
    return int(np.searchsorted(np.cumsum(pool.tokens[order]), tokens, side="right")) + 1


def short_parts(pool: Pool, gathered: list[PartColumns], plan: HeadPlan) -> list[tuple[int, int]]:
    """The (part, order) pairs whose left-out documents the walk of that order over `pool`
    could have taken: the limit left after the part's last document in the walk is at least the
    fewest tokens of a document of the order it left out (for a document limit, at least 1)."""
    cut = [i for i, columns in enumerate(gathered) if columns.left_out_min_tokens is not None]
    if not cut:
        return []
    fewest = min(float(np.min(gathered[part].left_out_min_tokens, initial=np.inf)) for part in cut)
    short = []
    for index, walk in enumerate(plan.walks(pool)):
        if walk.limit is None:
            continue
        left_out = np.full(len(gathered), np.inf)
        left_out[cut] = [gathered[part].left_out_min_tokens[index] for part in cut]
        flagged = walk.short(pool, _sent(gathered, index), left_out, fewest) & np.isfinite(left_out)
        short += [(int(part), index) for part in np.flatnonzero(flagged)]
    return short


def _sent(gathered: list[PartColumns], order: int) -> np.ndarray:
    """Per part, how many of the order's first documents it sent (−1: all it has in it)."""
    return np.array(
        [-1 if c.head_lengths is None else int(c.head_lengths[order]) for c in gathered],
        dtype=np.int64,
    )


def _limit_left_after(pool: Pool, walk: Walk, sent: np.ndarray) -> np.ndarray:
    """Per part, the walk's limit left after the last document the part sent for this order;
    the whole limit where it sent none."""
    order = walk.order
    sizes = pool.tokens[order] if walk.by_tokens else np.ones(len(order), dtype=np.int64)
    taken = np.zeros(len(pool), dtype=bool)
    taken[walk.taken(pool.tokens)] = True
    left_after = walk.limit - np.cumsum(np.where(taken[order], sizes, 0))
    last = last_sent(pool, order, sent)
    left = np.full(len(pool.parts), walk.limit, dtype=np.int64)
    left[last >= 0] = left_after[last[last >= 0]]
    return left


def last_sent(pool: Pool, order: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """Per part, the position in `order` (a walk's order of the gathered documents) of the last
    document the part sent for it: its `sent[part]`-th document in the order (others it sent for
    other orders rank after them); −1 where it sent none."""
    part_of = pool.part_index[order]
    by_part = np.argsort(part_of, kind="stable")  # positions, grouped by part, in walk order
    counts = np.bincount(part_of, minlength=len(pool.parts))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    head = np.where(sent < 0, counts, np.minimum(sent, counts))
    last = np.full(len(pool.parts), -1, dtype=np.int64)
    has = head > 0
    last[has] = by_part[starts[has] + head[has] - 1]
    return last
