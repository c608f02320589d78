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

Several rankings (one per target task, taken round-robin) are not cut: every part sends every
document.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import numpy as np

from distsel.core.config import Budget, Config
from distsel.core.pool import (
    PartColumns,
    Pool,
    gather_parts,
    gather_pool,
    selection_fields,
    stack,
)
from distsel.core.samplers import fill_budget
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


def gather_ranked(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    rankings: Rankings,
    dropped: dict[str, np.ndarray] | None = None,
) -> Pool:
    """The pool a ranking selector needs: each part's head of `rankings`, grown until the walk
    over the heads is the walk over the whole pool. `config.select.budget` is resolved (in
    documents or tokens)."""
    budget = config.select.budget
    assert budget is not None and (budget.docs or budget.tokens), "a resolved budget"
    if not parts:
        return gather_pool(store, parts, stages, config, dropped)
    limit = budget.tokens if budget.tokens is not None else budget.docs
    heads = [HEAD_MARGIN * limit / len(parts)] * len(parts)
    gathered: list[PartColumns | None] = [None] * len(parts)
    short, rounds, by_tokens = list(range(len(parts))), 0, budget.tokens is not None
    while short:
        rounds += 1
        keeps = [partial(_head, rankings, config, heads[i], by_tokens) for i in short]
        fetched = gather_parts(store, [parts[i] for i in short], stages, config, dropped, keeps)
        for index, columns in zip(short, fetched, strict=True):
            gathered[index] = columns
        pool = stack(parts, gathered, selection_fields(config))
        short = short_parts(pool, gathered, rankings(pool, config), config.select.budget)
        for index in short:
            heads[index] *= GROWTH
    log.info(
        "select: the parts sent their best-ranked %s of the pool's %s documents (%d round%s)",
        f"{len(pool):,}",
        f"{pool.totals.docs:,}",
        rounds,
        "s" if rounds > 1 else "",
    )
    pool.dropped = dict(dropped or {})
    return pool


def _head(
    rankings: Rankings, config: Config, share: float, by_tokens: bool, pool: Pool
) -> np.ndarray | None:
    """The first `share` + MIN_HEAD documents of the part's ranking, or (`by_tokens`) its first
    documents until their tokens exceed `share` + MIN_HEAD · its mean tokens per document;
    None (every document) with several rankings."""
    orders = rankings(pool, config)
    if len(orders) != 1:
        return None
    order = orders[0]
    if not by_tokens:
        return order[: math.ceil(share) + MIN_HEAD]
    tokens = share + MIN_HEAD * float(pool.tokens.mean()) if len(pool) else 0
    return order[: int(np.searchsorted(np.cumsum(pool.tokens[order]), tokens, side="right")) + 1]


def short_parts(
    pool: Pool, gathered: list[PartColumns], orders: list[np.ndarray], budget: Budget
) -> list[int]:
    """The parts whose left-out documents the walk of `orders[0]` over `pool` could have taken:
    the budget left after the part's last document in the walk is at least the fewest tokens of a
    document it left out (for a document budget, at least 1)."""
    cut = [i for i, columns in enumerate(gathered) if columns.left_out_min_tokens is not None]
    if not cut:
        return []
    order = orders[0]
    by_tokens = budget.tokens is not None
    sizes = pool.tokens[order] if by_tokens else np.ones(len(order), dtype=np.int64)
    taken = np.zeros(len(pool), dtype=bool)
    taken[fill_budget(order, pool.tokens, budget)] = True
    limit = budget.tokens if by_tokens else budget.docs
    left_after = limit - np.cumsum(np.where(taken[order], sizes, 0))
    last = np.full(len(pool.parts), -1, dtype=np.int64)
    np.maximum.at(last, pool.part_index[order], np.arange(len(order)))
    short = []
    for index in cut:
        left = left_after[last[index]] if last[index] >= 0 else limit
        smallest = gathered[index].left_out_min_tokens if by_tokens else 1
        if left >= smallest:
            short.append(index)
    return short
