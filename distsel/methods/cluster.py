"""Distributed k-means over document embeddings: seeding, Lloyd iterations, assignment.

The clusters are Quad's bandit arms (Zhang et al., ICLR 2025) and Diversify-and-Conquer's strata.
Embeddings never all reach the driver: it seeds with k-means++ on a seeded uniform sample, then
each Lloyd iteration runs one Ray task per part, which returns only per-cluster sums and counts.

Metrics (x a document, c a centroid):

    cosine (default, spherical k-means):  d(x, c) = 1 − x̂ · ĉ,  with x̂ = x / ‖x‖₂
    l2:                                    d(x, c) = ‖x − c‖₂

Objective (the inertia), minimised by alternating assignment and centroid update:

    cosine:  J = Σ_i (1 − x̂_i · c_{a(i)}),   c_j = Σ_{a(i)=j} x̂_i / ‖Σ_{a(i)=j} x̂_i‖₂
    l2:      J = Σ_i ‖x_i − c_{a(i)}‖²₂,     c_j = Σ_{a(i)=j} x_i / n_j

(For unit vectors ‖x̂ − ĉ‖² = 2 (1 − x̂ · ĉ), so the cosine objective is half the squared chord.)
Distances are computed over blocks of rows × k of about BLOCK_ELEMENTS, whatever k is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from distsel.core import layout
from distsel.core.config import ClusterOptions, Config
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.registry import register_stage
from distsel.core.stage import Resources, Stage, StageContext
from distsel.core.storage import Store
from distsel.core.vectors import embedding_matrix

log = logging.getLogger("distsel")

Metric = Literal["cosine", "l2"]
METRICS = ("cosine", "l2")
BLOCK_ELEMENTS = 1 << 22  # rows × k entries of one distance block (16 MiB in float32)
SUM_ROWS = 1 << 14  # rows converted to float64 at a time when summing per cluster
MIN_SAMPLE, SAMPLE_PER_CLUSTER, MAX_SAMPLE = 10_000, 20, 100_000
MAX_CLUSTERS = 10_000
REDUCE_FANIN = 16


# ---------------------------------------------------------------------------------------------
# Pure functions


def default_clusters(n_docs: int) -> int:
    """k = clamp(round(√(n_docs / 2)), 2, 10,000), halves rounded up: the rule of thumb
    k ≈ √(n/2), kept at least 2 and at most Quad's 10,000 clusters."""
    return int(min(max(math.floor(math.sqrt(max(n_docs, 0) / 2) + 0.5), 2), MAX_CLUSTERS))


