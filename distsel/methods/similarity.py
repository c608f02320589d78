"""Similarity to target examples: the SimilarityStage and BetrStage, and the selector.

RDS+ (Ivison et al. 2025) and BETR (Mizrahi et al. 2025); the scores, their formulas and the
nearest-target share are in distsel.algorithms.similarity.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from distsel.algorithms.similarity import (
    LinearScorer,
    best_rank_scores,
    betr_labels,
    cosine_scores,
    fit_betr_classifier,
    has_target_neighbour,
    nearest_target_share,
    predict_scores,
    round_robin,
    round_robin_queues,
    round_robin_turns,
    task_order,
)
from distsel.core import layout
from distsel.core.candidates import RankedPlan, Walk, last_sent
from distsel.core.config import Config, StrictModel
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.pool import Pool, random_keys
from distsel.core.records import read_target_tasks
from distsel.core.registry import register_selector, register_stage
from distsel.core.samplers import descending, fill_budget, fill_limit
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import Resources, Stage, StageContext
from distsel.core.storage import Store
from distsel.core.vectors import embedding_matrix
from distsel.methods.cluster import sample_embedding_rows
from distsel.methods.dsir import NgramOptions, hashed_ngrams
from distsel.methods.embed import EmbedStage, embed_texts_on_cluster

log = logging.getLogger("distsel")
# Below this share of the selection's tokens near a target example, the run warns (on the task
# suite: 0.10-0.11 on its task-style targets, 0.40-0.47 on its topic tasks, 0.97-1.0 on a domain).
NEAR_TARGET_WARNING = 0.25


class SimilarityStageOptions(NgramOptions):
    """`stages.similarity`: with `contrast: pool`, a document's `nearest_target_share` among the
    targets and a pool sample of `reference` documents, in `view`: `hybrid`, the embedding's
    cosine and the TF-IDF cosine of hashed n-grams (`num_buckets`, `ngrams`) averaged, or
    `embedding` alone; with `contrast: none`, its best (max) or mean cosine to a task's examples
    in the embedding. A document with fewer than `neighbours` pool documents nearer than its
    nearest target example counts as near a target (the selection's warning)."""

    contrast: Literal["pool", "none"] = "pool"
    view: Literal["hybrid", "embedding"] = "hybrid"
    neighbours: int = Field(default=20, gt=0)
    reference: int = Field(default=5_000, gt=0)
    aggregate: Literal["max", "mean"] = "max"


class BetrOptions(NgramOptions):
    """`stages.betr`: embed `sample` documents, label their best-ranked `top_fraction`, and fit
    the n-gram classifier that scores every document."""

    sample: int = Field(default=5_000, gt=0)
    top_fraction: float = Field(default=0.1, gt=0, lt=1)


class SimilarityOptions(StrictModel):
    """`select.similarity`: with `betr`, rank by the betr stage instead of embedding all."""

    betr: bool = False


# ---------------------------------------------------------------------------------------------
# Pipeline stages


@register_stage
class SimilarityStage(Stage):
    """Each document's closeness to each target task: with `contrast: pool` (the default), its
    `nearest_target_share` against a seeded pool sample of `reference` documents, by default in
    the hybrid view (the embedding beside TF-IDF n-grams, whose IDF comes from that sample);
    with `contrast: none`, its embedding's cosine to the task's examples, aggregated (RDS+).

    Columns: `similarity_task_<task>` per target file, and `similarity`, the best over tasks.
    """

    name = "similarity"
    input_columns = ("id", "text")
    requires = ("embed",)
    output_columns = ("similarity",)
    default_resources = Resources(num_cpus=1, batch_size=8192)
    fitted = ("targets", "reference", "reference_keys", "ngram_view")
    options_class = SimilarityStageOptions

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.target = config.target
        self.seed = config.seed
        self.embed_options = config.embed
        self.embed_resources = EmbedStage.from_config(
            config, EmbedStage.default_resources
        ).resources
        self.options = config.stage_options(self.name)
        self.targets: dict[str, np.ndarray] = {}
        self.reference = np.zeros((0, 0), dtype=np.float32)
        self.reference_keys = np.zeros(0, dtype=np.uint64)
        self.ngram_view: dict[str, Any] = {}  # TfidfView.arrays() of the hybrid view

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> SimilarityStage:
        if not config.target.paths:
            raise DistselError("the similarity stage needs target.paths (target examples)")
        return cls(resources, config)

    def fingerprint(self) -> dict[str, Any]:
        contrast = self.options.contrast == "pool"
        hybrid = contrast and self.options.view == "hybrid"
        unused = {"neighbours"} | (set() if contrast else {"reference", "view"})
        unused |= set() if hybrid else set(NgramOptions.model_fields)
        return {
            "name": self.name,
            **self.options.model_dump(exclude=unused),
            "embed": self.embed_options.model_dump(),
            "target": self.target.model_dump(exclude={"storage_options"}),
            **({"seed": self.seed} if contrast else {}),
        }

    def prepare(self, context: StageContext) -> None:
        tasks = read_target_tasks(
            self.target.paths, self.target.text_field, self.target.storage_options
        )
        self.targets = embed_texts_on_cluster(tasks, self.embed_options, self.embed_resources)
        if self.options.contrast == "pool":
            self.reference_keys, self.reference = sample_embedding_rows(
                context.store,
                context.parts,
                self.options.reference,
                self.seed,
                context.left_out_of(),
            )
            self.summary = {"reference_docs": len(self.reference_keys)}
            if self.options.view == "hybrid":
                texts = texts_of_keys(context.store, context.parts, self.seed, self.reference_keys)
                view = TfidfView.fit(texts, self.options.num_buckets, self.options.ngrams)
                view.targets = {name: view.rows(examples) for name, examples in tasks.items()}
                self.ngram_view = view.arrays()

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        documents = [embedding_matrix(batch.column("embedding"))]
        if self.options.contrast == "none":
            scores = {n: self.score(documents, [t], None) for n, t in self.targets.items()}
        else:
            exclude = self.own_reference_rows(batch)
            reference, targets = [self.reference], {n: [t] for n, t in self.targets.items()}
            if self.ngram_view:
                view = TfidfView.from_arrays(self.ngram_view)
                documents.append(view.rows(batch.column("text").to_pylist()))
                reference.append(view.reference)
                targets = {n: [*t, view.targets[n]] for n, t in targets.items()}
            scores = {n: self.score(documents, t, exclude, reference) for n, t in targets.items()}
        columns = {f"similarity_task_{name}": values for name, values in scores.items()}
        return {"similarity": np.max(np.stack(list(columns.values())), axis=0), **columns}

    def own_reference_rows(self, batch: pa.Table) -> np.ndarray:
        """Each document's row in the pool sample (matched by its random key), or −1."""
        keys = random_keys(batch.column("id").to_pylist(), self.seed)
        if not len(self.reference_keys):
            return np.full(len(keys), -1, dtype=np.int64)
        order = np.argsort(self.reference_keys)
        at = np.searchsorted(self.reference_keys, keys, sorter=order).clip(max=len(order) - 1)
        rows = order[at]
        return np.where(self.reference_keys[rows] == keys, rows, -1).astype(np.int64)

    def score(
        self,
        documents: list[Any],
        targets: list[Any],
        exclude: np.ndarray | None,
        reference: list[Any] | None = None,
    ) -> np.ndarray:
        """RDS+'s cosine in the embedding (no `reference`), or `nearest_target_share` in the
        views given."""
        if reference is None:
            return cosine_scores(documents[0], targets[0], self.options.aggregate)
        return nearest_target_share(documents, targets, reference, exclude)


@register_stage
class BetrStage(Stage):
    """BETR at scale: embed only a sample, label its best-ranked share, and score every document
    with a linear classifier on hashed n-grams, x_b = log(1 + count_b) / ‖log(1 + count)‖₂.
    """

    name = "betr"
    input_columns = ("text",)
    output_columns = ("betr_score",)
    default_resources = Resources(num_cpus=1, batch_size=2048)
    fitted = ("scorer",)
    options_class = BetrOptions

    def fitted_state(self) -> dict[str, Any]:
        return self.scorer.arrays()

    def load_fitted(self, state: dict[str, Any]) -> None:
        self.scorer = LinearScorer(**state)

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.config = config
        self.options = config.stage_options(self.name)
        self.buckets = self.options.num_buckets
        self.ngrams = self.options.ngrams
        self.scorer: LinearScorer | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> BetrStage:
        if not config.target.paths:
            raise DistselError("the betr stage needs target.paths (target examples)")
        return cls(resources, config)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": self.options.model_dump(),
            "features": [self.buckets, self.ngrams],
            "embed": self.config.embed.model_dump(),
            "target": self.config.target.model_dump(exclude={"storage_options"}),
            "seed": self.config.seed,
        }

    def prepare(self, context: StageContext) -> None:
        config, options = self.config, self.options
        sample = sample_texts(
            context.store, context.parts, options.sample, config.seed, context.left_out_of()
        )
        tasks = read_target_tasks(
            config.target.paths, config.target.text_field, config.target.storage_options
        )
        embed_resources = EmbedStage.from_config(config, EmbedStage.default_resources).resources
        vectors = embed_texts_on_cluster(
            {"sample": sample, "targets": [t for texts in tasks.values() for t in texts]},
            config.embed,
            embed_resources,
        )
        labels = betr_labels(
            best_rank_scores(vectors["sample"], vectors["targets"]), options.top_fraction
        )
        self.scorer = fit_betr_classifier(self.features(sample), labels, seed=config.seed)
        self.summary = {"sample_docs": len(sample), "positive_docs": int(labels.sum())}

    def features(self, texts: list[str]) -> Any:
        return ngram_features(texts, self.buckets, self.ngrams)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        features = self.features(batch.column("text").to_pylist())
        return {"betr_score": predict_scores(self.scorer, features)}


