"""k-means over the embed stage's vectors, fitted with distributed Lloyd steps, as the cluster
stage; the steps and their formulas are in distsel.algorithms.kmeans.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from distsel.algorithms.kmeans import (
    KMeansResult,
    Metric,
    assign,
    centroid_distances,
    check_metric,
    default_clusters,
    default_sample_size,
    kmeans_plus_plus,
    metric_points,
    partial_sums,
    update_centroids,
)
from distsel.core import layout
from distsel.core.config import Config, StrictModel
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage, StageContext
from distsel.core.storage import Store
from distsel.core.vectors import embedding_matrix


class ClusterOptions(StrictModel):
    """`stages.cluster`: k-means over the embeddings (k: by default min(round(√(N/2)), 10,000),
    or mixture.clusters for a mixture search over clusters)."""

    clusters: int | None = Field(default=None, ge=2)
    metric: Literal["cosine", "l2"] = "cosine"
    max_iter: int = Field(default=25, gt=0)


# per part, the rows a fit leaves out (distsel.core.stage.StageContext.left_out_of), or None
LeftOut = list[np.ndarray | None] | None
log = logging.getLogger("distsel")

REDUCE_FANIN = 16  # partial sums added per task of the reduction tree
# Tasks of one Lloyd iteration: each sums a run of consecutive parts, so the object store holds
# at most this many (k, dim) arrays whatever the number of parts (30.7 MB each at k = 10,000,
# dim = 384). Up to this many parts, one task per part.
SUM_TASKS = 256


def _embedding_path(part: str) -> str:
    return layout.scores("embed", part)


def _read_embeddings(store: Store, part: str, rows: np.ndarray | None = None) -> np.ndarray:
    column = store.read_table(_embedding_path(part), columns=["embedding"]).column("embedding")
    return embedding_matrix(column if rows is None else column.take(rows))


def _sample_part(
    store: Store, part: str, seed: int, below: int, left_out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: distsel.core.selector may one day import this module (Quad).
    from distsel.core.pool import random_keys

    ids = store.read_table(_embedding_path(part), columns=["id"]).column("id").to_pylist()
    keys = random_keys(ids, seed)
    rows = np.flatnonzero(keys < np.uint64(below))
    if left_out is not None:
        rows = np.setdiff1d(rows, left_out)
    return keys[rows], _read_embeddings(store, part, rows)


def _row_count(store: Store, parts: list[str]) -> int:
    return sum(store.row_counts([_embedding_path(part) for part in parts]))


def sample_embeddings(
    store: Store, parts: list[str], size: int, seed: int, left_out: LeftOut = None
) -> np.ndarray:
    """A seeded uniform sample of `size` embeddings (all when fewer): `sample_embedding_rows`."""
    return sample_embedding_rows(store, parts, size, seed, left_out)[1]


def sample_embedding_rows(
    store: Store, parts: list[str], size: int, seed: int, left_out: LeftOut = None
) -> tuple[np.ndarray, np.ndarray]:
    """The random keys (`random_keys(id, seed)`, uint64) and embeddings of a seeded uniform
    sample of `size` rows (all when fewer): the rows with the smallest keys, each part sending
    only the rows under a cut that keeps about 1.5 × size in all, and none of its `left_out`
    rows (StageContext.left_out_of). The sample is the same whatever the parts' order."""
    total = _row_count(store, parts)
    fraction = min(1.0, 1.5 * size / max(total, 1))
    cut = min(int(fraction * 2**64), 2**64 - 1)
    keys, vectors = _gather_sample(store, parts, seed, cut, left_out)
    if len(keys) < min(size, total) and fraction < 1:  # unlucky draw: take every row
        keys, vectors = _gather_sample(store, parts, seed, 2**64 - 1, left_out)
    order = np.argsort(keys, kind="stable")[:size]
    return keys[order], vectors[order]


def _gather_sample(
    store: Store, parts: list[str], seed: int, below: int, left_out: LeftOut = None
) -> tuple[np.ndarray, np.ndarray]:
    left_out = left_out or [None] * len(parts)
    calls = [(store, part, seed, below, rows) for part, rows in zip(parts, left_out, strict=True)]
    found = current().map(_sample_part, calls)
    return np.concatenate([k for k, _ in found]), np.concatenate([v for _, v in found])


Stats = tuple[np.ndarray, np.ndarray, float]