def default_sample_size(k: int) -> int:
    """Rows for k-means++ seeding: min(max(20 k, 10,000), 100,000)."""
    return min(max(SAMPLE_PER_CLUSTER * k, MIN_SAMPLE), MAX_SAMPLE)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _points(x: np.ndarray, metric: str) -> np.ndarray:
    """x as a float matrix; rows scaled to unit length for cosine (zero rows stay zero)."""
    _check_metric(metric)
    points = np.asarray(x)
    if points.ndim != 2:
        raise ValueError(f"expected a 2-D array (rows × dim), got shape {points.shape}")
    if not np.issubdtype(points.dtype, np.floating):
        points = points.astype(np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        points = points / np.maximum(norms, np.finfo(points.dtype).tiny)
    return points


def _centres(centroids: np.ndarray, metric: str, dtype: np.dtype) -> np.ndarray:
    return _points(np.asarray(centroids, dtype=dtype), metric)


def _block_rows(k: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(k, 1))


def _nearest(points: np.ndarray, centres: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and objective terms: 1 − cos (cosine) or squared distance (l2), block by block.

    argmin_j d(x, c_j) is argmax_j x·c_j (cosine) or argmin_j ‖c_j‖² − 2 x·c_j (l2).
    """
    labels = np.empty(len(points), dtype=np.int32)
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    step = _block_rows(len(centres))
    for start in range(0, len(points), step):
        products = points[start : start + step] @ centres.T
        if metric == "cosine":
            labels[start : start + step] = products.argmax(axis=1)
        else:
            products *= -2
            products += centre_norms
            labels[start : start + step] = products.argmin(axis=1)
    return labels, _terms(points, centres, labels, metric)


def _terms(points: np.ndarray, centres: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """Each row's objective term against its own centroid, from the difference x − c (accurate
    near 0, where 1 − x·c in float32 is not); a zero row under cosine has no direction: ½."""
    terms = np.empty(len(points), dtype=points.dtype)
    for start in range(0, len(points), SUM_ROWS):
        block = points[start : start + SUM_ROWS]
        mine = centres[labels[start : start + SUM_ROWS]]
        diff = block - mine
        terms[start : start + SUM_ROWS] = np.einsum("ij,ij->i", diff, diff)
    if metric == "cosine":
        terms *= 0.5  # 1 − x̂·ĉ = ½‖x̂ − ĉ‖² for unit rows, without 1 − cos's cancellation
    return terms


def assign(
    x: np.ndarray, centroids: np.ndarray, metric: Metric = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row: labels a(i) = argmin_j d(x_i, c_j) (int32, ties to the
    lower j) and distances d(x_i, c_{a(i)}) (1 − cos for cosine, ‖x − c‖₂ for l2)."""
    points = _points(x, metric)
    labels, terms = _nearest(points, _centres(centroids, metric, points.dtype), metric)
    return labels, (np.sqrt(terms) if metric == "l2" else terms)


def _cluster_sums(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """S_j = Σ_{a(i)=j} x_i in float64, summed in row order, SUM_ROWS rows at a time."""
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    for start in range(0, len(points), SUM_ROWS):
        block_labels = labels[start : start + SUM_ROWS]
        order = np.argsort(block_labels, kind="stable")
        present, starts = np.unique(block_labels[order], return_index=True)
        block = points[start : start + SUM_ROWS][order].astype(np.float64)
        sums[present] += np.add.reduceat(block, starts, axis=0)
    return sums


def partial_sums(
    x: np.ndarray, centroids: np.ndarray, metric: Metric = "cosine"
) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd step's statistics over the rows of x, to be added across parts:

    sums_j   = Σ_{a(i)=j} x_i   (x̂_i for cosine), float64 (k, dim)
    counts_j = |{i : a(i) = j}|, int64 (k,)
    inertia  = J over these rows (Σ 1 − cos, or Σ ‖x − c‖²)
    """
    points = _points(x, metric)
    centres = _centres(centroids, metric, points.dtype)
    labels, terms = _nearest(points, centres, metric)
    counts = np.bincount(labels, minlength=len(centres)).astype(np.int64)
    inertia = float(np.sum(terms, dtype=np.float64))
    return _cluster_sums(points, labels, len(centres)), counts, inertia


def centroid_distances(centroids: np.ndarray, metric: Metric = "cosine") -> np.ndarray:
    """(k, k) float32 matrix D_ab = d(c_a, c_b): 1 − ĉ_a · ĉ_b (cosine) or ‖c_a − c_b‖₂ (l2);
    computed in float64 over blocks of rows; the diagonal is 0."""
    centres = _centres(centroids, metric, np.float64)
    k = len(centres)
    out = np.empty((k, k), dtype=np.float32)
    norms = np.einsum("ij,ij->i", centres, centres)
    step = _block_rows(k)
    for start in range(0, k, step):
        products = centres[start : start + step] @ centres.T
        if metric == "cosine":
            block = np.clip(1 - products, 0, 2)
        else:
            squared = norms[start : start + step, None] - 2 * products + norms[None, :]
            block = np.sqrt(np.maximum(squared, 0))
        out[start : start + step] = block
    np.fill_diagonal(out, 0)
    return out


def _seed_terms(
    points: np.ndarray, norms: np.ndarray, centre: np.ndarray, metric: str
) -> np.ndarray:
    """Objective term of every row against one centre: 1 − x·c or ‖x‖² − 2 x·c + ‖c‖²."""
    products = (points @ centre).astype(np.float64)
    if metric == "cosine":
        return np.clip(1 - products, 0, 2)
    return np.maximum(norms - 2 * products + float(centre @ centre), 0)


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int, metric: Metric = "cosine") -> np.ndarray:
    """Indices of k distinct rows of x chosen by k-means++ (Arthur & Vassilvitskii 2007):

        first seed uniform; then P(pick i) = D(i) / Σ_m D(m),  D(i) = min_{chosen c} d²(x_i, c)

    with d² the objective term (1 − cos, or ‖x − c‖²). Deterministic for a seed (numpy's
    default_rng). When every unchosen row coincides with a seed, the first unchosen row is taken.
    Each seed costs one pass over x (n × dim): about 20 ms for 100,000 × 384 on one core.
    """
    points = _points(x, metric)
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    rng = np.random.default_rng(seed)
    norms = np.einsum("ij,ij->i", points, points).astype(np.float64)
    chosen = np.empty(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    closest = np.full(n, np.inf)
    pick = int(rng.integers(n))
    for i in range(k):
        chosen[i], taken[pick] = pick, True
        np.minimum(closest, _seed_terms(points, norms, points[pick], metric), out=closest)
        closest[pick] = 0  # a seed's own term, whatever the rounding
        if i + 1 < k:
            pick = _draw(closest, taken, rng)
    return chosen


def _draw(weights: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> int:
    """An index with probability weights / Σ weights (never a zero weight)."""
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    if not total > 0:
        return int(np.flatnonzero(~taken)[0])
    pick = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
    if pick >= len(weights) or weights[pick] == 0:  # u · total rounded up to total
        pick = int(np.flatnonzero(weights > 0)[-1])
    return pick


def farthest_points(
    sample: np.ndarray, centroids: np.ndarray, count: int, metric: Metric = "cosine"
) -> np.ndarray:
    """The `count` rows of `sample` farthest from their nearest centroid, farthest first
    (ties to the lower row): the deterministic re-seeding of empty clusters."""
    points = _points(sample, metric)
    _, terms = _nearest(points, _centres(centroids, metric, points.dtype), metric)
    return points[np.argsort(-terms.astype(np.float64), kind="stable")[:count]]


def update_centroids(
    sums: np.ndarray,
    counts: np.ndarray,
    previous: np.ndarray,
    sample: np.ndarray,
    metric: Metric = "cosine",
) -> np.ndarray:
    """New centroids from the reduced statistics (float64):

        l2:      c_j = sums_j / counts_j
        cosine:  c_j = sums_j / ‖sums_j‖₂   (previous c_j kept when sums_j = 0)

    Empty clusters (counts_j = 0) take the sample rows farthest from the filled clusters' new
    centroids, one each, so the objective cannot rise: an empty cluster held no rows.
    """
    centroids = np.array(previous, dtype=np.float64)
    filled = counts > 0
    if metric == "l2":
        centroids[filled] = sums[filled] / counts[filled, None]
    else:
        norms = np.linalg.norm(sums, axis=1)
        usable = filled & (norms > 0)
        centroids[usable] = sums[usable] / norms[usable, None]
    empty = np.flatnonzero(~filled)
    if len(empty) and filled.any():
        centroids[empty] = farthest_points(sample, centroids[filled], len(empty), metric)
    return centroids


# ---------------------------------------------------------------------------------------------
# Distributed fit


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """Fitted centroids (float64, unit rows for cosine), the inertia J of the final assignment,
    the number of centroid updates, rows per cluster, and J before each update and after the
    last (history[0] is the seeding's J)."""

    centroids: np.ndarray
    inertia: float
    iterations: int
    sizes: np.ndarray
    history: list[float] = field(default_factory=list)


def _embedding_path(part: str) -> str:
    return layout.scores("embed", part)


def _read_embeddings(store: Store, part: str, rows: np.ndarray | None = None) -> np.ndarray:
    column = store.read_table(_embedding_path(part), columns=["embedding"]).column("embedding")
    return embedding_matrix(column if rows is None else column.take(rows))


def _sample_part(store: Store, part: str, seed: int, below: int) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: distsel.core.selector may one day import this module (Quad).
    from distsel.core.pool import random_keys

    ids = store.read_table(_embedding_path(part), columns=["id"]).column("id").to_pylist()
    keys = random_keys(ids, seed)
    rows = np.flatnonzero(keys < np.uint64(below))
    return keys[rows], _read_embeddings(store, part, rows)


def _row_count(store: Store, parts: list[str]) -> int:
    return sum(store.read_metadata(_embedding_path(part)).num_rows for part in parts)


def sample_embeddings(store: Store, parts: list[str], size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of `size` embeddings (all when fewer): `sample_embedding_rows`."""
    return sample_embedding_rows(store, parts, size, seed)[1]


def sample_embedding_rows(
    store: Store, parts: list[str], size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The random keys (`random_keys(id, seed)`, uint64) and embeddings of a seeded uniform
    sample of `size` rows (all when fewer): the rows with the smallest keys, each part sending
    only the rows under a cut that keeps about 1.5 × size in all. The sample is the same
    whatever the parts' order."""
    total = _row_count(store, parts)
    fraction = min(1.0, 1.5 * size / max(total, 1))
    keys, vectors = _gather_sample(store, parts, seed, min(int(fraction * 2**64), 2**64 - 1))
    if len(keys) < min(size, total) and fraction < 1:  # unlucky draw: take every row
        keys, vectors = _gather_sample(store, parts, seed, 2**64 - 1)
    order = np.argsort(keys, kind="stable")[:size]
    return keys[order], vectors[order]


def _gather_sample(
    store: Store, parts: list[str], seed: int, below: int
) -> tuple[np.ndarray, np.ndarray]:
    found = current().map(_sample_part, [(store, part, seed, below) for part in parts])
    return np.concatenate([k for k, _ in found]), np.concatenate([v for _, v in found])


Stats = tuple[np.ndarray, np.ndarray, float]


def _part_sums(store: Store, part: str, centroids: np.ndarray, metric: str) -> Stats:
    return partial_sums(_read_embeddings(store, part), centroids, metric)


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


def _distributed_sums(store: Store, parts: list[str], centroids: np.ndarray, metric: str) -> Stats:
    """`partial_sums` of every part (one task each), added in part order by a tree of tasks
    REDUCE_FANIN wide, so the driver receives at most REDUCE_FANIN (k, dim) arrays."""
    executor = current()
    shared = executor.share(centroids)
    calls = [(store, part, shared, metric) for part in parts]
    return executor.map_reduce(_part_sums, calls, _add_all, fanin=REDUCE_FANIN)


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
) -> KMeansResult:
    """k-means over the `embedding` column of scores/embed/<part> for every part, on Ray.

    Seeds with `kmeans_plus_plus` on `sample_embeddings` (default_sample_size(k) rows), then
    repeats: one task per part computes `partial_sums`; the driver adds them and applies
    `update_centroids`; it stops after `max_iter` updates or when J changed by less than `tol`
    (relative). The centroids returned are those the final sizes and inertia were measured on.
    """
    _check_metric(metric)
    total = _row_count(store, parts)
    if not 1 <= k <= total:
        raise ValueError(f"k must be between 1 and the number of embeddings ({total}), got {k}")
    size = max(sample_size or default_sample_size(k), k)
    sample = _points(sample_embeddings(store, parts, size, seed), metric)
    centroids = sample[kmeans_plus_plus(sample, k, seed, metric)].astype(np.float64)
    sums, counts, inertia = _distributed_sums(store, parts, centroids, metric)
    history, iterations = [inertia], 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        centroids = update_centroids(sums, counts, centroids, sample, metric)
        sums, counts, inertia = _distributed_sums(store, parts, centroids, metric)
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
        _check_metric(metric)
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
        n_docs = sum(store.read_metadata(layout.docs(part)).num_rows for part in parts)
        if n_docs == 0:
            raise DistselError("the cluster stage found no documents to cluster")
        wanted = self.requested_k or default_clusters(n_docs)
        self.k = min(wanted, n_docs)
        log.info("cluster: k-means, k=%d (%s) over %d documents", self.k, self.metric, n_docs)
        result = fit_kmeans(store, parts, self.k, self.metric, self.seed, self.max_iter)
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
