"""Similarity of documents to target examples, and the selections built on it.

RDS+ — Ivison et al., "Large-Scale Data Selection for Instruction Tuning" (2025): a document's
score for a target task is its best cosine to the task's examples; with several tasks, the
best remaining document of each task is taken in turn (round-robin).
BETR — Mizrahi et al., "Language Models Improve When Pretraining Data Matches Target Tasks"
(2025): score a small sample of the pool against the target examples, label its top share
positive, train a cheap classifier on the sample's embeddings and apply it to the whole pool.

By default a document's score is not its cosine but a nearest-neighbour density ratio
(`nearest_target_share`): the share of target examples in the smallest neighbourhood of it, among
the targets and a seeded pool sample, that holds one. It is DSIR's importance weight
p_target / p_pool estimated in the embedding's space (or beside it, a TF-IDF view of n-grams): a
document near the target and rare in the pool outranks one near a target example in a region
the pool fills (generic documents that every target example is close to).

All embeddings are L2-normalised rows, so cosine(x, y) = x · y.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

Aggregate = Literal["max", "mean"]
Aggregate = Literal["max", "mean"]
DEFAULT_CHUNK = 2048
RANK_BLOCK = 1 << 24


def _as_matrix(name: str, array: np.ndarray) -> np.ndarray:
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows × dim), got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.floating):
        matrix = matrix.astype(np.float32)
    return matrix


def _check_pair(doc_emb: np.ndarray, target_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    docs = _as_matrix("doc_emb", doc_emb)
    targets = _as_matrix("target_emb", target_emb)
    if docs.shape[1] != targets.shape[1]:
        raise ValueError(
            f"doc_emb has dimension {docs.shape[1]} but target_emb has {targets.shape[1]}"
        )
    if len(targets) == 0:
        raise ValueError("target_emb holds no target examples")
    return docs, targets


def cosine_scores(
    doc_emb: np.ndarray,
    target_emb: np.ndarray,
    aggregate: Aggregate = "max",
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Each document's cosine to the target examples, aggregated over the examples.

        max:   s_i = max_j  d_i · t_j          (RDS+ and BETR use max)
        mean:  s_i = (1/m) Σ_j d_i · t_j = d_i · mean_j t_j

    Max is computed over blocks of `chunk_size` documents × `chunk_size` targets, so memory
    stays at one block whatever the numbers of documents and targets. Returns (n_docs,).
    """
    docs, targets = _check_pair(doc_emb, target_emb)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    dtype = np.result_type(docs.dtype, targets.dtype)
    if aggregate == "mean":
        centroid = targets.mean(axis=0, dtype=np.float64).astype(dtype)
        return docs @ centroid
    if aggregate != "max":
        raise ValueError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
    scores = np.full(len(docs), -np.inf, dtype=dtype)
    for d0 in range(0, len(docs), chunk_size):
        block = docs[d0 : d0 + chunk_size]
        best = scores[d0 : d0 + chunk_size]
        for t0 in range(0, len(targets), chunk_size):
            np.maximum(best, (block @ targets[t0 : t0 + chunk_size].T).max(axis=1), out=best)
    return scores


