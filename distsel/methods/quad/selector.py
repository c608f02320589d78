"""Quad's selector: the registered entry point that clusters, prepares the costly scorer (the
influence stage by default), builds the bandit and plays it on the pool's shards."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from distsel.core import layout
from distsel.core.candidates import Walk
from distsel.core.config import Budget, Config
from distsel.core.errors import DistselError
from distsel.core.pool import Pool
from distsel.core.registry import register_selector, stage_class
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext, prepare_stage
from distsel.core.storage import Store
from distsel.methods.quad.bandit import QuadBandit
from distsel.methods.quad.documents import QuadDocuments
from distsel.methods.quad.options import QuadOptions
from distsel.methods.quad.predicted import PredictedQuadBandit


def make_bandit(
    clusters: np.ndarray,
    random_key: np.ndarray,
    tokens: np.ndarray,
    centroid_distances: np.ndarray,
    options: QuadOptions,
    budget: Budget,
    seed: int,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    classifier: np.ndarray | None = None,
    shards: int = 1,
) -> QuadBandit:
    """A bandit over documents given as arrays, held in this process in `shards` shards:
    `features` the model's (distsel.algorithms.influence_model.pool_features), `classifier` one
    score per document (needed when classifier_weight > 0)."""
    predicted = options.within_cluster == "predicted"
    if predicted and classifier is None and options.classifier_weight > 0:
        raise ValueError("quad with classifier_weight > 0 needs the pool's classifier scores")
    arms = int(centroid_distances.shape[0])
    documents = QuadDocuments.from_arrays(
        clusters, random_key, tokens, arms, features, classifier, shards
    )
    return bandit_for(documents, centroid_distances, options, budget, seed)


def bandit_for(
    documents: QuadDocuments,
    centroid_distances: np.ndarray,
    options: QuadOptions,
    budget: Budget,
    seed: int,
) -> QuadBandit:
    """The paper's bandit, or with `within_cluster: predicted` the one with an influence model."""
    arguments = (documents, centroid_distances, options, budget, seed)
    if options.within_cluster == "random":
        return QuadBandit(*arguments)
    return PredictedQuadBandit(*arguments)


@dataclass(frozen=True)
class ChosenPlan:
    """Quad's finished selection as a HeadPlan (distsel.core.candidates): each part sends the
    rows its shard wrote (layout.quad_chosen), and the selection is every document sent.
    `section` is the manifest's quad section."""

    store: Store
    section: dict[str, Any]
    by_tokens: bool
    min_head: int = 0

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]]:
        data = self.store.read_bytes(layout.quad_chosen(part.parts[0]))
        rows = np.load(io.BytesIO(data), allow_pickle=False)
        return [(np.searchsorted(part.row_index, rows), None)]

    def walks(self, pool: Pool) -> list[Walk]:
        return [Walk(np.arange(len(pool)), None, self.by_tokens)]


@register_selector("quad", options=QuadOptions, needs_target=True)
class QuadSelector:
    """Quad: a bandit over k-means clusters that computes a costly score (influence by default)
    only on a few draws per pull. The pool stays on the cluster: shard actors hold its
    documents and the bandit's per-document state (distsel.methods.quad.documents), and the
    selection is gathered as each part's chosen rows."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        if config.select.options("quad").within_cluster == "predicted":
            return ("embed", "cluster", "classifier")
        return ("embed", "cluster")

    def plan(
        self, store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray]
    ) -> ChosenPlan:
        """Play the bandit (or resume it) over shards of the pool; its selection, by part."""
        context = StageContext(config, store, parts, dropped)
        section = run_quad(config, context)
        return ChosenPlan(store, section, config.select.budget.by_tokens)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        for column in ("classifier_score", "cluster"):  # what selected/ carries
            if column in pool.scores:
                score_column(pool, column)
        return np.arange(len(pool), dtype=np.int64), dict(pool.plan.section)


def run_quad(config: Config, context: StageContext) -> dict[str, Any]:
    """Prepare the scorer and the shards, play the bandit, write the chosen rows of each part
    (layout.quad_chosen); the manifest section."""
    from distsel.core.runner import StagePool
    from distsel.methods.cluster import load_centroid_distances

    options = config.select.options("quad")
    stage, column = _quad_scorer(config, context)
    distances = load_centroid_distances(context.store)
    predicted = options.within_cluster == "predicted"
    documents = QuadDocuments.from_store(
        context.store,
        context.parts,
        dict(context.left_out),
        config.seed,
        int(distances.shape[0]),
        predicted,
    )
    scorer = None
    try:
        if predicted:
            documents.prepare_features(_target_vectors(config))
        bandit = bandit_for(documents, distances, options, config.select.budget, config.seed)
        # the scores in a saved state hold only under the scorer they came from
        bandit.state.fingerprint["scorer"] = stage.fingerprint()
        scorer = StagePool(stage, column)
        chosen = bandit.run(lambda groups: scorer.score(documents.texts(groups)), context.store)
        documents.write_chosen(chosen)
        summary = bandit.summary()
    finally:
        if scorer is not None:
            scorer.close()
        documents.close()
    section = {"budget": budget_section(config), **options.model_dump(), "score_column": column}
    return {**section, **summary, stage.name: stage.summary}


def _target_vectors(config: Config) -> np.ndarray:
    """The target examples' embeddings."""
    from distsel.core.records import read_texts
    from distsel.methods.embed import EmbedStage, embed_texts_on_cluster

    target = config.target
    texts = read_texts(target.paths, target.text_field, target.storage_options)
    resources = EmbedStage.from_config(config, EmbedStage.default_resources).resources
    return embed_texts_on_cluster({"target": texts}, config.embed, resources)["target"]


def _quad_scorer(config: Config, context: StageContext) -> tuple[Any, str]:
    """The prepared stage behind Quad's rewards, and the column of its output they use."""
    options = config.select.options("quad")
    stage_type = stage_class(options.scorer)
    if tuple(stage_type.input_columns) != ("text",) and not stage_type.tokenizes_texts:
        raise DistselError(f"select.quad.scorer: stage '{options.scorer}' does not score text")
    column = options.score_column
    if column is None and options.scorer == "influence":
        column = (
            "influence_normalized" if config.select.options("influence").normalize else "influence"
        )
    column = column or stage_type.output_columns[0]
    if column not in stage_type.output_columns:
        known = ", ".join(stage_type.output_columns)
        raise DistselError(
            f"select.quad.score_column: stage '{options.scorer}' writes {known}, not '{column}'"
        )
    resources = stage_type.default_resources.with_overrides(config.stages.get(options.scorer))
    stage = stage_type.from_config(config, resources)
    prepare_stage(stage, context)
    return stage, column
