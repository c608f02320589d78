"""k-means against brute force and a single-process Lloyd; the distributed fit on a local Ray;
the cluster stage's prepare and scoring on real parts."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from helpers import base_config
from sklearn.metrics import adjusted_rand_score

from distsel.algorithms import kmeans
from distsel.core.config import parse_config
from distsel.core.runner import score_part
from distsel.core.stage import StageContext
from distsel.core.storage import Store
from distsel.core.vectors import embedding_array, embedding_matrix
from distsel.methods import cluster as clustering
from distsel.methods.cluster import (
    ClusterStage,
    assign,
    centroid_distances,
    default_clusters,
    default_sample_size,
    fit_kmeans,
    kmeans_plus_plus,
    load_centroid_distances,
    load_centroids,
    partial_sums,
    sample_embeddings,
    update_centroids,
)

METRICS = ["cosine", "l2"]


def blobs(
    n_blobs: int = 6, per_blob: int = 60, dim: int = 16, noise: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Points around random unit directions (well apart in angle and in space), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_blobs), per_blob)
    points = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))
    return points[order].astype(np.float32), labels[order]


def write_parts(root: Path, x: np.ndarray, cuts: list[int], docs: bool = False) -> list[str]:
    """scores/embed/<part> (id + embedding) for rows split at `cuts`; docs/<part> too if asked."""
    store, parts = Store(str(root)), []
    for index, rows in enumerate(np.split(np.arange(len(x)), cuts)):
        part = f"part-{index:05d}.parquet"
        ids = [f"doc-{row}" for row in rows]
        embeddings = pa.table({"id": ids, "embedding": embedding_array(x[rows])})
        store.write_table(f"scores/embed/{part}", embeddings)
        if docs:
            texts = [f"document {row}" for row in rows]
            tokens = np.full(len(rows), 3, dtype=np.int64)
            store.write_table(
                f"docs/{part}", pa.table({"id": ids, "text": texts, "tokens_approx": tokens})
            )
        parts.append(part)
    return parts


def brute_distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        return 1 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sqrt(((a - b) ** 2).sum()))


def brute_assign(x: np.ndarray, centroids: np.ndarray, metric: str):
    labels, distances = [], []
    for row in x:
        options = [brute_distance(row, c, metric) for c in centroids]
        labels.append(int(np.argmin(options)))
        distances.append(min(options))
    return np.array(labels), np.array(distances)


def local_lloyd(x: np.ndarray, init: np.ndarray, metric: str, updates: int):
    """Plain single-process Lloyd in float64: (centroids, sizes, inertia history)."""
    points = x.astype(np.float64)
    if metric == "cosine":
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    centroids, history = init.astype(np.float64), []
    for step in range(updates + 1):
        squared = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        labels = squared.argmin(axis=1)
        terms = squared[np.arange(len(points)), labels]
        history.append(float((terms / 2 if metric == "cosine" else terms).sum()))
        sizes = np.bincount(labels, minlength=len(centroids))
        if step == updates:
            return centroids, sizes, history
        assert sizes.all(), "the reference does not re-seed empty clusters"
        means = np.stack([points[labels == j].mean(axis=0) for j in range(len(centroids))])
        if metric == "cosine":
            means /= np.linalg.norm(means, axis=1, keepdims=True)
        centroids = means


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_default_clusters():
    assert [default_clusters(n) for n in (0, 1, 8, 180, 200, 20_000)] == [2, 2, 2, 9, 10, 100]
    assert default_clusters(10**12) == 10_000
    assert default_sample_size(3) == 10_000
    assert default_sample_size(2_000) == 40_000
    assert default_sample_size(10_000) == 100_000


@pytest.mark.parametrize("metric", METRICS)
def test_kmeans_plus_plus_is_seeded_and_distinct(metric: str):
    x = np.random.default_rng(1).standard_normal((300, 8))
    first = kmeans_plus_plus(x, 40, seed=7, metric=metric)
    assert np.array_equal(first, kmeans_plus_plus(x, 40, seed=7, metric=metric))
    assert not np.array_equal(first, kmeans_plus_plus(x, 40, seed=8, metric=metric))
    assert len(set(first.tolist())) == 40
    assert sorted(kmeans_plus_plus(x, 300, seed=0, metric=metric).tolist()) == list(range(300))


def test_kmeans_plus_plus_spreads_over_blobs_and_survives_duplicates():
    x, labels = blobs()
    assert len(set(labels[kmeans_plus_plus(x, 6, seed=0)].tolist())) == 6
    same = np.ones((5, 4))
    assert sorted(kmeans_plus_plus(same, 5, seed=0, metric="l2").tolist()) == list(range(5))
    with pytest.raises(ValueError, match="k must be"):
        kmeans_plus_plus(same, 6, seed=0)


@pytest.mark.parametrize("metric", METRICS)
def test_assign_matches_brute_force(metric: str):
    rng = np.random.default_rng(2)
    x, centroids = rng.standard_normal((60, 8)), rng.standard_normal((7, 8))
    labels, distances = assign(x, centroids, metric)
    want_labels, want_distances = brute_assign(x, centroids, metric)
    assert labels.dtype == np.int32
    assert np.array_equal(labels, want_labels)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_assign_in_blocks_equals_one_block_with_bounded_memory(metric, monkeypatch):
    rng = np.random.default_rng(3)
    x, centroids = rng.standard_normal((3_000, 16)), rng.standard_normal((1_000, 16))
    whole = assign(x, centroids, metric)
    monkeypatch.setattr(kmeans, "BLOCK_ELEMENTS", 1 << 16)
    tracemalloc.start()
    blocked = assign(x, centroids, metric)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(whole[0], blocked[0])
    np.testing.assert_allclose(whole[1], blocked[1], rtol=1e-12)
    full_matrix = len(x) * len(centroids) * 8
    assert peak < full_matrix / 10, f"peak {peak} bytes"


@pytest.mark.parametrize("metric", METRICS)
def test_partial_sums_match_direct_computation(metric: str):
    rng = np.random.default_rng(4)
    x, centroids = rng.standard_normal((80, 6)).astype(np.float32), rng.standard_normal((5, 6))
    sums, counts, inertia = partial_sums(x, centroids, metric)
    labels, distances = brute_assign(x, centroids, metric)
    points = x.astype(np.float64)
    if metric == "cosine":
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    for j in range(len(centroids)):
        np.testing.assert_allclose(sums[j], points[labels == j].sum(axis=0), atol=1e-5)
    assert np.array_equal(counts, np.bincount(labels, minlength=5))
    want = distances.sum() if metric == "cosine" else (distances**2).sum()
    assert inertia == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_centroid_distances_match_brute_force(metric: str):
    centroids = np.random.default_rng(5).standard_normal((9, 5))
    got = centroid_distances(centroids, metric)
    want = [[brute_distance(a, b, metric) for b in centroids] for a in centroids]
    assert got.shape == (9, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.array(want), atol=1e-6)
    assert np.all(np.diag(got) == 0)


@pytest.mark.parametrize("metric", METRICS)
def test_empty_cluster_takes_the_farthest_sample_point(metric: str):
    sample = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.05]])
    sums = np.array([[1.9, 0.1], [0.0, 1.0], [0.0, 0.0]])
    counts = np.array([2, 1, 0])
    got = update_centroids(sums, counts, np.zeros((3, 2)), sample, metric)
    unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    np.testing.assert_allclose(got[2], unit[3] if metric == "cosine" else sample[3])
    mean = sums[0] / 2 if metric == "l2" else sums[0] / np.linalg.norm(sums[0])
    np.testing.assert_allclose(got[0], mean)


# ---------------------------------------------------------------------------------------------
# Distributed fit on a local Ray


@pytest.mark.parametrize("metric", METRICS)
def test_fit_recovers_blobs(ray_local, tmp_path: Path, metric: str):
    x, truth = blobs()
    parts = write_parts(tmp_path, x, [100, 250])
    result = fit_kmeans(Store(str(tmp_path)), parts, 6, metric, seed=0)
    labels, _ = assign(x, result.centroids, metric)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert sorted(result.sizes.tolist()) == [60] * 6
    assert result.inertia == result.history[-1]
    assert result.iterations == len(result.history) - 1 <= 25


@pytest.mark.parametrize("metric", METRICS)
def test_fit_equals_single_process_lloyd(ray_local, tmp_path: Path, metric: str, monkeypatch):
    x, _ = blobs(seed=1)
    parts = write_parts(tmp_path, x, [70, 200])
    store, k, seed = Store(str(tmp_path)), 9, 3
    result = fit_kmeans(store, parts, k, metric, seed=seed, max_iter=6, tol=0)

    sample = sample_embeddings(store, parts, default_sample_size(k), seed)
    assert len(sample) == len(x)  # a small pool is sampled whole, in key order
    if metric == "cosine":
        sample = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    init = sample[kmeans_plus_plus(sample, k, seed, metric)]
    centroids, sizes, history = local_lloyd(x, init, metric, result.iterations)

    np.testing.assert_allclose(result.centroids, centroids, atol=1e-6)
    assert np.array_equal(result.sizes, sizes)
    np.testing.assert_allclose(result.history, history, rtol=1e-5)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(history, history[1:], strict=False))
    assert all(
        b <= a * (1 + 1e-9) for a, b in zip(result.history, result.history[1:], strict=False)
    )

    monkeypatch.setattr(clustering, "REDUCE_FANIN", 2)  # parts' sums added by a tree of tasks
    again = fit_kmeans(store, parts[::-1], k, metric, seed=seed, max_iter=6, tol=0)
    np.testing.assert_allclose(again.centroids, result.centroids, atol=1e-12)
    monkeypatch.setattr(clustering, "SUM_TASKS", 2)  # a task sums two parts of the three
    in_runs = fit_kmeans(store, parts, k, metric, seed=seed, max_iter=6, tol=0)
    np.testing.assert_allclose(in_runs.centroids, result.centroids, atol=1e-12)
    assert np.array_equal(in_runs.sizes, result.sizes)


def test_sum_runs_cut_the_parts_in_order_into_at_most_the_tasks():
    parts = [f"p{i}" for i in range(10)]
    assert clustering.sum_runs(parts, 4) == [parts[0:2], parts[2:5], parts[5:8], parts[8:10]]
    assert clustering.sum_runs(parts[:3], 4) == [["p0"], ["p1"], ["p2"]]
    assert clustering.sum_runs([], 4) == []


def test_fit_with_large_k_is_quick(ray_local, tmp_path: Path):
    x = np.random.default_rng(6).standard_normal((6_000, 16)).astype(np.float32)
    parts = write_parts(tmp_path, x, [2_000, 4_000])
    began = time.perf_counter()
    result = fit_kmeans(Store(str(tmp_path)), parts, 2_000, "cosine", seed=0, max_iter=10)
    assert time.perf_counter() - began < 20
    assert result.centroids.shape == (2_000, 16)
    assert result.sizes.sum() == 6_000
    assert all(
        b <= a * (1 + 1e-9) for a, b in zip(result.history, result.history[1:], strict=False)
    )


def test_fit_rejects_more_clusters_than_rows(ray_local, tmp_path: Path):
    parts = write_parts(tmp_path, blobs(per_blob=2)[0], [5])
    with pytest.raises(ValueError, match="k must be"):
        fit_kmeans(Store(str(tmp_path)), parts, 13, "cosine", seed=0)


# ---------------------------------------------------------------------------------------------
# The stage


def stage_context(tmp_path: Path, seed: int) -> StageContext:
    x, _ = blobs(per_blob=30, seed=2)
    output = tmp_path / "out"
    parts = write_parts(output, x, [50, 120], docs=True)
    config = parse_config({**base_config([tmp_path / "in.jsonl"], output), "seed": seed})
    return StageContext(config, Store(str(output)), parts)


def test_stage_prepares_and_assigns(ray_local, tmp_path: Path):
    context = stage_context(tmp_path, seed=0)
    stage = ClusterStage.from_config(context.config, ClusterStage.default_resources)
    assert (stage.k, stage.metric) == (None, "cosine")
    stage.prepare(context)
    store = context.store

    assert stage.k == default_clusters(180) == 9
    centroids = load_centroids(store)
    np.testing.assert_array_equal(centroids, stage.centroids)
    distances = load_centroid_distances(store)
    np.testing.assert_allclose(distances, centroid_distances(centroids, "cosine"), atol=1e-6)
    summary = stage.summary
    assert summary["clusters"] == 9 and summary["metric"] == "cosine"
    assert summary["sizes_min"] >= 1 and summary["sizes_max"] <= 180
    assert {"iterations", "inertia", "sizes_median"} <= summary.keys()

    for part in context.parts:
        assert score_part(stage, store, part)[0] > 0
        scored = store.read_table(f"scores/cluster/{part}")
        embeddings = store.read_table(f"scores/embed/{part}").column("embedding")
        labels, distance = assign(embedding_matrix(embeddings), centroids, "cosine")
        assert scored.schema.field("cluster").type == pa.int32()
        assert scored.schema.field("cluster_distance").type == pa.float32()
        assert np.array_equal(scored.column("cluster").to_numpy(), labels)
        np.testing.assert_allclose(scored.column("cluster_distance").to_numpy(), distance)

    other = stage_context(tmp_path / "other", seed=1)
    refit = ClusterStage.from_config(other.config, ClusterStage.default_resources)
    refit.prepare(other)
    assert refit.fingerprint()["seed"] == 1
    assert refit.fingerprint()["centroids"] != stage.fingerprint()["centroids"]


def test_stage_takes_k_from_quad_or_from_a_mixture_over_clusters():
    def stage_for(**sections: Any) -> ClusterStage:
        raw = {"input": {"paths": ["x"]}, "output": {"path": "y"}, "seed": 3, **sections}
        return ClusterStage.from_config(parse_config(raw), ClusterStage.default_resources)

    quad = stage_for(
        select={"method": "quad", "budget": {"docs": 1}, "quad": {"clusters": 4, "metric": "l2"}},
        target={"paths": ["t"]},
    )
    assert (quad.k, quad.metric, quad.seed) == (4, "l2", 3)
    mixture = stage_for(
        select={"method": "mixture", "budget": {"docs": 1}},
        target={"paths": ["t"]},
        mixture={"group_field": "cluster", "clusters": 5},
    )
    assert (mixture.k, mixture.metric) == (5, "cosine")
    bare = stage_for(select={"method": "all"})
    assert (bare.k, bare.metric) == (None, "cosine")
    assert bare.fingerprint()["centroids"] is None
