"""Selectors: each turns a pool of scored documents into a chosen set under the budget."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from distsel.config import Config
from distsel.errors import DistselError
from distsel.scoring import stage_for_column
from distsel.select.mixture import MixtureSelector
from distsel.select.pool import Pool, fetch_texts, gather_pool
from distsel.select.samplers import ccs_stratified, descending, fill_budget, random_order
from distsel.stage import StageContext, prepare_stage

__all__ = ["Pool", "Selector", "gather_pool", "selector_for"]


class Selector(Protocol):
    """A selector may set `filters = True` when it keeps only documents that pass a test (the
    budget then only caps them): a budget larger than the pool selects every passing document
    instead of the whole pool (see distsel.pipeline.choose)."""

    def required_stages(self, config: Config) -> tuple[str, ...]: ...

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Indices into the pool of the chosen documents, and the manifest section."""
        ...


def _budget(config: Config) -> dict[str, int] | None:
    budget = config.select.budget
    return budget.model_dump(exclude_none=True) if budget else None


def _column(pool: Pool, name: str) -> np.ndarray:
    if name not in pool.scores:
        known = ", ".join(sorted(pool.scores)) or "none"
        raise DistselError(f"no numeric score column '{name}' (score columns: {known})")
    return np.asarray(pool.scores[name], dtype=np.float64)


class AllSelector:
    """Every accepted document (the budget, if given, caps it in pool order)."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(np.arange(len(pool)), pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config)}


class RandomSelector:
    """A seeded uniform sample without replacement, to the exact budget."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ()

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(random_order(pool.random_key), pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), "seed": config.seed}


class DsirSelector:
    """DSIR resampling: Gumbel top-k (∝ importance weight) or plain top-k of the log weights."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("dsir",)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from distsel.scoring.dsir import gumbel_noise_from_keys

        options = config.select.dsir
        name = "dsir_log_weight_per_ngram" if options.length_normalize else "dsir_log_weight"
        weights = _column(pool, name)
        if options.sampling == "gumbel":
            weights = weights + gumbel_noise_from_keys(pool.random_key)
        chosen = fill_budget(
            descending(weights, pool.random_key), pool.tokens, config.select.budget
        )
        return chosen, {"budget": _budget(config), "column": name, **options.model_dump()}


class SimilaritySelector:
    """RDS+: highest cosine to the target; with several target sets, round-robin over them."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("betr",) if config.select.similarity.betr else ("similarity",)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from distsel.scoring.similarity import round_robin

        options = config.select.similarity
        if options.betr:
            columns = ["betr_score"]
        else:
            columns = sorted(c for c in pool.scores if c.startswith("similarity_task_"))
        per_task = np.stack([_column(pool, c) for c in columns])
        if len(columns) == 1:
            order = descending(per_task[0], pool.random_key)
        else:
            order = round_robin(per_task, len(pool))
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), "columns": columns, **options.model_dump()}


class ClassifierSelector:
    """The documents the target-vs-pool classifier finds most target-like."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("classifier",)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        order = descending(_column(pool, "classifier_score"), pool.random_key)
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), **config.select.classifier.model_dump()}


class TopkSelector:
    """The documents with the highest (or lowest) value of any score column."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.topk.column),)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.topk
        values = _column(pool, options.column)
        order = descending(values if options.descending else -values, pool.random_key)
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), **options.model_dump()}


class ThresholdSelector:
    """Documents whose score lies in [min, max]; a budget samples among them at random."""

    filters = True

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.threshold.column),)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.threshold
        values = _column(pool, options.column)
        low = float(np.nanmedian(values)) if options.min is None else options.min
        high = np.inf if options.max is None else options.max
        passing = np.flatnonzero((values >= low) & (values <= high))
        order = passing[random_order(pool.random_key[passing])]
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        section = {"budget": _budget(config), **options.model_dump(), "min_used": low}
        return chosen, {**section, "passing_docs": int(len(passing))}