def _part_sums(
    store: Store, part: str, centroids: np.ndarray, metric: str, left_out: np.ndarray | None
) -> Stats:
    embeddings = _read_embeddings(store, part)
    if left_out is not None:
        embeddings = np.delete(embeddings, left_out, axis=0)
    return partial_sums(embeddings, centroids, metric)


def _run_sums(
    store: Store,
    parts: list[str],
    centroids: np.ndarray,
    metric: str,
    left_out: dict[str, np.ndarray] | None = None,
) -> Stats:
    """`partial_sums` of consecutive parts (less their `left_out` rows), read one at a time and
    added in part order."""
    left_out = left_out or {}
    return _add([_part_sums(store, p, centroids, metric, left_out.get(p)) for p in parts])


def _add(stats: tuple[Stats, ...] | list[Stats]) -> Stats:
    """Σ of (sums, counts, inertia) over `stats`, in the order given."""
    sums = np.array(stats[0][0], dtype=np.float64)
    counts = np.array(stats[0][1], dtype=np.int64)
    inertia = float(stats[0][2])
    for part_sums, part_counts, part_inertia in stats[1:]:
        sums += part_sums
        counts += part_counts
        inertia += part_inertia
    return sums, counts, inertia


def _add_all(*stats: Stats) -> Stats:
    return _add(stats)


def sum_runs(parts: list[str], tasks: int = SUM_TASKS) -> list[list[str]]:
    """`parts` cut into at most `tasks` runs of consecutive parts, of sizes differing by at most
    one. It depends on the parts alone, never on the cluster, so every executor adds the same
    numbers in the same order."""
    runs = min(len(parts), tasks)
    bounds = np.linspace(0, len(parts), runs + 1).round().astype(int)
    return [parts[bounds[i] : bounds[i + 1]] for i in range(runs)]


def _distributed_sums(
    store: Store,
    parts: list[str],
    centroids: np.ndarray,
    metric: str,
    left_out: dict[str, np.ndarray] | None = None,
) -> Stats:
    """`partial_sums` of every part, each task adding those of one run of consecutive parts
    (`sum_runs`: at most SUM_TASKS), then added in order by a tree of tasks REDUCE_FANIN wide.
    The object store holds at most SUM_TASKS (k, dim) float64 arrays per Lloyd iteration,
    whatever the number of parts, and the driver receives at most REDUCE_FANIN."""
    executor = current()
    shared = executor.share(centroids)
    left_out = left_out or {}
    calls = [
        (store, run, shared, metric, {p: left_out[p] for p in run if p in left_out})
        for run in sum_runs(parts)
    ]
    return executor.map_reduce(_run_sums, calls, _add_all, fanin=REDUCE_FANIN)


def _converged(history: list[float], tol: float) -> bool:
    """(J_{t−1} − J_t) / J_{t−1} < tol (or J_t = 0)."""
    previous, current = history[-2], history[-1]
    return current == 0 or (previous - current) / max(previous, np.finfo(float).tiny) < tol


def fit_kmeans(
    store: Store,
    parts: list[str],
    k: int,
    metric: Metric = "cosine",
    seed: int = 0,
    max_iter: int = 25,
    tol: float = 1e-4,
    sample_size: int | None = None,
    left_out: dict[str, np.ndarray] | None = None,
) -> KMeansResult:
    """k-means over the `embedding` column of scores/embed/<part> for every part, on Ray.

    Seeds with `kmeans_plus_plus` on `sample_embeddings` (default_sample_size(k) rows), then
    repeats: one task per part computes `partial_sums`; the driver adds them and applies
    `update_centroids`; it stops after `max_iter` updates or when J changed by less than `tol`
    (relative). The centroids returned are those the final sizes and inertia were measured on.
    """
    check_metric(metric)
    total = _row_count(store, parts)
    if not 1 <= k <= total:
        raise ValueError(f"k must be between 1 and the number of embeddings ({total}), got {k}")
    size = max(sample_size or default_sample_size(k), k)
    rows_left_out = [(left_out or {}).get(part) for part in parts]
    sample = metric_points(sample_embeddings(store, parts, size, seed, rows_left_out), metric)
    centroids = sample[kmeans_plus_plus(sample, k, seed, metric)].astype(np.float64)
    sums, counts, inertia = _distributed_sums(store, parts, centroids, metric, left_out)
    history, iterations = [inertia], 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        centroids = update_centroids(sums, counts, centroids, sample, metric)
        sums, counts, inertia = _distributed_sums(store, parts, centroids, metric, left_out)
        history.append(inertia)
        log.debug("k-means iteration %d: inertia %.6g", iterations, inertia)
        if _converged(history, tol):
            break
    return KMeansResult(centroids, inertia, iterations, counts, history)