def nearest_target_share(
    doc_views: Sequence[Any],
    target_views: Sequence[Any],
    reference_views: Sequence[Any],
    exclude: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """How much more a document belongs to the target than to the pool, from the smallest
    neighbourhood of it that holds a target example. With c(x, y) = (1/V) Σ_v x_v · y_v the
    views' mean cosine, T the target examples and R a pool sample,

        n_i = |{r ∈ R : c(d_i, r) > max_t c(d_i, t)}|,   m_i = max_t c(d_i, t) − max_r c(d_i, r)
        s_i = 1 / (1 + n_i + (1 − m_i) / 4)

    1 / (1 + n_i) is the share of target examples among the n_i + 1 rows nearest to d_i: a
    nearest-neighbour estimate of p_T / p_pool whose k grows until it holds an example, so it is
    never zero, as a fixed-k share is for most documents when the target lies far from the pool.
    (1 − m_i) / 4 lies in [−¼, ¾] (m_i ≥ 0 exactly when n_i = 0): it orders documents of equal
    n_i and never crosses to another n. Each view is a (rows × dim) dense or scipy-sparse
    matrix of L2-normalised rows, the same views in the same order for documents, targets and
    R. `exclude[i]` is the row of R that is document i itself (−1: none), left out. Returns
    (n_docs,) float64.
    """
    _check_views(doc_views, target_views, reference_views)
    n_docs = doc_views[0].shape[0]
    scores = np.empty(n_docs, dtype=np.float64)
    for d0 in range(0, n_docs, chunk_size):
        block = [view[d0 : d0 + chunk_size] for view in doc_views]
        to_target = mean_cosines(block, target_views)
        to_reference = mean_cosines(block, reference_views)
        if exclude is not None:
            rows = np.flatnonzero(exclude[d0 : d0 + chunk_size] >= 0)
            to_reference[rows, exclude[d0 + rows]] = -np.inf
        scores[d0 : d0 + chunk_size] = _nearest_share_block(to_target, to_reference)
    return scores


def mean_cosines(rows: Sequence[Any], others: Sequence[Any]) -> np.ndarray:
    """(len(rows) × len(others)) float64: the views' mean of rows_v · others_vᵀ."""
    total = sum(_dense(a @ b.T) for a, b in zip(rows, others, strict=True))
    return np.asarray(total, dtype=np.float64) / len(rows)


def _dense(product: Any) -> np.ndarray:
    return product.toarray() if hasattr(product, "toarray") else np.asarray(product)


def _check_views(*sides: Sequence[Any]) -> None:
    if len({len(side) for side in sides}) != 1 or not sides[0]:
        raise ValueError("documents, targets and reference need the same views, at least one")
    for name, views in zip(("doc", "target", "reference"), sides, strict=True):
        for view, first in zip(views, sides[0], strict=True):
            if len(view.shape) != 2 or view.shape[1] != first.shape[1]:
                raise ValueError(f"{name} view of shape {view.shape}, documents' {first.shape}")
    if sides[1][0].shape[0] == 0:
        raise ValueError("the target views hold no target examples")


def _nearest_share_block(to_target: np.ndarray, to_reference: np.ndarray) -> np.ndarray:
    nearest = to_target.max(axis=1)
    closer = (to_reference > nearest[:, None]).sum(axis=1)
    best_reference = to_reference.max(axis=1, initial=-np.inf)
    margin = np.clip(nearest - best_reference, -2.0, 2.0)
    return 1 / (1 + closer + (1 - margin) / 4)


def has_target_neighbour(scores: np.ndarray, neighbours: int) -> np.ndarray:
    """Which `nearest_target_share` scores have a target example among their k nearest rows
    (n_i < k): exactly those above 1 / (k + 1)."""
    return np.asarray(scores) > 1 / (neighbours + 1)


def task_scores(
    doc_emb: np.ndarray,
    targets_per_task: Sequence[np.ndarray],
    aggregate: Aggregate = "max",
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """`cosine_scores` against each task's examples: (n_tasks, n_docs), for `round_robin`."""
    if len(targets_per_task) == 0:
        raise ValueError("no target tasks given")
    return np.stack([cosine_scores(doc_emb, t, aggregate, chunk_size) for t in targets_per_task])


def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """The `k` best indices of `scores`, best first; ties by lower index; NaN ranks last."""
    keys = np.where(np.isnan(scores), -np.inf, scores)
    n = len(keys)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.argsort(-keys, kind="stable")
    top = np.argpartition(-keys, k - 1)[:k]
    kth = keys[top].min()
    above = np.flatnonzero(keys > kth)
    tied = np.flatnonzero(keys == kth)[: k - len(above)]
    chosen = np.concatenate([above, tied])  # ascending within each part
    chosen.sort()
    return chosen[np.argsort(-keys[chosen], kind="stable")]


def round_robin(scores_per_task: Sequence[np.ndarray] | np.ndarray, k: int) -> np.ndarray:
    """Pick up to `k` documents, taking each task's best remaining document in turn (RDS+).

    `scores_per_task` is (n_tasks, n_docs), or one score array per task over the same
    documents; higher is better, ties go to the lower index, NaN counts as -inf. Task 0 picks
    first, then task 1, …; a document already taken is skipped. Returns the picked indices in
    the order picked (fewer than k only when there are fewer documents).
    """
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    if isinstance(scores_per_task, np.ndarray):
        matrix = scores_per_task
    else:
        rows = [np.asarray(s) for s in scores_per_task]
        if len({row.shape for row in rows}) > 1:
            raise ValueError("every task needs one score per document (same length)")
        matrix = np.stack(rows) if rows else np.empty((0, 0))
    if matrix.ndim != 2:
        raise ValueError(f"scores_per_task must be tasks × docs, got shape {matrix.shape}")
    n_tasks, n_docs = matrix.shape
    if n_tasks == 0:
        raise ValueError("no target tasks given")
    k = min(k, n_docs)
    # A task's pointer passes only documents picked by someone, so k candidates suffice.
    queues = [_ranked(matrix[t].astype(np.float64), k) for t in range(n_tasks)]
    return round_robin_queues(queues, n_docs, k)[0]


def round_robin_queues(
    queues: Sequence[np.ndarray], n_docs: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`round_robin` over each task's documents best first (`queues`, indices below n_docs):
    the first min(k, n_docs) picks, and per task how many entries of its queue it looked at
    (picked, or passed as taken by another task); one more than its queue's length when the
    queue ran out."""
    picked, pointers, _ = _round_robin(queues, n_docs, k)
    return picked, pointers


def round_robin_turns(
    queues: Sequence[np.ndarray], n_docs: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """`round_robin` over every document of the queues, and per task its turns: the number of
    documents picked before each turn, and the queue position it picked (its queue's length
    when the queue had run out), ending with a turn after the last pick at its queue's length
    (the task would look past everything it was given)."""
    picked, _, turns = _round_robin(queues, n_docs, n_docs)
    for t, queue in enumerate(queues):
        turns[t][0].append(len(picked))
        turns[t][1].append(len(queue))
    found = [(np.asarray(s, np.int64), np.asarray(p, np.int64)) for s, p in turns]
    return picked, found


def _round_robin(
    queues: Sequence[np.ndarray], n_docs: int, k: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[list[int], list[int]]]]:
    k = min(k, n_docs)
    pointers = [0] * len(queues)
    taken = np.zeros(n_docs, dtype=bool)
    picked: list[int] = []
    turns: list[tuple[list[int], list[int]]] = [([], []) for _ in queues]
    while len(picked) < k:
        for t, queue in enumerate(queues):
            p = pointers[t]
            while p < len(queue) and taken[queue[p]]:
                p += 1
            pointers[t] = p + 1
            turns[t][0].append(len(picked))
            turns[t][1].append(min(p, len(queue)))
            if p < len(queue):
                taken[queue[p]] = True
                picked.append(int(queue[p]))
                if len(picked) == k:
                    break
    return np.asarray(picked, dtype=np.int64), np.asarray(pointers, dtype=np.int64), turns


def task_order(scores: np.ndarray) -> np.ndarray:
    """A task's whole queue for `round_robin`: best first, ties by lower index, NaN last."""
    values = np.asarray(scores, dtype=np.float64)
    return _ranked(values, len(values))


def best_rank_scores(
    sample_emb: np.ndarray, target_emb: np.ndarray, chunk_size: int | None = None
) -> np.ndarray:
    """BETR's sample score: minus the best rank a document reaches among the target examples.

        rank_j(i) = position of document i when target j sorts the sample by cosine,
                    best first, from 0 (ties by lower index)
        score_i   = −min_j rank_j(i)

    Higher is better, as for every other score here. Targets are taken `chunk_size` at a
    time (by default as many as keep a block near RANK_BLOCK elements): memory is a few
    n_sample × chunk_size arrays.
    """
    docs, targets = _check_pair(sample_emb, target_emb)
    n = len(docs)
    if chunk_size is None:
        chunk_size = max(1, RANK_BLOCK // max(n, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    best = np.full(n, n, dtype=np.int64)
    positions = np.arange(n, dtype=np.int64)
    for t0 in range(0, len(targets), chunk_size):
        cosines = targets[t0 : t0 + chunk_size] @ docs.T  # (chunk, n): one row per target
        order = np.argsort(-cosines, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(positions, order.shape), axis=1)
        np.minimum(best, ranks.min(axis=0), out=best)
    return -best


def betr_labels(sample_scores: np.ndarray, top_fraction: float = 0.1) -> np.ndarray:
    """True for the ceil(top_fraction × n) best-scored documents (ties by lower index)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    scores = np.asarray(sample_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"sample_scores must be 1-D, got shape {scores.shape}")
    labels = np.zeros(len(scores), dtype=bool)
    if len(scores):
        count = max(1, math.ceil(top_fraction * len(scores) - 1e-9))  # 0.3 × 10 is 3, not 4
        labels[_ranked(scores, count)] = True
    return labels


@dataclass(frozen=True, eq=False)
class LinearScorer:
    """A linear classifier's decision function, score(x) = x · coef + intercept.

    Plain numbers only: `to_dict` gives JSON-ready lists and `from_dict` checks what it reads,
    so a scorer can be stored and handed around without pickle.
    """

    coef: np.ndarray
    intercept: float

    KIND: ClassVar[str] = "distsel.linear_scorer"
    VERSION: ClassVar[int] = 1

    @property
    def dim(self) -> int:
        return int(self.coef.shape[0])

    def arrays(self) -> dict[str, Any]:
        """The fields as they are (for the fitted-state store): LinearScorer(**arrays())."""
        return {"coef": self.coef, "intercept": float(self.intercept)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "version": self.VERSION,
            "coef": [float(c) for c in self.coef],
            "intercept": float(self.intercept),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearScorer:
        if not isinstance(data, dict) or data.get("kind") != cls.KIND:
            raise ValueError(f"not a serialised LinearScorer (kind must be {cls.KIND!r})")
        if data.get("version") != cls.VERSION:
            raise ValueError(f"unsupported LinearScorer version {data.get('version')!r}")
        try:
            coef = np.asarray(data["coef"], dtype=np.float64)
            intercept = float(data["intercept"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed LinearScorer: {error}") from None
        if coef.ndim != 1 or len(coef) == 0:
            raise ValueError(f"LinearScorer coef must be a non-empty list, got shape {coef.shape}")
        if not (np.isfinite(coef).all() and math.isfinite(intercept)):
            raise ValueError("LinearScorer holds non-finite numbers")
        return cls(coef=coef, intercept=intercept)


def fit_betr_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    c: float = 1.0,
    max_iter: int = 1000,
    balanced: bool = False,
) -> LinearScorer:
    """Logistic regression (scikit-learn, L2 penalty with inverse strength `c`) of labels on
    features (dense, or scipy sparse), returned as its decision function: BETR's cheap
    classifier. `balanced` weighs each class by the inverse of its count."""
    from sklearn.linear_model import LogisticRegression

    x = features if hasattr(features, "tocsr") else _as_matrix("features", features)
    y = np.asarray(labels).astype(bool)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be 1-D with one label per row, got shape {y.shape}")
    if y.all() or not y.any():
        raise ValueError("labels need both classes (some True and some False)")
    weights = "balanced" if balanced else None
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed, class_weight=weights)
    model.fit(x, y)
    return LinearScorer(
        coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0])
    )


def predict_scores(model: LinearScorer, features: Any) -> np.ndarray:
    """Decision values x · coef + intercept (higher = more like the positives), float64, of
    dense rows or scipy sparse rows (as BETR's n-gram features are)."""
    x = features if hasattr(features, "tocsr") else _as_matrix("features", features)
    if x.shape[1] != model.dim:
        raise ValueError(f"features have dimension {x.shape[1]}, the classifier {model.dim}")
    return np.asarray(x.astype(np.float64, copy=False) @ model.coef).ravel() + model.intercept


# The name distsel.methods.classifier scores its sparse features with.
sparse_scores = predict_scores
