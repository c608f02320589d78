"""Quad's selector: the registered entry point that clusters, prepares the costly scorer (the
influence stage by default), builds the bandit and plays it on the pool."""

from __future__ import annotations

from typing import Any

import numpy as np

from distsel.core.config import Budget, Config
from distsel.core.errors import DistselError
from distsel.core.pool import Pool, fetch_texts
from distsel.core.registry import register_selector, stage_class
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext, prepare_stage
from distsel.methods.quad.bandit import QuadBandit
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
) -> QuadBandit:
    """The paper's bandit, or with `within_cluster: predicted` the one with an influence model
    (`features`) whose value adds the classifier score (`classifier`, one per document) with
    weight classifier_weight."""
    arguments = (clusters, random_key, tokens, centroid_distances, options, budget, seed)
    if options.within_cluster == "random":
        return QuadBandit(*arguments)
    if features is None:
        raise ValueError("quad with within_cluster: predicted needs the pool's features")
    return PredictedQuadBandit(*arguments, features, classifier)


@register_selector("quad", options=QuadOptions, needs_target=True)
class QuadSelector:
    """Quad: a bandit over k-means clusters that computes a costly score (influence by default)
    only on a few draws per pull."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        if config.select.options("quad").within_cluster == "predicted":
            return ("embed", "cluster", "classifier")
        return ("embed", "cluster")

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from distsel.core.runner import StagePool
        from distsel.methods.cluster import load_centroid_distances

        options = config.select.options("quad")
        stage, column = _quad_scorer(config, context)
        features = classifier = shards = None
        if options.within_cluster == "predicted":
            classifier = score_column(pool, "classifier_score")
            shards, features = _model_features(config, context, pool, classifier)
        clusters = score_column(pool, "cluster").astype(np.int64)
        bandit = make_bandit(
            clusters,
            pool.random_key,
            pool.tokens,
            load_centroid_distances(context.store),
            options,
            config.select.budget,
            config.seed,
            features,
            classifier,
        )
        # the scores in a saved state hold only under the scorer they came from
        bandit.state.fingerprint["scorer"] = stage.fingerprint()
        scorer = StagePool(stage, column)
        try:
            chosen = bandit.run(
                lambda groups: scorer.score(fetch_texts(context.store, pool, groups)), context.store
            )
        finally:
            scorer.close()
            if shards is not None:
                shards.close()
        section = {"budget": budget_section(config), **options.model_dump(), "score_column": column}
        return chosen, {**section, **bandit.summary(clusters), stage.name: stage.summary}


def _model_features(
    config: Config, context: StageContext, pool: Pool, classifier: np.ndarray
) -> tuple[Any, tuple[Any, np.ndarray]]:
    """The influence model's features (distsel.algorithms.influence_model.pool_features): the
    shards' standardised embeddings (distsel.methods.quad.features), and on the driver the
    covariates log(1 + tokens), the best cosine to the target examples (RDS+'s max) and the
    classifier score."""
    from distsel.algorithms.influence_model import covariate_features
    from distsel.methods.quad.features import EmbeddingShards

    shards = EmbeddingShards(context.store, pool)
    try:
        cosine = shards.target_cosine(_target_vectors(config))
        shards.standardize()
    except BaseException:
        shards.close()
        raise
    return shards, (shards, covariate_features(pool.tokens, cosine, classifier))


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
