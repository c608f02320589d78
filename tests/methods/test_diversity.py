"""MIG's lazy greedy against plain greedy over the information function itself, a hand-computed
case, and Diversify-and-Conquer's quotas."""

from __future__ import annotations

import numpy as np
import pytest

from distsel.algorithms.diversity import centroid_graph, diversify_rounds, mig_greedy


def information(chosen: list[int], clusters, quality, graph, alpha) -> float:
    """F(S) = Σ_l φ(Σ_{i ∈ S} A[l, c_i] q_i), from the definition."""
    held = np.zeros(len(graph))
    for document in chosen:
        nodes, weights = graph[clusters[document]]
        held[nodes] += weights * quality[document]
    return float(np.sum(held**alpha))


def plain_greedy(clusters, quality, graph, limit, alpha) -> list[int]:
    chosen: list[int] = []
    for _ in range(limit):
        rest = [i for i in range(len(clusters)) if i not in chosen]
        base = information(chosen, clusters, quality, graph, alpha)
        gains = [information([*chosen, i], clusters, quality, graph, alpha) - base for i in rest]
        chosen.append(rest[int(np.argmax(gains))])
    return chosen


def test_mig_picks_by_hand_on_a_two_node_graph():
    """Two clusters joined by an edge of weight 0.2, φ = √: cluster 0 holds qualities 1 and 0.9,
    cluster 1 holds 0.7. First the 1 (gain √1 + √0.2 = 1.4472 against √0.7 + √0.14 = 1.2108).
    Then cluster 1's 0.7 gains √0.9 − √0.2 + √1.14 − 1 = 0.5692, cluster 0's 0.9 gains
    √1.9 − 1 + √0.38 − √0.2 = 0.5476: cluster 1 comes second, though its quality is lower."""
    graph = [(np.array([0, 1]), np.array([1.0, 0.2])), (np.array([1, 0]), np.array([1.0, 0.2]))]
    clusters = np.array([0, 0, 1])
    quality = np.array([1.0, 0.9, 0.7])
    chosen = mig_greedy(clusters, quality, graph, np.ones(3), 3, alpha=0.5)
    assert chosen.tolist() == [0, 2, 1]


@pytest.mark.parametrize("seed", range(4))
def test_lazy_greedy_equals_plain_greedy(seed):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(6, 5))
    graph = centroid_graph(centroids, neighbours=3)
    clusters = rng.integers(0, 6, size=40)
    quality = rng.uniform(0.05, 1, size=40)
    chosen = mig_greedy(clusters, quality, graph, np.ones(40), 15, alpha=0.6)
    assert chosen.tolist() == plain_greedy(clusters, quality, graph, 15, 0.6)


def test_the_graph_spreads_to_a_node_and_its_most_similar_ones():
    centroids = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]])
    nodes, weights = centroid_graph(centroids, neighbours=2, bandwidth=0.1)[0]
    assert nodes.tolist() == [0, 1, 2]
    cosine = [0.9 / np.hypot(0.9, 0.1), 0.5 / np.hypot(0.5, 0.5)]
    assert weights.tolist() == pytest.approx([1.0, *np.exp(-(1 - np.array(cosine)) / 0.1)])


def test_a_token_budget_passes_over_what_does_not_fit():
    graph = [(np.array([0]), np.array([1.0])), (np.array([1]), np.array([1.0]))]
    clusters = np.array([0, 1, 1])
    chosen = mig_greedy(clusters, np.array([1.0, 0.9, 0.8]), graph, np.array([5.0, 9.0, 3.0]), 9)
    assert chosen.tolist() == [0, 2], "9 tokens: the 9-token document no longer fits"


def test_diversify_gives_equal_quotas_then_follows_the_reward():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(4), 100)
    key = rng.random(400)
    reward = np.where(clusters == 2, 1.0, 0.0)
    flat = diversify_rounds(clusters, np.zeros(400), key, np.ones(400), 80, rounds=4)
    assert len(flat) == 80 and len(set(flat.tolist())) == 80
    assert np.bincount(clusters[flat], minlength=4).tolist() == [20, 20, 20, 20]
    steered = diversify_rounds(clusters, reward, key, np.ones(400), 80, rounds=4, temperature=0.5)
    counts = np.bincount(clusters[steered], minlength=4)
    first_round = diversify_rounds(clusters, reward, key, np.ones(400), 20, rounds=1)
    assert np.bincount(clusters[first_round], minlength=4).tolist() == [5, 5, 5, 5]
    assert counts[2] > 40 and counts.sum() == 80
    within = steered[clusters[steered] == 0]
    assert (np.diff(key[within]) > 0).all(), "a cluster's documents in random-key order"


@pytest.mark.slow
def test_mig_and_diversify_cover_more_clusters_than_the_classifier_top_k(tmp_path):
    """At 24 documents of 240, against the top 24 by the classifier's score (the same run's
    scores): more k-means clusters covered."""
    import pyarrow.parquet as pq
    from helpers import base_config, stdlib_paragraphs, write_jsonl

    from distsel.app import pipeline
    from distsel.core.config import parse_config
    from distsel.core.executor import LocalExecutor

    texts = stdlib_paragraphs(260)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": t} for t in texts[:240]])
    write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in texts[240:]])
    covered = {}
    for method in ("mig", "diversify"):
        raw = base_config([tmp_path / "corpus"], tmp_path / "out", method=method)
        raw["select"]["budget"] = {"docs": 24}
        raw["target"] = {"paths": [str(tmp_path / "target.jsonl")]}
        raw["stages"] = {"cluster": {"clusters": 12}, "classifier": {"negatives": 200}}
        with LocalExecutor().active():
            manifest = pipeline.run(parse_config(raw))
        assert manifest["selected_docs"] == 24
        selected = set(pq.read_table(tmp_path / "out" / "selected")["id"].to_pylist())
        scores = score_rows(tmp_path / "out")
        covered[method] = len({scores[i]["cluster"] for i in selected})
        assert manifest[method]["clusters_covered"] == covered[method]
    ranked = sorted(scores.values(), key=lambda row: -row["classifier_score"])
    top_k = len({row["cluster"] for row in ranked[:24]})
    assert covered["mig"] > top_k
    assert covered["diversify"] > top_k


def score_rows(output) -> dict[str, dict]:
    """Each document's cluster and classifier score, from scores/, by id."""
    import pyarrow.parquet as pq

    clusters = pq.read_table(output / "scores" / "cluster").to_pylist()
    classifier = pq.read_table(output / "scores" / "classifier").to_pylist()
    rows = {row["id"]: dict(row) for row in clusters}
    for row in classifier:
        rows[row["id"]]["classifier_score"] = row["classifier_score"]
    return rows