def ngram_features(texts: list[str], buckets: int, ngrams: int) -> Any:
    """Sparse rows x_b = log(1 + count_b) / ‖log(1 + count)‖₂ of hashed n-gram counts."""
    from scipy import sparse

    doc_index, bucket = hashed_ngrams(texts, buckets, ngrams)
    shape = (len(texts), buckets)
    counts = sparse.csr_matrix((np.ones(len(bucket)), (doc_index, bucket)), shape=shape)
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data)
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    return sparse.diags(1 / np.maximum(norms, 1e-12)) @ counts


@dataclass
class TfidfView:
    """The hybrid view's n-gram side: rows x = w / ‖w‖₂ with w_b = log(1 + count_b) · idf_b over
    hashed n-grams (`ngram_features`) and idf_b = log((1 + N) / (1 + df_b)) + 1 from the N
    reference documents; the reference's and the targets' rows are kept for the cosines."""

    buckets: int
    ngrams: int
    idf: np.ndarray
    reference: Any = None  # scipy CSR rows
    targets: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def fit(cls, texts: list[str], buckets: int, ngrams: int) -> TfidfView:
        counts = ngram_features(texts, buckets, ngrams)
        view = cls(buckets, ngrams, np.log((1 + len(texts)) / (1 + counts.getnnz(axis=0))) + 1)
        view.reference = view.weighted(counts)
        return view

    def rows(self, texts: list[str]) -> Any:
        return self.weighted(ngram_features(texts, self.buckets, self.ngrams))

    def weighted(self, counts: Any) -> Any:
        from scipy import sparse

        rows = counts @ sparse.diags(self.idf)
        norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
        return (sparse.diags(1 / np.maximum(norms, 1e-12)) @ rows).tocsr()

    def arrays(self) -> dict[str, Any]:
        return {
            "shape": np.array([self.buckets, self.ngrams]),
            "idf": self.idf,
            "reference": _csr_arrays(self.reference),
            "targets": {name: _csr_arrays(rows) for name, rows in self.targets.items()},
        }

    @classmethod
    def from_arrays(cls, state: dict[str, Any]) -> TfidfView:
        buckets, ngrams = (int(v) for v in state["shape"])
        targets = {name: _csr(rows, buckets) for name, rows in state["targets"].items()}
        return cls(buckets, ngrams, state["idf"], _csr(state["reference"], buckets), targets)