# ---------------------------------------------------------------------------------------------
# Stored centroids


def _save_array(store: Store, relative: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    store.write_bytes(relative, buffer.getvalue())


def _load_array(store: Store, relative: str) -> np.ndarray:
    with store.fs.open(store.path(relative), "rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def load_centroids(store: Store) -> np.ndarray:
    """The cluster stage's centroids, (k, dim) float32, from clusters/centroids.npy."""
    return _load_array(store, layout.CENTROIDS)


def load_centroid_distances(store: Store) -> np.ndarray:
    """The cluster stage's (k, k) centroid distances, from clusters/centroid_distances.npy."""
    return _load_array(store, layout.CENTROID_DISTANCES)


# ---------------------------------------------------------------------------------------------
# Pipeline stage


@register_stage
class ClusterStage(Stage):
    """Fits k-means on the pool's embeddings (driver-side `prepare`, distributed), then gives
    each document its cluster id and its distance to that cluster's centroid."""

    name = "cluster"
    input_columns = ("id",)
    output_columns = ("cluster", "cluster_distance")
    requires = ("embed",)
    default_resources = Resources(num_cpus=1, batch_size=8192)
    fitted = ("k", "seed", "centroids")
    options_class = ClusterOptions

    def __init__(
        self,
        resources: Resources | None = None,
        k: int | None = None,
        metric: Metric = "cosine",
        max_iter: int = 25,
        seed: int = 0,
    ) -> None:
        super().__init__(resources)
        check_metric(metric)
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.requested_k, self.k = k, k
        self.metric, self.max_iter, self.seed = metric, max_iter, seed
        self.centroids: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> ClusterStage:
        """k, metric and iterations from stages.cluster; k from mixture.clusters when a
        mixture search groups by cluster."""
        options = config.stage_options(cls.name)
        k = options.clusters
        if config.select.method == "mixture" and config.mixture.group_field == "cluster":
            k = config.mixture.clusters
        return cls(resources, k, options.metric, options.max_iter, config.seed)

    def fingerprint(self) -> dict[str, Any]:
        digest = None
        if self.centroids is not None:
            digest = hashlib.sha256(np.ascontiguousarray(self.centroids).tobytes()).hexdigest()
        return {
            "name": self.name,
            "clusters": self.k,
            "metric": self.metric,
            "seed": self.seed,
            "max_iter": self.max_iter,
            "centroids": digest,
        }

    def prepare(self, context: StageContext) -> None:
        store, parts = context.store, context.parts
        self.seed = context.config.seed
        n_docs = sum(store.row_counts([layout.docs(part) for part in parts]))
        if n_docs == 0:
            raise DistselError("the cluster stage found no documents to cluster")
        wanted = self.requested_k or default_clusters(n_docs)
        self.k = min(wanted, n_docs)
        docs = f"{n_docs:,}"
        log.info("cluster: k-means, k=%d (%s) over %s documents", self.k, self.metric, docs)
        result = fit_kmeans(
            store, parts, self.k, self.metric, self.seed, self.max_iter, left_out=context.left_out
        )
        self.centroids = result.centroids.astype(np.float32)
        _save_array(store, layout.CENTROIDS, self.centroids)
        _save_array(
            store, layout.CENTROID_DISTANCES, centroid_distances(self.centroids, self.metric)
        )
        self.summary = _summary(result, self.metric, wanted)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        if self.centroids is None:
            raise DistselError("the cluster stage scores only after prepare() has fitted it")
        labels, distances = assign(
            embedding_matrix(batch.column("embedding")), self.centroids, self.metric
        )
        return {
            "cluster": labels.astype(np.int32),
            "cluster_distance": distances.astype(np.float32),
        }


def _summary(result: KMeansResult, metric: str, wanted: int) -> dict[str, Any]:
    sizes = result.sizes
    summary = {
        "clusters": len(sizes),
        "metric": metric,
        "iterations": result.iterations,
        "inertia": round(result.inertia, 6),
        "sizes_min": int(sizes.min()),
        "sizes_median": float(np.median(sizes)),
        "sizes_max": int(sizes.max()),
        "empty_clusters": int((sizes == 0).sum()),
    }
    if wanted != len(sizes):
        summary["clusters_requested"] = wanted
    return summary
