"""The mixture's reads of the pool, part by part (distsel.methods.mixture.sampling), against the
same rules over the whole pool held in memory: group sizes, the search's held-out slice and
group samples, and the selection by the weights."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distsel.algorithms.simplex import water_fill
from distsel.core import layout
from distsel.core.candidates import gather_heads
from distsel.core.config import Budget, parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.pool import gather_pool
from distsel.core.samplers import fill_budget, random_order
from distsel.core.storage import Store
from distsel.methods.mixture.sampling import (
    PoolParts,
    group_samples,
    heldout_sample,
    mixture_plan,
    sample_by_weights,
)

GROUPS = ["a", "b", "c", "d"]


def reference_sample(pool, field: str, weights: dict, budget: Budget, seed: int) -> np.ndarray:
    """The sampling by weights written out over a pool held whole (the code before the plan):
    each group's random order filled to its water-filled share, then for tokens the documents
    left in the seed-mixed key order, to the tokens left."""
    values = pool.categories[field]
    names = sorted(set(values.tolist()) | set(weights))
    orders = {}
    for group in names:
        members = np.flatnonzero(values == group)
        orders[group] = members[random_order(pool.random_key[members])]
    w = np.array([max(0.0, float(weights.get(g, 0.0))) for g in names])
    sizes = [pool.tokens[orders[g]].sum() if budget.by_tokens else len(orders[g]) for g in names]
    shares = water_fill(budget.limit, w, np.array(sizes, dtype=np.int64))

    def take(order, share):
        if share <= 0:
            return np.zeros(0, np.int64)
        limit = Budget(tokens=int(share)) if budget.by_tokens else Budget(docs=int(share))
        return fill_budget(order, pool.tokens, limit)

    picked = np.concatenate([take(orders[g], s) for g, s in zip(names, shares, strict=True)])
    left = budget.limit - int(pool.tokens[picked].sum())
    if not budget.by_tokens or left <= 0:
        return picked
    rest = np.setdiff1d(np.arange(len(pool)), picked)
    keys = pool.random_key[rest] ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    return np.concatenate([picked, take(rest[random_order(keys)], left)])


def write_parts(store: Store, rng: np.random.Generator) -> list[str]:
    """Parts of random sizes (one may be empty) whose groups lean to one group per part, as
    shards of one domain do; heavy-tailed token counts."""
    parts = []
    for index in range(int(rng.integers(1, 7))):
        size = int(rng.integers(0, 90))
        leaning = rng.dirichlet([0.3] * len(GROUPS))
        groups = rng.choice(GROUPS, size=size, p=leaning).tolist()
        tokens = np.maximum(1, rng.pareto(1.2, size) * 20).astype(np.int64)
        part = f"p{index:03d}{layout.PART_SUFFIX}"
        table = {
            "id": [f"d{index}-{row}" for row in range(size)],
            "text": ["x"] * size,
            "tokens_approx": tokens,
            "group": pa.array(groups, pa.string()),
        }
        store.write_table(layout.docs(part), pa.table(table))
        parts.append(part)
    return parts


def make_config(root, budget: dict, seed: int):
    raw = {
        "input": {"paths": ["corpus/"], "group_field": "group"},
        "output": {"path": str(root)},
        "select": {"method": "mixture", "budget": budget},
        "target": {"paths": ["target.jsonl"]},
        "seed": seed,
    }
    return parse_config(raw)


def rows_of(pool, indices) -> list[tuple[int, int]]:
    return list(
        zip(pool.part_index[indices].tolist(), pool.row_index[indices].tolist(), strict=True)
    )


def dropped_rows(store: Store, parts: list[str], rng) -> dict[str, np.ndarray]:
    dropped = {}
    for part in parts[:2]:
        size = store.read_table(layout.docs(part)).num_rows
        if size > 3:
            dropped[part] = np.sort(rng.choice(size, 3, replace=False)).astype(np.int64)
    return dropped


@pytest.mark.parametrize("seed", range(10))
def test_the_selection_from_heads_is_the_selection_from_the_whole_pool(tmp_path, seed):
    """Document and token budgets, weights with zeros and a group the pool lacks, groups that
    run out: the plan's walks over the parts' heads, and sample_by_weights over the pool held
    whole, equal the reference."""
    rng = np.random.default_rng(seed)
    store = Store(str(tmp_path))
    parts = write_parts(store, rng)
    dropped = dropped_rows(store, parts, rng)
    total = sum(store.read_table(layout.docs(p)).num_rows for p in parts)
    budget = (
        {"docs": int(rng.integers(1, total + 5))}
        if seed % 2
        else {"tokens": int(rng.integers(1, 30 * total + 50))}
    )
    config = make_config(tmp_path, budget, seed)
    weights = dict(zip([*GROUPS, "absent"], rng.dirichlet([1.0] * 5), strict=True))
    weights["b"] = 0.0
    resolved = Budget(**budget)
    with LocalExecutor().active():
        whole = gather_pool(store, parts, [], config, dropped)
        sizes = PoolParts(store, parts, config, dropped).sizes()
        plan = mixture_plan(sizes, "group", weights, resolved, seed, {"mode": "tune"})
        heads = gather_heads(store, parts, [], config, plan, dropped)
    expected = rows_of(whole, reference_sample(whole, "group", weights, resolved, seed))
    assert rows_of(heads, heads.plan.chosen(heads)) == expected
    assert rows_of(whole, sample_by_weights(whole, "group", weights, resolved, seed)) == expected
    assert heads.plan.search == {"mode": "tune"}
    values = whole.categories["group"]
    assert sizes.groups == sorted(set(values.tolist()))
    assert sizes.docs.tolist() == [int((values == g).sum()) for g in sizes.groups]
    assert sizes.tokens.tolist() == [int(whole.tokens[values == g].sum()) for g in sizes.groups]


@pytest.mark.parametrize("seed", [*range(8), 500, 545])  # 500, 545: groups that run out
def test_the_search_samples_from_the_parts_are_the_ones_from_the_whole_pool(tmp_path, seed):
    """The held-out slice is the pool's first documents in random order; a group's sample, its
    documents after them, until their tokens reach the floor or the count is reached (every
    document of a group the held-out slice took whole). A group whose documents run out before
    the floor takes every part's documents of it."""
    rng = np.random.default_rng(100 + seed)
    store = Store(str(tmp_path))
    parts = write_parts(store, rng)
    dropped = dropped_rows(store, parts, rng)
    config = make_config(tmp_path, {"docs": 5}, seed)
    count, floor, most = int(rng.integers(0, 40)), float(rng.integers(1, 400)), 25
    with LocalExecutor().active():
        whole = gather_pool(store, parts, [], config, dropped)
        source = PoolParts(store, parts, config, dropped)
        sizes = source.sizes()
        count = min(count, len(whole) // 2)
        heldout = heldout_sample(source, count)
        sampled, samples = group_samples(source, sizes, heldout, floor, most)

    reference_heldout = random_order(whole.random_key)[:count]
    assert rows_of(heldout[0], heldout[1]) == rows_of(whole, reference_heldout)
    values = whole.categories["group"]
    for group, sample in zip(sizes.groups, samples, strict=True):
        members = np.flatnonzero(values == group)
        kept = np.setdiff1d(members, reference_heldout)
        members = kept if len(kept) else members
        order = members[random_order(whole.random_key[members])]
        reached = np.cumsum(whole.tokens[order]) >= floor
        length = int(np.argmax(reached)) + 1 if reached.any() else len(order)
        assert rows_of(sampled, sample) == rows_of(whole, order[: min(length, most)]), group
