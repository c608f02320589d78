"""Quad with its documents on shards (distsel.methods.quad.documents) plays exactly the bandit
that held the pool whole (tests/quad_reference.py): the same draws, rewards, acceptances, audit,
fill and selection, whatever the cut into shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quad_reference
from quad_reference import acceptance_threshold

from distsel.algorithms.influence_model import pool_features
from distsel.core.config import Budget
from distsel.core.samplers import descending
from distsel.methods.quad import make_bandit
from distsel.methods.quad.documents import QuadDocuments, key_value, order_keys
from distsel.methods.quad.options import QuadOptions


def random_pool(seed: int):
    """Clusters of uneven sizes, laid out so that some shards hold most of an arm; influence
    smooth in the embedding, with ties (rounded) in some pools; tokens from 1 to 400."""
    rng = np.random.default_rng(seed)
    arms = int(rng.integers(6, 25))
    size = int(rng.integers(400, 1200))
    weights = rng.dirichlet(np.full(arms, 0.7))
    clusters = rng.choice(arms, size=size, p=weights)
    if seed % 2:
        clusters = np.sort(clusters)  # an arm lies in one or two shards
    clusters[:arms] = np.arange(arms)  # every arm has a document
    dim = 6
    centres = rng.standard_normal((arms, dim))
    embeddings = centres[clusters] + 0.8 * rng.standard_normal((size, dim))
    influence = embeddings @ rng.standard_normal(dim) + 0.3 * rng.standard_normal(size)
    if seed % 3 == 0:
        influence = np.round(influence, 1)
    classifier = influence + rng.standard_normal(size)
    keys = rng.integers(0, 2**63, size=size, dtype=np.uint64)
    tokens = rng.integers(1, 400, size=size)
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return clusters, embeddings, influence, classifier, keys, tokens, distances / distances.max()


def options_for(seed: int, within_cluster: str) -> QuadOptions:
    rng = np.random.default_rng(1000 + seed)
    return QuadOptions(
        within_cluster=within_cluster,
        arms_per_round=int(rng.integers(2, 6)),
        draws_per_arm=int(rng.integers(3, 8)),
        max_evaluated=float(rng.choice([0.05, 0.1, 0.2])),
        classifier_weight=float(rng.choice([0.0, 1.0])),
        scale=str(rng.choice(["standardized", "raw"])),
        tau=float(rng.choice([0.0, 0.1])),
        rounds=int(rng.choice([8, 200])),
    )


def budget_for(seed: int, tokens: np.ndarray) -> Budget:
    if seed % 2:
        return Budget(tokens=int(tokens.sum() * (0.05 + 0.1 * (seed % 3))))
    return Budget(docs=int(len(tokens) * (0.04 + 0.05 * (seed % 3))))


def scorer(influence):
    return lambda groups: [influence[g] for g in groups]


@pytest.mark.parametrize("seed", range(12))
def test_the_sharded_predicted_bandit_plays_the_bandit_held_whole(seed):
    clusters, embeddings, influence, classifier, keys, tokens, distances = random_pool(seed)
    options = options_for(seed, "predicted")
    budget = budget_for(seed, tokens)
    features = pool_features(embeddings, tokens, classifier)
    shards = 1 + seed % 5
    arguments = (clusters, keys, tokens, distances, options, budget, seed)
    sharded = make_bandit(*arguments, features, classifier, shards=shards)
    z = sharded.docs.column("classifier")
    whole = quad_reference.PredictedQuadBandit(*arguments, features, classifier, z)
    whole.audit_share = sharded.audit_share = [0.25, 0.5, 0.0][seed % 3]
    whole.fill_confidence = sharded.fill_confidence = [0.0, 1.0][seed % 2]
    chosen = sharded.run(scorer(influence))
    assert chosen.tolist() == whole.run(scorer(influence)).tolist()
    assert sharded.state.history == whole.state.history
    assert sharded.state.filled == whole.state.filled
    assert sharded.state.scored_rows == whole.state.scored_rows
    assert sharded.docs.column("values").tolist() == whole.values.tolist()


@pytest.mark.parametrize("seed", range(8))
def test_the_sharded_paper_bandit_plays_the_bandit_held_whole(seed):
    clusters, _, influence, _, keys, tokens, distances = random_pool(seed)
    options = options_for(seed, "random")
    budget = budget_for(seed, tokens)
    arguments = (clusters, keys, tokens, distances, options, budget, seed)
    sharded = make_bandit(*arguments, shards=1 + seed % 4)
    whole = quad_reference.QuadBandit(*arguments)
    assert sharded.run(scorer(influence)).tolist() == whole.run(scorer(influence)).tolist()
    assert sharded.state.history == whole.state.history
    assert sharded.state.cursors == whole.state.cursors
    assert (
        sharded.summary()["selected_per_cluster"] == whole.summary(clusters)["selected_per_cluster"]
    )


@pytest.mark.parametrize("shards", [1, 4])
def test_the_threshold_is_the_walk_over_the_untaken_documents(shards):
    rng = np.random.default_rng(shards)
    size = 500
    values = np.round(rng.standard_normal(size), 2)  # ties
    values[:3] = [-0.0, 0.0, -np.inf]
    tokens = rng.integers(1, 50, size)
    keys = rng.integers(0, 2**63, size=size, dtype=np.uint64)
    documents = QuadDocuments.from_arrays(np.zeros(size, np.int64), keys, tokens, 1, shards=shards)
    for shard, held in documents.actors.worker.held.items():  # in-process: one worker
        cut = slice(int(documents.bounds[shard]), int(documents.bounds[shard + 1]))
        held.values = values[cut]
    taken = rng.random(size) < 0.3
    documents.mark(np.flatnonzero(taken), taken=True)
    untaken = np.flatnonzero(~taken)
    order = untaken[descending(values[untaken], keys[untaken])]
    for docs_left in [1, 2, 50, len(untaken), len(untaken) + 1, 0]:
        expected = acceptance_threshold(values, order, docs_left=docs_left)
        assert documents.threshold(docs_left, 0) == expected
    for tokens_left in [0, 1, 37, 2000, int(tokens[untaken].sum()), int(tokens.sum()) + 1]:
        expected = acceptance_threshold(values, order, tokens=tokens, tokens_left=tokens_left)
        assert documents.threshold(None, tokens_left) == expected


def test_order_keys_keep_the_order_of_the_values():
    values = np.array([-np.inf, -1e300, -2.0, -1.0, -1e-300, 0.0, 1e-300, 1.0, 3.5, np.inf])
    keys = order_keys(values)
    assert np.all(np.diff(keys) > 0)
    assert [key_value(int(k)) for k in keys] == values.tolist()
    assert order_keys(np.array([math.nan]))[0] == keys[0], "NaN ranks as −inf"
