from __future__ import annotations

import numpy as np
import pytest

from distsel.core.config import Budget
from distsel.core.pool import random_keys
from distsel.core.samplers import fill_budget, random_order


def greedy_reference(order, tokens, budget):
    taken, remaining = [], budget
    for index in order:
        if tokens[index] <= remaining:
            taken.append(index)
            remaining -= tokens[index]
    return taken


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_matches_a_plain_greedy_fill(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 500, size=300)
    order = rng.permutation(300)
    budget = int(tokens.sum() * 0.3)
    chosen = fill_budget(order, tokens, Budget(tokens=budget))
    assert chosen.tolist() == greedy_reference(order, tokens, budget)
    assert tokens[chosen].sum() <= budget
    assert budget - tokens[chosen].sum() < tokens[np.setdiff1d(order, chosen)].min()


def test_doc_budget_is_exact_and_capped_by_the_pool():
    order = np.array([4, 2, 0, 1, 3])
    assert fill_budget(order, np.ones(5, int), Budget(docs=3)).tolist() == [4, 2, 0]
    assert fill_budget(order, np.ones(5, int), Budget(docs=50)).tolist() == order.tolist()


def test_random_keys_depend_on_seed_and_id_only():
    ids = [f"shard.jsonl:{i}" for i in range(1000)]
    keys = random_keys(ids, seed=3)
    assert np.array_equal(keys, random_keys(ids, seed=3))
    assert np.array_equal(random_keys(ids[::-1], seed=3), keys[::-1]), "order does not matter"
    assert not np.array_equal(keys, random_keys(ids, seed=4))
    order = random_order(keys)
    assert sorted(order.tolist()) == list(range(1000))
    first_half = (order[:500] < 500).mean()
    assert 0.4 < first_half < 0.6, "the order is not biased towards early ids"