def _csr_arrays(rows: Any) -> dict[str, np.ndarray]:
    return {"data": rows.data, "indices": rows.indices, "indptr": rows.indptr}


def _csr(arrays: dict[str, np.ndarray], columns: int) -> Any:
    from scipy import sparse

    shape = (len(arrays["indptr"]) - 1, columns)
    return sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)


def _texts_with_keys(store: Store, part: str, seed: int, keys: np.ndarray) -> list[tuple[int, str]]:
    docs = store.read_table(layout.docs(part), columns=["id", "text"])
    found = random_keys(docs.column("id").to_pylist(), seed)
    rows = np.flatnonzero(np.isin(found, keys))
    return list(zip(found[rows].tolist(), docs.column("text").take(rows).to_pylist(), strict=True))


def texts_of_keys(store: Store, parts: list[str], seed: int, keys: np.ndarray) -> list[str]:
    """The texts of the documents whose random keys (`random_keys(id, seed)`) are `keys`, in
    the order of `keys`."""
    calls = [(store, part, seed, keys) for part in parts]
    by_key = dict(pair for pairs in current().map(_texts_with_keys, calls) for pair in pairs)
    return [by_key[key] for key in keys.tolist()]


def _sample_part(
    store: Store, part: str, seed: int, below: int, left_out: np.ndarray | None
) -> list[tuple[int, str]]:
    docs = store.read_table(layout.docs(part), columns=["id", "text"])
    keys = random_keys(docs.column("id").to_pylist(), seed)
    rows = np.setdiff1d(np.flatnonzero(keys < np.uint64(below)), _none_empty(left_out))
    texts = docs.column("text").take(rows).to_pylist()
    return list(zip(keys[rows].tolist(), texts, strict=True))


