"""Quad's influence-model features held by shard actors (distsel.methods.quad.features) against
the same features as one matrix in memory (distsel.algorithms.influence_model.pool_features)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distsel.algorithms.influence_model import InfluenceModel, pool_features
from distsel.algorithms.similarity import cosine_scores
from distsel.core import layout
from distsel.core.executor import LocalExecutor
from distsel.core.pool import Pool
from distsel.core.storage import Store
from distsel.core.vectors import embedding_array
from distsel.methods.quad.features import EmbeddingShards


def sharded_pool(root, rng: np.random.Generator) -> tuple[Pool, np.ndarray]:
    """Parts of embeddings (one empty, one with every row left out of the pool), and a pool of
    some of their rows; the pool's embeddings as one matrix."""
    store = Store(str(root))
    names, part_index, row_index, held = [], [], [], []
    for index, size in enumerate([40, 0, 7, 25, 13, 60]):
        name = f"p{index:03d}{layout.PART_SUFFIX}"
        vectors = (rng.standard_normal((size, 16)) + rng.normal(size=16)).astype(np.float32)
        table = pa.table(
            {"id": [f"{index}-{r}" for r in range(size)], "embedding": embedding_array(vectors)}
        )
        store.write_table(layout.scores("embed", name), table)
        rows = np.sort(rng.choice(size, size=size * 2 // 3, replace=False)) if index != 2 else []
        rows = np.asarray(rows, dtype=np.int64)
        names.append(name)
        part_index += [index] * len(rows)
        row_index.append(rows)
        held.append(vectors[rows])
    count = len(part_index)
    pool = Pool(
        parts=names,
        part_index=np.array(part_index, dtype=np.int32),
        row_index=np.concatenate(row_index),
        tokens=rng.integers(5, 500, count),
        random_key=rng.integers(0, 2**63, count, dtype=np.uint64),
    )
    return pool, np.concatenate(held)


@pytest.mark.parametrize("shards", [1, 3, 6])
def test_shards_answer_as_the_matrix_held_whole(tmp_path, shards):
    rng = np.random.default_rng(shards)
    pool, embeddings = sharded_pool(tmp_path, rng)
    targets = rng.standard_normal((5, 16)).astype(np.float32)
    with LocalExecutor().active():
        held = EmbeddingShards(Store(str(tmp_path)), pool, shards)
        cosine = held.target_cosine(targets)
        held.standardize()
    whole, free = pool_features(embeddings, pool.tokens)
    np.testing.assert_allclose(cosine, cosine_scores(embeddings, targets, "max"), rtol=1e-6)
    rows = rng.permutation(len(pool))[:50]
    np.testing.assert_allclose(held.rows(rows), whole[rows].astype(np.float64), atol=1e-5)
    weights = rng.standard_normal(16)
    np.testing.assert_allclose(held.dot(weights), whole.astype(np.float64) @ weights, atol=1e-4)
    np.testing.assert_allclose(held.dot(weights, rows), whole[rows] @ weights, atol=1e-4)

    scored = rng.choice(len(pool), 30, replace=False)
    values = rng.standard_normal(30)
    sharded = InfluenceModel((held, free)).fit(scored, values)
    in_memory = InfluenceModel((whole, free)).fit(scored, values)
    np.testing.assert_allclose(sharded.predict(), in_memory.predict(), atol=1e-6)
    np.testing.assert_allclose(sharded.predict(rows), in_memory.predict(rows), atol=1e-6)
    x = np.column_stack([np.ones(len(rows)), free[rows], whole[rows]]).astype(np.float64)
    exact = np.sqrt(
        in_memory.noise * np.einsum("ij,jk,ik->i", x, in_memory.covariance, x).clip(min=0)
    )
    np.testing.assert_allclose(sharded.predict_sd(rows), exact, rtol=1e-6, atol=1e-9)
    assert held.rows(np.zeros(0, np.int64)).shape[0] == 0
