"""Quad's influence-model features without the embeddings on the driver.

The pool's embeddings stay on the cluster: the parts are cut into S shards of consecutive parts
(so a shard's documents are a run of pool indices; S = ceil(documents / SHARD_DOCS), at most one
per CPU), and each shard is loaded once by an actor that holds it in memory for the whole bandit
(float32, d · 4 B per document). The driver holds only
per-document scalars and asks the shards for what the model needs (distsel.algorithms.
influence_model.Embeddings): the rows it fits on, and for any set of rows the products e · w,
eᵀ A e and e · C that its predictions and their uncertainty need.

Each shard first reports its documents' count, mean and sum of squared deviations per dimension;
the driver combines them in shard order (Chan et al.'s pairwise update) into the pool's mean and
deviation, and each shard standardises its rows with them, as distsel.algorithms.influence_model.
standardized does for a matrix held whole. Each document's best cosine to the target examples (a
covariate of the model) is computed on the shards before that.
"""

from __future__ import annotations

import math

import numpy as np

from distsel.algorithms.influence_model import embedding_dot, embedding_quadratic
from distsel.algorithms.similarity import cosine_scores
from distsel.core.executor import ActorGroup, current
from distsel.core.pool import Pool, part_embeddings
from distsel.core.storage import Store

SHARD_DOCS = 100_000  # documents a shard holds at most, where the CPUs allow: 154 MB at d = 384


class EmbeddingShards:
    """The Embeddings of a pool, held by shard actors (see the module docstring)."""

    def __init__(self, store: Store, pool: Pool, shards: int | None = None) -> None:
        executor = current()
        if shards is None:  # one per SHARD_DOCS documents, at most one per CPU
            cpus = int(executor.totals().get("CPU", 1))
            shards = min(cpus, math.ceil(len(pool) / SHARD_DOCS))
        count = max(1, min(shards, len(pool.parts)))
        cuts = np.linspace(0, len(pool.parts), count + 1).round().astype(np.int64)
        self.bounds = np.searchsorted(pool.part_index, cuts, side="left")
        self.size = len(pool)
        # num_cpus=0: they hold memory and answer between rounds, while the scorer holds the CPUs
        self.actors: ActorGroup = executor.actors(_Shard, (), size=count, num_cpus=0)
        calls = []
        for shard in range(count):
            parts = range(int(cuts[shard]), int(cuts[shard + 1]))
            rows = [pool.row_index[pool.part_index == p] for p in parts]
            calls.append((shard, store, [pool.parts[p] for p in parts], rows))
        self.actors.call("load", calls)

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        self.actors.close()

    def target_cosine(self, targets: np.ndarray) -> np.ndarray:
        """Each document's best cosine to the target examples' embeddings (RDS+'s max)."""
        return np.concatenate(self._each("target_cosine", targets))

    def standardize(self) -> None:
        """Standardise every shard's rows by the pool's mean and deviation per dimension."""
        count, mean, squares = 0, 0.0, 0.0
        for n, part_mean, part_squares in self._each("moments"):
            if n == 0:
                continue
            delta, total = part_mean - mean, count + n
            mean = mean + delta * n / total
            squares = squares + part_squares + delta**2 * count * n / total
            count = total
        spread = np.sqrt(squares / max(count, 1))
        self._each("standardize", mean, np.where(spread > 0, spread, 1.0))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self._by_shard("rows", rows)

    def dot(self, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return self._by_shard("dot", rows, weights)

    def quadratic(
        self, inner: np.ndarray, cross: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        found = self._by_shard("quadratic", rows, inner, cross)
        return found[:, 0], found[:, 1:]

    def _each(self, method: str, *args: object) -> list:
        return self.actors.call(method, [(shard, *args) for shard in range(len(self.bounds) - 1)])

    def _by_shard(self, method: str, rows: np.ndarray | None, *args: object) -> np.ndarray:
        """`method` on each shard's share of `rows` (pool indices; None: every row), its
        answers stacked in the order of `rows`."""
        if rows is None:
            return np.concatenate(self._each(method, None, *args))
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        cuts = np.searchsorted(ordered, self.bounds)
        calls = [
            (shard, ordered[cuts[shard] : cuts[shard + 1]] - self.bounds[shard], *args)
            for shard in range(len(self.bounds) - 1)
        ]
        stacked = np.concatenate(self.actors.call(method, calls))
        restore = np.empty_like(order)
        restore[order] = np.arange(len(order))
        return stacked[restore]


class _Shard:
    """The embeddings of some shards' documents, in the order of their pool indices. In a Ray
    actor, one shard; in-process, all of them."""

    def __init__(self) -> None:
        self.held: dict[int, np.ndarray] = {}

    def load(self, shard: int, store: Store, parts: list[str], rows: list[np.ndarray]) -> None:
        pairs = zip(parts, rows, strict=True)
        found = [part_embeddings(store, part, part_rows) for part, part_rows in pairs]
        self.held[shard] = np.concatenate(found) if found else np.zeros((0, 0), np.float32)

    def target_cosine(self, shard: int, targets: np.ndarray) -> np.ndarray:
        matrix = self.held[shard]
        if not len(matrix):
            return np.zeros(0)
        return cosine_scores(matrix, targets.astype(matrix.dtype), "max")

    def moments(self, shard: int) -> tuple[int, np.ndarray, np.ndarray]:
        matrix = self.held[shard].astype(np.float64)
        if not len(matrix):
            return 0, np.zeros(0), np.zeros(0)
        mean = matrix.mean(axis=0)
        return len(matrix), mean, ((matrix - mean) ** 2).sum(axis=0)

    def standardize(self, shard: int, mean: np.ndarray, spread: np.ndarray) -> None:
        matrix = self.held[shard].astype(np.float64)
        self.held[shard] = ((matrix - mean) / spread).astype(np.float32)

    def rows(self, shard: int, rows: np.ndarray) -> np.ndarray:
        return self.held[shard][rows].astype(np.float64)

    def dot(self, shard: int, rows: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
        matrix = self.held[shard] if rows is None else self.held[shard][rows]
        return embedding_dot(matrix, weights)

    def quadratic(
        self, shard: int, rows: np.ndarray | None, inner: np.ndarray, cross: np.ndarray
    ) -> np.ndarray:
        """Per row, eᵀ inner e, then e · cross, as the columns of one array."""
        matrix = self.held[shard] if rows is None else self.held[shard][rows]
        quadratic, crossed = embedding_quadratic(matrix, inner, cross)
        return np.column_stack([quadratic, crossed])