def _none_empty(rows: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, dtype=np.int64) if rows is None else rows


def sample_texts(
    store: Store,
    parts: list[str],
    size: int,
    seed: int,
    left_out: list[np.ndarray | None] | None = None,
) -> list[str]:
    """A seeded uniform sample of `size` documents' texts: the smallest random keys, each part
    sending only the rows under a cut that keeps about 1.5 × `size` in all; a part's
    `left_out` rows (StageContext.left_out_of) never."""
    total = sum(store.row_counts([layout.docs(part) for part in parts]))
    fraction = min(1.0, 1.5 * size / max(total, 1))
    below = min(int(fraction * 2**64), 2**64 - 1)
    left_out = left_out or [None] * len(parts)
    calls = [(store, p, seed, below, rows) for p, rows in zip(parts, left_out, strict=True)]
    found = current().map(_sample_part, calls)
    candidates = [pair for pairs in found for pair in pairs]
    return [text for _, text in sorted(candidates)[:size]]


@register_selector("similarity", options=SimilarityOptions, needs_target=True)
class SimilaritySelector:
    """Highest similarity score first (the similarity stage's); with several target sets,
    round-robin over them (RDS+).

    Under a token budget: cosines of mean-pooled embeddings (of a document's first
    embed.max_length tokens) and of L2-normalised TF-IDF rows do not grow with length, so
    documents are ranked by their scores alone and the order is walked, keeping each document
    that still fits."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("betr",) if config.select.options("similarity").betr else ("similarity",)

    def rankings(self, pool: Pool, config: Config) -> list[np.ndarray]:
        """One ranking per target task; one task's is highest first, ties in seeded order;
        several tasks' are round_robin's queues (ties by pool order)."""
        columns = _columns(pool, config)
        if len(columns) == 1:
            return [descending(score_column(pool, columns[0]), pool.random_key)]
        return [task_order(score_column(pool, c)) for c in columns]

    def plan(
        self, store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray]
    ) -> RoundRobinPlan:
        return RoundRobinPlan(self.rankings, config, max(len(parts), 1))

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.options("similarity")
        columns = _columns(pool, config)
        if len(columns) == 1:
            order = self.rankings(pool, config)[0]
        else:
            order = round_robin(np.stack([score_column(pool, c) for c in columns]), len(pool))
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        near = near_target_tokens(pool, config, columns, chosen)
        if near is not None and near < NEAR_TARGET_WARNING:
            log.warning(
                "warning: similarity: %.0f %% of the selection's tokens have a target example "
                "among their %d nearest documents: the target lies far from the pool, where "
                "nearness says less about what a model trained on the selection gains; compare "
                "dsir or quad.",
                100 * near,
                config.stage_options("similarity").neighbours,
            )
        return chosen, {
            "budget": budget_section(config),
            "columns": columns,
            **options.model_dump(),
            **({"near_target_tokens": round(near, 4)} if near is not None else {}),
        }


def near_target_tokens(
    pool: Pool, config: Config, columns: list[str], chosen: np.ndarray
) -> float | None:
    """The share of the chosen documents' tokens with a target example among their neighbours
    (`has_target_neighbour`); None where the scores are not nearest-target shares."""
    options = config.stage_options("similarity")
    if columns == ["betr_score"] or options.contrast != "pool" or not len(chosen):
        return None
    scores = [score_column(pool, column)[chosen] for column in columns]
    near = np.any([has_target_neighbour(s, options.neighbours) for s in scores], axis=0)
    tokens = pool.tokens[chosen].astype(np.float64)
    return float(tokens[near].sum() / max(tokens.sum(), 1.0))


@dataclass(frozen=True)
class RoundRobinPlan(RankedPlan):
    """Heads for several target tasks: each part sends the head of every task's ranking.

    Documents: task t's walk is the part of its ranking that round-robin looked at (picked, or
    passed as taken), so a part is short for t when the round-robin looked past the last
    document it sent. Tokens: the budget is filled along the round-robin order of the heads
    (RoundRobinFill), and a part is short for t when t looked past the last document the part
    sent for it while the fill could still take a document."""

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]] | None:
        return [(order, self.share) for order in self.rankings(part, self.config)]

    def walks(self, pool: Pool) -> list[Walk]:
        orders = self.rankings(pool, self.config)
        if len(orders) == 1:
            return [Walk(orders[0], self.limit, self.by_tokens)]
        if self.by_tokens:
            order, turns = round_robin_turns(orders, len(pool))
            fill = TokenFill.along(order, pool.tokens, self.limit)
            return [
                RoundRobinFill(queue, self.limit, True, fill, steps, positions)
                for queue, (steps, positions) in zip(orders, turns, strict=True)
            ]
        _, looked_at = round_robin_queues(orders, len(pool), self.limit)
        return [Walk(o, int(n), by_tokens=False) for o, n in zip(orders, looked_at, strict=True)]


@dataclass(frozen=True)
class TokenFill:
    """A token budget filled along an order (fill_limit): before each step s of the order, the
    tokens left (`left[s]`) and the fewest tokens of a document at s or later (`fewest[s]`);
    both have one more entry, for the end of the order."""

    taken: np.ndarray
    left: np.ndarray
    fewest: np.ndarray

    @classmethod
    def along(cls, order: np.ndarray, tokens: np.ndarray, limit: int) -> TokenFill:
        taken = fill_limit(order, tokens, limit, by_tokens=True)
        chosen = np.zeros(len(tokens), dtype=bool)
        chosen[taken] = True
        spent = np.concatenate([[0], np.cumsum(np.where(chosen[order], tokens[order], 0))])
        fewest = np.minimum.accumulate(np.append(tokens[order], np.inf)[::-1])[::-1]
        return cls(taken, limit - spent, fewest)


@dataclass(frozen=True)
class RoundRobinFill(Walk):
    """Task t's share of a token fill along the round-robin order of every task's queue: its
    queue (`order`), and its turns (before each, the documents already picked, `steps`, and the
    queue position it picked, `positions`).

    Up to the first turn at which t picks past the last document a part sent for it, the
    round-robin over the heads is the one over the pool. Past it the orders can differ, so the
    fill over the heads is the fill over the pool only if it takes nothing more: the tokens left
    then are below every document not yet ordered (the heads' from that step on, and those any
    part left out). A part is short for t where that fails."""

    fill: TokenFill | None = None
    steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    positions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def taken(self, tokens: np.ndarray) -> np.ndarray:
        return self.fill.taken

    def short(
        self, pool: Pool, sent: np.ndarray, left_out: np.ndarray, fewest_left_out: float
    ) -> np.ndarray:
        """See the class docstring."""
        last = last_sent(pool, self.order, sent)
        turn = np.searchsorted(self.positions, last, side="right")  # the first turn past it
        step = self.steps[np.minimum(turn, len(self.steps) - 1)]
        fewest = np.minimum(self.fill.fewest[step], fewest_left_out)
        return (turn < len(self.steps)) & (self.fill.left[step] >= fewest)


def _columns(pool: Pool, config: Config) -> list[str]:
    if config.select.options("similarity").betr:
        return ["betr_score"]
    return sorted(c for c in pool.scores if c.startswith("similarity_task_"))
