"""The Quad bandit's arithmetic and bookkeeping, with a known influence landscape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distsel.config import Budget, QuadOptions
from distsel.select.quad import QuadBandit, neighbour_weights, ucb_scores
from distsel.storage import Store

ARMS, PER_ARM = 12, 40


def landscape(seed: int = 0):
    """12 clusters of 40 documents; clusters 3 and 7 hold the influential documents."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(ARMS), PER_ARM)
    quality = np.where(np.isin(np.arange(ARMS), [3, 7]), 1.0, -0.5)
    influence = quality[clusters] + 0.1 * rng.standard_normal(len(clusters))
    keys = rng.integers(0, 2**63, size=len(clusters), dtype=np.uint64)
    tokens = rng.integers(5, 50, size=len(clusters))
    centroids = rng.standard_normal((ARMS, 3))
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    return clusters, influence, keys, tokens, distances / distances.max()


def scorer(influence, calls=None):
    def score(groups):
        if calls is not None:
            calls.append([len(g) for g in groups])
        return [influence[g] for g in groups]

    return score


def make(budget=None, seed=0, **options):
    budget = budget or Budget(docs=60)
    clusters, influence, keys, tokens, distances = landscape()
    defaults = {"arms_per_round": 3, "draws_per_arm": 5, "docs_per_accept": 20, "rounds": 40}
    bandit = QuadBandit(
        clusters, keys, tokens, distances, QuadOptions(**{**defaults, **options}), budget, seed
    )
    return bandit, clusters, influence, tokens


def test_ucb_score_is_shared_mean_plus_exploration_bonus():
    distances = np.array([[0.0, 0.1, 0.5], [0.1, 0.0, 0.5], [0.5, 0.5, 0.0]])
    weights = neighbour_weights(distances, gamma=0.2)
    assert weights[0, 1] == pytest.approx(0.5) and weights[0, 2] == 0 and weights[0, 0] == 0
    sums, pulls = np.array([2.0, -1.0, 0.0]), np.array([2.0, 1.0, 0.0])
    live = np.array([True, True, True])
    scores = ucb_scores(sums, pulls, weights, alpha=0.3, live=live)
    n = pulls.sum()
    expected = [
        (2.0 + 0.5 * -1.0) / (2 + 0.5 * 1) + 0.3 * math.sqrt(2 * math.log(n) / 3),
        (-1.0 + 0.5 * 2.0) / (1 + 0.5 * 2) + 0.3 * math.sqrt(2 * math.log(n) / 2),
        0.0 + 0.3 * math.sqrt(2 * math.log(n) / 1),
    ]
    assert scores == pytest.approx(expected)


def test_an_unpulled_arm_inherits_its_neighbours_rewards_only():
    distances = np.array([[0.0, 0.05, 0.9], [0.05, 0.0, 0.9], [0.9, 0.9, 0.0]])
    weights = neighbour_weights(distances, gamma=0.2)
    scores = ucb_scores(
        np.array([3.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), weights, 0.0, np.ones(3, bool)
    )
    assert scores[1] == pytest.approx(3.0), "neighbour's mean reward, weight cancels out"
    assert scores[2] == 0.0, "too far to share"


def test_retired_arms_are_never_pulled_and_exhaustion_stops_the_run():
    bandit, clusters, influence, _ = make(budget=Budget(docs=10_000), rounds=1000)
    bandit.state.cursors[3] = PER_ARM
    assert 3 not in bandit.choose_arms()
    chosen = bandit.run(scorer(influence))
    assert bandit.state.done == "every arm exhausted"
    assert bandit.state.cursors == [PER_ARM] * ARMS
    assert len(set(chosen.tolist())) == len(chosen)


def test_good_clusters_are_found_and_docs_budget_is_exact():
    bandit, clusters, influence, _ = make(budget=Budget(docs=60))
    chosen = bandit.run(scorer(influence))
    assert len(chosen) == 60 and bandit.state.done == "budget reached"
    share_good = np.isin(clusters[chosen], [3, 7]).mean()
    assert share_good >= 0.6
    assert bandit.state.evaluated < len(clusters) * 0.5, "influence only on draws"
    first_accept = next(h for h in bandit.state.history if h["accepted"])
    arm = first_accept["accepted"][0]
    assert np.isin(bandit.orders[arm][:20], chosen).all(), "drawn docs count toward the m taken"


def test_token_budget_is_never_exceeded_and_cannot_take_more():
    bandit, _, influence, tokens = make(budget=Budget(tokens=1500))
    chosen = bandit.run(scorer(influence))
    used = int(tokens[chosen].sum())
    assert used <= 1500
    if bandit.state.done == "budget reached":
        rest = np.setdiff1d(
            np.arange(len(tokens)),
            np.concatenate(
                [order[:c] for order, c in zip(bandit.orders, bandit.state.cursors, strict=True)]
            ),
        )
        assert len(rest) == 0 or tokens[rest].min() > 1500 - used


def test_same_seed_same_selection():
    first = make(seed=4)[0].run(scorer(landscape()[1]))
    again = make(seed=4)[0].run(scorer(landscape()[1]))
    other = make(seed=5)[0].run(scorer(landscape()[1]))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_arms_are_scored_together_each_round():
    calls: list[list[int]] = []
    bandit, _, influence, _ = make()
    bandit.run(scorer(influence, calls))
    assert all(len(sizes) == 3 and set(sizes) <= {5} for sizes in calls)


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    clean, _, influence, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    expected = clean.run(scorer(influence))

    class Killed(Exception):
        pass

    rounds_played = []

    def dies_in_round_four(groups):
        rounds_played.append(1)
        if len(rounds_played) == 4:
            raise Killed
        return scorer(influence)(groups)

    store = Store(str(tmp_path / "out"))
    crashed, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    with pytest.raises(Killed):
        crashed.run(dies_in_round_four, store)
    assert store.read_json("_state/quad/state.json")["round"] == 3

    resumed, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    calls: list[list[int]] = []
    result = resumed.run(scorer(influence, calls), store)
    assert result.tolist() == expected.tolist()
    assert len(calls) == clean.state.round - 3, "finished rounds are not played again"
    assert resumed.state.history == clean.state.history

    changed, _, _, _ = make(budget=Budget(docs=90), docs_per_accept=10)
    assert not changed.resume(store), "another budget does not resume this run"
