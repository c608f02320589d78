"""A target-vs-pool quality classifier: the recipe of GPT-3 (Brown et al., *Language Models are
Few-Shot Learners*, 2020) and DCLM (Li et al., *DataComp-LM*, 2024).

The target examples are the positives and a seeded uniform sample of the pool the negatives. A
logistic regression on hashed n-gram features x (see `ngram_features`), with each class weighted
by the inverse of its count, gives every document the decision value

    score(x) = w · x + b,   (w, b) = argmin  Σ_i c_i log(1 + exp(−y_i (w · x_i + b))) + ‖w‖² / (2C)

(y_i = ±1, c_i = n / (2 n_{y_i})): the log-odds that x is target-like. It is fitted once, in
`prepare`, and applied to every document by the stage's actors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from distsel.algorithms.similarity import sparse_scores
from distsel.core.config import Config, StrictModel
from distsel.core.errors import DistselError
from distsel.core.pool import Pool
from distsel.core.records import read_texts
from distsel.core.registry import register_selector, register_stage
from distsel.core.samplers import descending, fill_budget
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import Resources, Stage, StageContext
from distsel.methods.similarity import (
    LinearScorer,
    fit_betr_classifier,
    ngram_features,
    sample_texts,
)


class ClassifierOptions(StrictModel):
    """`stages.classifier`: target-vs-pool logistic regression on hashed n-grams: the target
    examples (at most `max_positives`) against a seeded pool sample of `negatives` documents."""

    negatives: int = Field(default=5_000, gt=0)
    max_positives: int = Field(default=10_000, gt=0)
    num_buckets: int = Field(default=1 << 18, gt=0)
    ngrams: int = Field(default=2, ge=1, le=3)
    c: float = Field(default=1.0, gt=0)


def fit_target_classifier(
    positives: list[str], negatives: list[str], options: ClassifierOptions, seed: int
) -> LinearScorer:
    """The logistic regression of the module docstring, fitted in this process."""
    if not positives or not negatives:
        raise DistselError("classifier: needs target examples and pool documents to fit on")
    features = ngram_features(positives + negatives, options.num_buckets, options.ngrams)
    labels = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    return fit_betr_classifier(features, labels, seed=seed, c=options.c, balanced=True)


def training_texts(config: Config, context: StageContext) -> tuple[list[str], list[str]]:
    """Positives: the first `max_positives` target texts; negatives: a seeded pool sample."""
    target, options = config.target, config.stage_options("classifier")
    positives = read_texts(target.paths, target.text_field, target.storage_options)
    negatives = sample_texts(
        context.store, context.parts, options.negatives, config.seed, context.left_out_of()
    )
    return positives[: options.max_positives], negatives


@register_stage
class ClassifierStage(Stage):
    """`classifier_score`: the target-vs-pool log-odds of every document."""

    name = "classifier"
    input_columns = ("text",)
    output_columns = ("classifier_score",)
    default_resources = Resources(num_cpus=1, batch_size=2048)
    fitted = ("model",)
    options_class = ClassifierOptions

    def fitted_state(self) -> dict[str, Any]:
        return self.model.arrays()

    def load_fitted(self, state: dict[str, Any]) -> None:
        self.model = LinearScorer(**state)

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.config = config
        self.options = config.stage_options(self.name)
        self.model: LinearScorer | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> ClassifierStage:
        if not config.target.paths:
            raise DistselError("the classifier stage needs target.paths (target examples)")
        return cls(resources, config)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": self.options.model_dump(),
            "target": self.config.target.model_dump(exclude={"storage_options"}),
            "seed": self.config.seed,
        }

    def prepare(self, context: StageContext) -> None:
        positives, negatives = training_texts(self.config, context)
        self.model = fit_target_classifier(positives, negatives, self.options, self.config.seed)
        self.summary = {"positive_docs": len(positives), "negative_docs": len(negatives)}

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        texts = batch.column("text").to_pylist()
        features = ngram_features(texts, self.options.num_buckets, self.options.ngrams)
        return {"classifier_score": sparse_scores(self.model, features)}


@register_selector("classifier", needs_target=True)
class ClassifierSelector:
    """The documents the target-vs-pool classifier finds most target-like.

    Under a token budget: the log-odds come from L2-normalised log counts, which do not grow
    with length, so documents are ranked by them alone and the order is walked, keeping each
    document that still fits."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("classifier",)

    def rankings(self, pool: Pool, config: Config) -> list[np.ndarray]:
        return [descending(score_column(pool, "classifier_score"), pool.random_key)]

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(self.rankings(pool, config)[0], pool.tokens, config.select.budget)
        options = config.stage_options("classifier").model_dump()
        return chosen, {"budget": budget_section(config), **options}
