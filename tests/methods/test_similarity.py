"""Cosine scores, round-robin over tasks, and BETR's labels and classifier, against brute force."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import pool_of, tfidf_by_counting

from distsel.algorithms.similarity import task_scores
from distsel.core.config import parse_config
from distsel.core.pool import random_keys
from distsel.core.stage import StageContext
from distsel.methods.similarity import (
    NEAR_TARGET_WARNING,
    BetrStage,
    LinearScorer,
    SimilaritySelector,
    SimilarityStage,
    TfidfView,
    best_rank_scores,
    betr_labels,
    cosine_scores,
    fit_betr_classifier,
    has_target_neighbour,
    nearest_target_share,
    ngram_features,
    predict_scores,
    round_robin,
)


def unit_rows(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_cosine(docs: np.ndarray, targets: np.ndarray, aggregate: str) -> np.ndarray:
    out = []
    for d in docs.astype(np.float64):
        sims = [
            float(np.dot(d, t) / (np.linalg.norm(d) * np.linalg.norm(t)))
            for t in targets.astype(np.float64)
        ]
        out.append(max(sims) if aggregate == "max" else sum(sims) / len(sims))
    return np.array(out)


def brute_round_robin(scores: list[list[float]], k: int) -> list[int]:
    """The definition, written plainly: each task in turn takes its best untaken document."""
    n = len(scores[0])
    picked: list[int] = []
    while len(picked) < min(k, n):
        for task in scores:
            free = [i for i in range(n) if i not in picked]
            if not free or len(picked) == k:
                break
            picked.append(max(free, key=lambda i: (task[i], -i)))
    return picked


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_cosine_matches_brute_force(aggregate: str):
    rng = np.random.default_rng(0)
    docs, targets = unit_rows(rng, 37), unit_rows(rng, 11)
    got = cosine_scores(docs, targets, aggregate)
    assert got.shape == (37,)
    np.testing.assert_allclose(got, brute_cosine(docs, targets, aggregate), atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 10_000])
@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_chunking_gives_the_same_scores(aggregate: str, chunk_size: int):
    rng = np.random.default_rng(1)
    docs, targets = unit_rows(rng, 50), unit_rows(rng, 23)
    whole = cosine_scores(docs, targets, aggregate, chunk_size=10_000)
    np.testing.assert_allclose(
        cosine_scores(docs, targets, aggregate, chunk_size=chunk_size), whole, atol=1e-7
    )


def test_cosine_rejects_mismatched_inputs():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="dimension"):
        cosine_scores(unit_rows(rng, 3, 8), unit_rows(rng, 3, 9))
    with pytest.raises(ValueError, match="no target"):
        cosine_scores(unit_rows(rng, 3), np.empty((0, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="aggregate"):
        cosine_scores(unit_rows(rng, 3), unit_rows(rng, 2), "median")  # type: ignore[arg-type]
    assert cosine_scores(np.empty((0, 16), dtype=np.float32), unit_rows(rng, 2)).shape == (0,)


def test_task_scores_stack_one_row_per_task():
    rng = np.random.default_rng(3)
    docs = unit_rows(rng, 20)
    tasks = [unit_rows(rng, 4), unit_rows(rng, 9)]
    got = task_scores(docs, tasks)
    assert got.shape == (2, 20)
    np.testing.assert_allclose(got[1], cosine_scores(docs, tasks[1]), atol=0)


@pytest.mark.parametrize("seed", range(8))
def test_round_robin_matches_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    n_tasks, n_docs = int(rng.integers(1, 5)), int(rng.integers(1, 40))
    # coarse scores, so ties and documents that several tasks want are common
    scores = rng.integers(0, 6, size=(n_tasks, n_docs)).astype(np.float64)
    for k in (0, 1, n_docs // 2, n_docs, n_docs + 5):
        expected = brute_round_robin(scores.tolist(), k)
        assert round_robin(scores, k).tolist() == expected
        assert round_robin(list(scores), k).tolist() == expected


def test_round_robin_alternates_tasks_and_skips_duplicates():
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],  # task 0 wants 0, then 1
            [0.9, 0.2, 0.7, 0.3],  # task 1 also wants 0: it is taken, so 2
        ]
    )
    assert round_robin(scores, 3).tolist() == [0, 2, 1]
    assert round_robin(scores, 10).tolist() == [0, 2, 1, 3]


def test_round_robin_nan_ranks_last_and_bad_input_is_refused():
    scores = np.array([[np.nan, 0.1, 0.5]])
    assert round_robin(scores, 3).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="same length"):
        round_robin([np.zeros(3), np.zeros(4)], 2)
    with pytest.raises(ValueError, match="no target"):
        round_robin([], 2)
    with pytest.raises(ValueError, match="k must"):
        round_robin(scores, -1)


def test_best_rank_scores_match_brute_force():
    rng = np.random.default_rng(4)
    sample, targets = unit_rows(rng, 30), unit_rows(rng, 7)
    cos = sample.astype(np.float64) @ targets.T.astype(np.float64)
    expected = []
    for i in range(30):
        ranks = [sorted(range(30), key=lambda d, j=j: (-cos[d, j], d)).index(i) for j in range(7)]
        expected.append(-min(ranks))
    for chunk_size in (None, 1, 3, 100):
        assert best_rank_scores(sample, targets, chunk_size=chunk_size).tolist() == expected


def test_betr_labels_mark_the_top_share():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.9, 0.0, 0.2, 0.6, 0.4])
    labels = betr_labels(scores, top_fraction=0.3)
    assert labels.dtype == bool
    assert np.flatnonzero(labels).tolist() == [1, 3, 5]
    assert betr_labels(scores, top_fraction=0.01).sum() == 1  # at least one positive
    assert betr_labels(scores, top_fraction=1.0).all()
    with pytest.raises(ValueError, match="top_fraction"):
        betr_labels(scores, top_fraction=0)


def separable_problem(seed: int, n: int = 400, dim: int = 16):
    """Positives around one fixed direction, negatives around the opposite, unit rows."""
    direction = unit_rows(np.random.default_rng(1234), 1, dim)[0]
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    x = rng.standard_normal((n, dim)).astype(np.float32) * 0.3
    x += np.where(labels[:, None], direction, -direction)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def test_betr_classifier_ranks_a_separable_problem():
    x, labels = separable_problem(5)
    model = fit_betr_classifier(x, labels, seed=0)
    x_new, labels_new = separable_problem(6)
    scores = predict_scores(model, x_new)
    assert scores.dtype == np.float64
    assert scores[labels_new].min() > scores[~labels_new].max()  # perfect ranking
    top = np.argsort(-scores)[: labels_new.sum()]
    assert labels_new[top].all()


def test_betr_classifier_matches_sklearn_and_round_trips_without_pickle():
    from sklearn.linear_model import LogisticRegression

    x, labels = separable_problem(7)
    model = fit_betr_classifier(x, labels, seed=0)
    reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(x, labels)
    np.testing.assert_allclose(
        predict_scores(model, x), reference.decision_function(x), rtol=1e-5, atol=1e-5
    )
    restored = LinearScorer.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored.dim == 16
    np.testing.assert_array_equal(restored.coef, model.coef)
    assert restored.intercept == model.intercept
    np.testing.assert_array_equal(predict_scores(restored, x), predict_scores(model, x))


def test_betr_classifier_refuses_bad_input():
    x, labels = separable_problem(8)
    with pytest.raises(ValueError, match="both classes"):
        fit_betr_classifier(x, np.zeros(len(x), dtype=bool))
    with pytest.raises(ValueError, match="one label per row"):
        fit_betr_classifier(x, labels[:-1])
    model = fit_betr_classifier(x, labels)
    with pytest.raises(ValueError, match="dimension"):
        predict_scores(model, x[:, :8])
    good = model.to_dict()
    for bad in (
        {**good, "kind": "pickle"},
        {**good, "version": 99},
        {**good, "coef": [[1.0, 2.0]]},
        {**good, "coef": [1.0, float("nan")]},
        {k: v for k, v in good.items() if k != "intercept"},
        [1, 2, 3],
    ):
        with pytest.raises(ValueError):
            LinearScorer.from_dict(bad)  # type: ignore[arg-type]


def test_betr_end_to_end_on_embedding_like_data():
    """Sample scored by best rank, top 10% labelled, classifier applied to a fresh pool."""
    rng = np.random.default_rng(9)
    dim = 32
    topic = unit_rows(rng, 1, dim)[0]
    targets = unit_rows(rng, 5, dim) * 0.3 + topic
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)

    def pool(n: int) -> tuple[np.ndarray, np.ndarray]:
        on_topic = rng.random(n) < 0.1
        x = rng.standard_normal((n, dim)) + np.where(on_topic[:, None], 3 * topic, 0)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), on_topic

    sample, _ = pool(500)
    labels = betr_labels(best_rank_scores(sample, targets), top_fraction=0.1)
    model = fit_betr_classifier(sample, labels, seed=0, c=10.0)
    docs, on_topic = pool(2000)
    chosen = np.argsort(-predict_scores(model, docs))[: on_topic.sum()]
    assert on_topic[chosen].mean() > 0.8


def test_the_betr_stage_scores_with_predict_scores():
    """The stage's scores are predict_scores' on its sparse n-gram features, and those agree
    with predict_scores on the same rows made dense."""
    texts = [
        "a cat sat on the mat",
        "the dog ate my homework",
        "",
        "cats and dogs, cats and dogs",
        "mat mat mat",
    ]
    config = parse_config(
        {
            "input": {"paths": ["unused.jsonl"]},
            "output": {"path": "unused"},
            "select": {"method": "all", "dsir": {"num_buckets": 64, "ngrams": 2}},
        }
    )
    stage = BetrStage(BetrStage.default_resources, config)
    rng = np.random.default_rng(4)
    stage.scorer = LinearScorer(coef=rng.standard_normal(64), intercept=0.25)
    scores = stage(pa.table({"text": texts}))["betr_score"]
    features = ngram_features(texts, 64, 2)
    np.testing.assert_array_equal(scores, predict_scores(stage.scorer, features))
    np.testing.assert_allclose(
        scores, predict_scores(stage.scorer, features.toarray()), rtol=1e-12, atol=1e-12
    )
    assert scores.dtype == np.float64 and scores[2] == 0.25
    with pytest.raises(ValueError, match="dimension"):
        predict_scores(stage.scorer, ngram_features(texts, 32, 2))


def brute_nearest_share(doc_views, target_views, reference_views, exclude):
    """The definition, written plainly: each row's mean cosine over the views; count the
    reference rows (a document's own left out) nearer than the nearest target example."""

    def cosine(i, side, j):
        pairs = zip(doc_views, side, strict=True)
        return np.mean([float(np.dot(dense(d)[i], dense(v)[j])) for d, v in pairs])

    out = []
    for i in range(dense(doc_views[0]).shape[0]):
        nearest = max(cosine(i, target_views, t) for t in range(target_views[0].shape[0]))
        others = [
            cosine(i, reference_views, r)
            for r in range(reference_views[0].shape[0])
            if r != exclude[i]
        ]
        closer = sum(c > nearest for c in others)
        out.append(1 / (1 + closer + (1 - (nearest - max(others))) / 4))
    return np.array(out)


def dense(view) -> np.ndarray:
    return view.toarray() if hasattr(view, "toarray") else np.asarray(view, dtype=np.float64)


def sparse_unit_rows(rng: np.random.Generator, n: int, dim: int = 30):
    from scipy import sparse

    x = sparse.random(n, dim, density=0.3, random_state=rng, format="csr")
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return (sparse.diags(1 / np.maximum(norms, 1e-12)) @ x).tocsr()


@pytest.mark.parametrize("chunk_size", [1, 16, 1024])
def test_nearest_target_share_matches_brute_force_in_two_views(chunk_size: int):
    """A dense and a sparse view, their cosines averaged; some documents are rows of the pool
    sample themselves and leave themselves out."""
    rng = np.random.default_rng(chunk_size)
    dense_view = [unit_rows(rng, n) for n in (40, 9, 30)]
    sparse_view = [sparse_unit_rows(rng, n) for n in (40, 9, 30)]
    docs, targets, reference = ([d, s] for d, s in zip(dense_view, sparse_view, strict=True))
    rows = [3, 7, 0, 29, 11]
    docs = [np.concatenate([reference[0][rows], docs[0][5:]]), docs[1]]
    docs[1] = docs[1].tolil()
    docs[1][:5] = reference[1][rows]
    docs[1] = docs[1].tocsr()
    exclude = np.full(40, -1)
    exclude[:5] = rows
    got = nearest_target_share(docs, targets, reference, exclude, chunk_size=chunk_size)
    np.testing.assert_allclose(
        got, brute_nearest_share(docs, targets, reference, exclude), atol=1e-6
    )


def test_nearest_target_share_orders_by_the_pool_documents_nearer_than_a_target():
    """n_i decides; the margin to the nearest pool document orders equal n_i only."""
    targets = np.array([[1.0, 0.0]])
    reference = np.array([[0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    angles = np.deg2rad([10.0, 20.0, 30.0, 35.0, 50.0, 80.0])  # the target at 0°, pool 45°, 90°
    docs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    got = nearest_target_share([docs], [targets], [reference])
    np.testing.assert_array_equal(np.argsort(-got), np.arange(6))
    closer = [0, 0, 1, 1, 2, 2]  # rows of the reference nearer than the target
    assert all(1 / (n + 1.75) <= s <= 1 / (n + 0.75) for n, s in zip(closer, got, strict=True))


def test_nearest_target_share_ranks_the_target_region_first():
    """Documents near the targets, in a region the pool sample rarely visits, outrank documents
    near the targets' nearest pool hub: the score is a density ratio, not closeness alone."""
    rng = np.random.default_rng(0)
    axes = np.eye(16, dtype=np.float32)

    def around(axis: np.ndarray, n: int, spread: float) -> np.ndarray:
        x = axis + spread * rng.standard_normal((n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    targets = np.concatenate([around(axes[0], 20, 0.1), around(axes[1], 20, 0.1)])
    reference = np.concatenate([around(axes[1], 200, 0.1), around(axes[2], 200, 0.1)])
    docs = np.concatenate([around(axes[0], 10, 0.1), around(axes[1], 10, 0.1)])
    share = nearest_target_share([docs], [targets], [reference])
    assert share[:10].min() > share[10:].max()
    assert cosine_scores(docs[:10], targets).mean() == pytest.approx(
        cosine_scores(docs[10:], targets).mean(), abs=0.1
    )


def test_nearest_target_share_refuses_bad_input():
    rng = np.random.default_rng(1)
    docs, targets = unit_rows(rng, 3), unit_rows(rng, 2)
    with pytest.raises(ValueError, match="same views"):
        nearest_target_share([docs], [targets, targets], [unit_rows(rng, 4)])
    with pytest.raises(ValueError, match="reference view of shape"):
        nearest_target_share([docs], [targets], [unit_rows(rng, 4, dim=8)])
    with pytest.raises(ValueError, match="no target examples"):
        nearest_target_share([docs], [targets[:0]], [unit_rows(rng, 4)])


def saved_and_loaded(state: dict) -> dict:
    import io

    from distsel.core.stage import _decode, _encode

    arrays: dict[str, np.ndarray] = {}
    encoded, buffer = _encode(state, arrays), io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return _decode(json.loads(json.dumps(encoded)), dict(loaded.items()))


@pytest.mark.parametrize("view", ["hybrid", "embedding", "cosine"])
def test_the_similarity_stage_scores_in_its_view(view: str):
    """contrast none: RDS+'s cosine; contrast pool: the nearest-target share in the embedding,
    or beside it in TF-IDF n-grams (IDF from the pool sample), each document's own row of the
    pool sample (matched by its random key) left out. The fit, saved as prepare_stage saves it
    (npz, no pickle) and loaded into a new stage, scores the same."""
    options = {"contrast": "none"} if view == "cosine" else {"view": view, "num_buckets": 64}
    config = parse_config(
        {
            "input": {"paths": ["unused.jsonl"]},
            "output": {"path": "unused"},
            "target": {"paths": ["t.jsonl"]},
            "select": {"method": "similarity", "budget": {"docs": 2}},
            "stages": {"similarity": options},
        }
    )
    stage = SimilarityStage(SimilarityStage.default_resources, config)
    rng = np.random.default_rng(2)
    ids = [f"doc-{i}" for i in range(12)]
    texts = [" ".join(rng.choice(list("abcdefgh"), 6)) for _ in range(12)]
    target_texts = [" ".join(rng.choice(list("abcxyz"), 6)) for _ in range(5)]
    docs, targets = unit_rows(rng, 12), unit_rows(rng, 5)
    stage.targets = {"t": targets}
    stage.reference, stage.reference_keys = docs[4:], random_keys(ids[4:], config.seed)
    if view == "hybrid":
        ngrams = TfidfView.fit(texts[4:], 64, 2)
        ngrams.targets = {"t": ngrams.rows(target_texts)}
        stage.ngram_view = ngrams.arrays()
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(docs.ravel()), 16)
    batch = pa.table({"id": ids, "text": texts, "embedding": embedding})
    got = stage(batch)
    restored = SimilarityStage(SimilarityStage.default_resources, config)
    restored.load_fitted(saved_and_loaded(stage.fitted_state()))
    np.testing.assert_array_equal(restored(batch)["similarity"], got["similarity"])
    exclude = np.array([-1] * 4 + list(range(8)))
    if view == "cosine":
        expected = cosine_scores(docs, targets)
    elif view == "embedding":
        expected = brute_nearest_share([docs], [targets], [docs[4:]], exclude)
    else:
        counted = [tfidf_by_counting(t, texts[4:], 64) for t in (texts, target_texts)]
        views = [docs, counted[0]], [targets, counted[1]], [docs[4:], counted[0][4:]]
        expected = brute_nearest_share(*views, exclude)
    np.testing.assert_allclose(got["similarity_task_t"], expected, atol=1e-6)
    np.testing.assert_array_equal(got["similarity"], got["similarity_task_t"])


@pytest.mark.parametrize("k", [1, 4, 10])
def test_has_target_neighbour_counts_the_targets_among_the_nearest(k: int):
    rng = np.random.default_rng(k)
    docs, targets, reference = unit_rows(rng, 60), unit_rows(rng, 6), unit_rows(rng, 40)
    both = np.concatenate([docs @ targets.T, docs @ reference.T], axis=1)
    nearest = np.argsort(-both, axis=1)[:, :k]
    expected = (nearest < len(targets)).any(axis=1)
    assert 0 < expected.sum() < len(docs)
    scores = nearest_target_share([docs], [targets], [reference])
    np.testing.assert_array_equal(has_target_neighbour(scores, k), expected)


@pytest.mark.parametrize("near_tokens", [10, 300])
def test_the_selector_warns_when_little_of_the_selection_has_a_target_neighbour(
    near_tokens: int, caplog: pytest.LogCaptureFixture
):
    """Two documents with a target among their k = 4 neighbours (score above 1/5), then two
    with more pool documents nearer than their nearest target; the manifest's
    near_target_tokens is the first two's share of the selection's tokens, and below a quarter
    (NEAR_TARGET_WARNING) the run warns."""
    config = parse_config(
        {
            "input": {"paths": ["unused.jsonl"]},
            "output": {"path": "unused"},
            "target": {"paths": ["t.jsonl"]},
            "select": {"method": "similarity", "budget": {"docs": 4}},
            "stages": {"similarity": {"neighbours": 4}},
        }
    )
    scores = np.array([0.25 + 0.01, 0.5 - 0.05, 0.1, 0.05, -0.02, 0.12])
    tokens = [near_tokens, near_tokens, 100, 100, 100, 100]
    pool = pool_of(tokens, {"similarity_task_t": scores})
    with caplog.at_level("WARNING", logger="distsel"):
        chosen, section = SimilaritySelector().select(
            pool, config, StageContext(config, None, ["p"])
        )
    assert sorted(chosen.tolist()) == [0, 1, 2, 5]
    near = 2 * near_tokens / (2 * near_tokens + 200)
    assert section["near_target_tokens"] == pytest.approx(near, abs=1e-4)
    warned = [r.getMessage() for r in caplog.records if "nearest documents" in r.getMessage()]
    assert len(warned) == (near < NEAR_TARGET_WARNING)
    if warned:
        assert f"{100 * near:.0f} % of the selection's tokens" in warned[0]
