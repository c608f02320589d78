"""Quad's documents read from the parts by shard actors (distsel.methods.quad.documents) against
the same pool held whole: its columns, the influence model's features (distsel.algorithms.
influence_model.pool_features), the model's predictions, the texts and the chosen rows."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from quad_reference import pool_z

from distsel.algorithms.influence_model import InfluenceModel, pool_features
from distsel.algorithms.similarity import cosine_scores
from distsel.core import layout
from distsel.core.executor import LocalExecutor
from distsel.core.pool import random_keys
from distsel.core.storage import Store
from distsel.core.vectors import embedding_array
from distsel.methods.quad.documents import QuadDocuments

ARMS = 4


def write_parts(store: Store, rng: np.random.Generator) -> tuple[list[str], dict, dict]:
    """Parts (one empty, one with every row dropped) with texts, clusters, classifier scores
    and embeddings; the dropped rows; the accepted rows' columns in pool order."""
    names, dropped, pool = [], {}, {k: [] for k in ("ids", "texts", "cluster", "score", "vec")}
    for index, size in enumerate([40, 0, 7, 25, 13, 60]):
        name = f"p{index:03d}{layout.PART_SUFFIX}"
        ids = [f"{index}-{r}" for r in range(size)]
        texts = [f"text {index} {r} " + "x" * int(rng.integers(1, 300)) for r in range(size)]
        vectors = (rng.standard_normal((size, 16)) + rng.normal(size=16)).astype(np.float32)
        clusters = rng.integers(0, ARMS, size)
        scores = rng.standard_normal(size)
        tokens = [len(t) // 4 + 1 for t in texts]
        store.write_table(
            layout.docs(name), pa.table({"id": ids, "text": texts, "tokens_approx": tokens})
        )
        store.write_table(
            layout.scores("embed", name),
            pa.table({"id": ids, "embedding": embedding_array(vectors)}),
        )
        store.write_table(
            layout.scores("cluster", name), pa.table({"id": ids, "cluster": clusters})
        )
        store.write_table(
            layout.scores("classifier", name), pa.table({"id": ids, "classifier_score": scores})
        )
        gone = (
            np.arange(size) if index == 2 else np.sort(rng.choice(size, size // 3, replace=False))
        )
        kept = np.setdiff1d(np.arange(size), gone)
        names.append(name)
        dropped[name] = gone.astype(np.int64)
        for key, column in zip(pool, [ids, texts, clusters, scores, vectors], strict=True):
            pool[key] += [column[i] for i in kept]
    return names, dropped, pool


@pytest.mark.parametrize("shards", [1, 3, 6])
def test_shards_hold_the_pool_as_it_is_held_whole(tmp_path, shards):
    rng = np.random.default_rng(shards)
    store = Store(str(tmp_path))
    names, dropped, pool = write_parts(store, rng)
    targets = rng.standard_normal((5, 16)).astype(np.float32)
    with LocalExecutor().active():
        documents = QuadDocuments.from_store(store, names, dropped, 7, ARMS, True, shards)
        documents.prepare_features(targets)
        size = len(pool["ids"])
        assert len(documents) == size and documents.shards == min(shards, len(names))
        assert documents.column("cluster").tolist() == pool["cluster"]
        keys = random_keys(pool["ids"], 7)
        assert documents.column("random_key").tolist() == keys.tolist()
        assert documents.arms().tolist() == np.bincount(pool["cluster"], minlength=ARMS).tolist()

        embeddings, tokens = (
            np.array(pool["vec"]),
            np.array([len(t) // 4 + 1 for t in pool["texts"]]),
        )
        cosine = cosine_scores(embeddings, targets, "max")
        whole, free = pool_features(embeddings, tokens, cosine, np.array(pool["score"]))
        held, held_free = documents.features(np.arange(size))
        np.testing.assert_allclose(held, whole.astype(np.float64), atol=1e-5)
        np.testing.assert_allclose(held_free, free, atol=1e-5)
        np.testing.assert_allclose(documents.column("classifier"), pool_z(pool["score"]), atol=1e-9)

        scored = rng.choice(size, 30, replace=False)
        values = rng.standard_normal(30)
        fitted = InfluenceModel(None).fit_features(*documents.features(scored), values)
        in_memory = InfluenceModel((whole, free)).fit(scored, values)
        documents.refit(fitted.parameters(), 0.0, 1.0, 0.0)
        np.testing.assert_allclose(documents.predict(), in_memory.predict(), atol=1e-6)
        np.testing.assert_allclose(documents.predict(sd=True), in_memory.predict_sd(), rtol=1e-6)

        groups = [rng.choice(size, 4, replace=False), np.zeros(0, np.int64), np.array([size - 1])]
        expected = [[pool["texts"][i] for i in group] for group in groups]
        assert documents.texts(groups) == expected

        chosen = rng.choice(size, 20, replace=False)
        documents.write_chosen(chosen)
        documents.close()
    offsets = np.cumsum([0] + [len(documents_of(store, n)) - len(dropped[n]) for n in names])
    for part, name in enumerate(names):
        rows = np.load(io.BytesIO(store.read_bytes(layout.quad_chosen(name))))
        kept = np.setdiff1d(np.arange(len(documents_of(store, name))), dropped[name])
        inside = chosen[(chosen >= offsets[part]) & (chosen < offsets[part + 1])]
        assert rows.tolist() == sorted(kept[inside - offsets[part]].tolist())


def documents_of(store: Store, name: str) -> pa.Table:
    return store.read_table(layout.docs(name), columns=["id"])


def test_the_bandit_on_ray_shard_actors_plays_as_in_one_process(tmp_path, ray_local):
    """Three shard actors on Ray, each answering only for its own shard, play the bandit that
    one in-process worker holding every shard plays."""
    from distsel.core.config import Budget
    from distsel.core.executor import RayExecutor
    from distsel.methods.quad.options import QuadOptions
    from distsel.methods.quad.selector import bandit_for

    rng = np.random.default_rng(5)
    store = Store(str(tmp_path))
    names, dropped, _ = write_parts(store, rng)
    targets = rng.standard_normal((5, 16)).astype(np.float32)
    direction = rng.standard_normal(16)
    distances = np.ones((ARMS, ARMS)) - np.eye(ARMS)
    options = QuadOptions(arms_per_round=2, draws_per_arm=3, max_evaluated=0.3)

    def play(executor, budget):
        with executor.active():
            documents = QuadDocuments.from_store(store, names, dropped, 0, ARMS, True, 3)
            documents.prepare_features(targets)
            bandit = bandit_for(documents, distances, options, budget, 0)
            chosen = bandit.run(
                lambda groups: [documents.features(g)[0] @ direction for g in groups]
            )
            texts = documents.texts([chosen[:3]])
            documents.close()
        return chosen.tolist(), bandit.state.history, texts

    for budget in (Budget(docs=12), Budget(tokens=1500)):
        on_ray = play(RayExecutor(), budget)
        assert on_ray == play(LocalExecutor(), budget)
        assert len(on_ray[0]) and on_ray[1]