class StratifiedSelector:
    """CCS coverage-centric sampling over equal-width score strata."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return (stage_for_column(config.select.stratified.column),)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = config.select.stratified
        values = _column(pool, options.column)
        chosen = ccs_stratified(
            values,
            pool.random_key,
            pool.tokens,
            config.select.budget,
            bins=options.bins,
            hard_fraction=options.hard_fraction,
            hard_is_high=options.hard_is_high,
        )
        return chosen, {"budget": _budget(config), **options.model_dump()}


class InfluenceSelector:
    """Top-k by influence on the target under the proxy LM (trained here unless proxy.path)."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("influence",)

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        column = "influence_normalized" if config.select.influence.normalize else "influence"
        order = descending(_column(pool, column), pool.random_key)
        chosen = fill_budget(order, pool.tokens, config.select.budget)
        return chosen, {"budget": _budget(config), **config.select.influence.model_dump()}


class QuadSelector:
    """Quad: a bandit over k-means clusters that computes a costly score (influence by default)
    only on a few draws per pull."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        if config.select.quad.within_cluster == "predicted":
            return ("embed", "cluster", "classifier")
        return ("embed", "cluster")

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from distsel.clustering import load_centroid_distances
        from distsel.select.influence_model import pool_features
        from distsel.select.pool import StagePool, gather_embeddings
        from distsel.select.quad import make_bandit

        options = config.select.quad
        stage, column = _quad_scorer(config, context)
        features = None
        if options.within_cluster == "predicted":
            embeddings = gather_embeddings(context.store, pool)
            features = pool_features(
                embeddings,
                pool.tokens,
                _target_cosine(config, embeddings),
                _column(pool, "classifier_score"),
            )
        clusters = pool.scores["cluster"].astype(np.int64)
        bandit = make_bandit(
            clusters,
            pool.random_key,
            pool.tokens,
            load_centroid_distances(context.store),
            options,
            config.select.budget,
            config.seed,
            features,
        )
        scorer = StagePool(stage, column)
        try:
            chosen = bandit.run(
                lambda groups: scorer.score(fetch_texts(context.store, pool, groups)), context.store
            )
        finally:
            scorer.close()
        section = {"budget": _budget(config), **options.model_dump(), "score_column": column}
        return chosen, {**section, **bandit.summary(clusters), stage.name: stage.summary}


def _target_cosine(config: Config, embeddings: np.ndarray) -> np.ndarray:
    """Each pool document's best cosine to the target examples (RDS+'s max), a covariate of
    Quad's influence model."""
    from distsel.corpus import read_texts
    from distsel.scoring.embed import EmbedStage, embed_texts_on_cluster
    from distsel.scoring.similarity import cosine_scores

    target = config.target
    texts = read_texts(target.paths, target.text_field, target.storage_options)
    resources = EmbedStage.from_config(config, EmbedStage.default_resources).resources
    vectors = embed_texts_on_cluster({"target": texts}, config.embed, resources)["target"]
    return cosine_scores(embeddings, vectors.astype(embeddings.dtype), "max")


def _quad_scorer(config: Config, context: StageContext) -> tuple[Any, str]:
    """The prepared stage behind Quad's rewards, and the column of its output they use."""
    from distsel.scoring import stage_class

    options = config.select.quad
    stage_type = stage_class(options.scorer)
    if tuple(stage_type.input_columns) != ("text",):
        raise DistselError(f"select.quad.scorer: stage '{options.scorer}' does not score text")
    column = options.score_column
    if column is None and options.scorer == "influence":
        column = "influence_normalized" if config.select.influence.normalize else "influence"
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


SELECTORS: dict[str, Selector] = {
    "all": AllSelector(),
    "random": RandomSelector(),
    "dsir": DsirSelector(),
    "similarity": SimilaritySelector(),
    "classifier": ClassifierSelector(),
    "topk": TopkSelector(),
    "threshold": ThresholdSelector(),
    "stratified": StratifiedSelector(),
    "influence": InfluenceSelector(),
    "quad": QuadSelector(),
    "mixture": MixtureSelector(),
}


def selector_for(config: Config) -> Selector:
    method = config.select.method
    if method not in SELECTORS:
        raise DistselError(f"select.method '{method}' is not available in this version")
    return SELECTORS[method]
