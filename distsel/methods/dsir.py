"""DSIR (Xie et al. 2023) as a stage and a selector; the hashed n-gram features, importance
weights, resampling and KL reduction, with their formulas, are in distsel.algorithms.dsir.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from distsel.algorithms.dsir import (
    fit_log_diff,
    gumbel_noise_from_keys,
    hashed_ngrams,
    total_ngram_counts,
)
from distsel.core import layout
from distsel.core.config import Config, StrictModel
from distsel.core.executor import current
from distsel.core.pool import Pool
from distsel.core.records import read_texts
from distsel.core.registry import register_selector, register_stage
from distsel.core.samplers import descending, fill_budget
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import Resources, Stage, StageContext
from distsel.core.storage import Store


class NgramOptions(StrictModel):
    """Hashed n-gram features: `num_buckets` buckets of unigrams up to `ngrams`-grams."""

    num_buckets: int = Field(default=10_000, gt=0)
    ngrams: int = Field(default=2, ge=1, le=3)


class DsirStageOptions(NgramOptions):
    """`stages.dsir`: the hashed n-gram models of target and pool."""


class DsirOptions(StrictModel):
    """`select.dsir`: how the selector samples by the importance weights. By default the top-k of
    the weight per n-gram: the plain weight grows with length (a token budget fills with short
    off-target documents), and Gumbel noise drowns per-n-gram differences; chosen on the task
    suite (benchmarks/suite.py)."""

    length_normalize: bool = True
    sampling: Literal["gumbel", "topk"] = "topk"


# ---------------------------------------------------------------------------------------------
# Pipeline stage: fit on the target and the whole pool, then score every part


@register_stage
class DsirStage(Stage):
    """Log importance weights per document, plain and divided by the document's n-gram count.

    `prepare` fits p_target on the target examples and p_raw on the whole pool, the pool counts
    summed part by part on the cluster; the fitted log_diff travels with the stage to its actors.
    """

    name = "dsir"
    input_columns = ("text",)
    output_columns = ("dsir_log_weight", "dsir_log_weight_per_ngram")
    default_resources = Resources(num_cpus=1, batch_size=4096)

    fitted = ("target_counts", "pool_counts", "log_diff")
    options_class = DsirStageOptions

    def __init__(self, resources: Resources, config: Config) -> None:
        super().__init__(resources)
        self.options = config.stage_options(self.name)
        self.target = config.target
        self.log_diff: np.ndarray | None = None
        self.target_counts: np.ndarray | None = None
        self.pool_counts: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> DsirStage:
        return cls(resources, config)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_buckets": self.options.num_buckets,
            "ngrams": self.options.ngrams,
            "target": self.target.model_dump(exclude={"storage_options"}),
        }

    def prepare(self, context: StageContext) -> None:
        options = self.options
        self.target_counts = target_ngram_counts(
            context.config, options.num_buckets, options.ngrams
        )
        self.pool_counts = pool_ngram_counts(
            context.store,
            context.parts,
            options.num_buckets,
            options.ngrams,
            left_out=context.left_out_of(),
        )
        self.log_diff = fit_log_diff(self.target_counts, self.pool_counts)

    def evaluation_inputs(self) -> dict[str, Any]:
        """The pool's n-gram counts, for the KL evaluation's p_pool."""
        return {"pool_counts": self.pool_counts}

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        texts = batch.column("text").to_pylist()
        doc_index, bucket = hashed_ngrams(texts, self.options.num_buckets, self.options.ngrams)
        weights = np.bincount(doc_index, weights=self.log_diff[bucket], minlength=len(texts))
        ngram_counts = np.maximum(np.bincount(doc_index, minlength=len(texts)), 1)
        return {"dsir_log_weight": weights, "dsir_log_weight_per_ngram": weights / ngram_counts}


def target_ngram_counts(config: Config, num_buckets: int, ngrams: int) -> np.ndarray:
    """Summed hashed n-gram counts of all target examples."""
    target = config.target
    texts = read_texts(target.paths, target.text_field, target.storage_options)
    return total_ngram_counts(texts, num_buckets, ngrams)


def _part_ngram_counts(
    store: Store,
    folder: str,
    part: str,
    num_buckets: int,
    ngrams: int,
    rows: np.ndarray | None = None,
    left_out: np.ndarray | None = None,
) -> np.ndarray:
    texts = store.read_table(f"{folder}/{part}", columns=["text"]).column("text")
    if rows is None and left_out is not None:
        rows = np.setdiff1d(np.arange(len(texts)), left_out)
    texts = texts if rows is None else texts.take(rows)
    return total_ngram_counts(texts.to_pylist(), num_buckets, ngrams)


def pool_ngram_counts(
    store: Store,
    parts: list[str],
    num_buckets: int,
    ngrams: int,
    folder: str = layout.DOCS,
    rows: list[np.ndarray] | None = None,
    left_out: list[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Σ over every document of every part (or its `rows`, one array per part; or all but its
    `left_out` rows) of its hashed n-gram counts, one task per part.

    Only the B-bucket count vectors travel to the driver, never the texts or features.
    """
    total = np.zeros(num_buckets, dtype=np.int64)
    calls = [
        (
            store,
            folder,
            part,
            num_buckets,
            ngrams,
            None if rows is None else rows[i],
            None if left_out is None else left_out[i],
        )
        for i, part in enumerate(parts)
    ]
    for counts in current().as_completed(_part_ngram_counts, calls):
        total += counts
    return total


@register_selector("dsir", options=DsirOptions, needs_target=True)
class DsirSelector:
    """DSIR: the top-k of the log importance weights (by default per n-gram), or Gumbel top-k
    resampling (∝ importance weight, `sampling: gumbel`).

    Under a token budget: the weight per n-gram does not grow with length, so documents are
    ranked by it alone and the order is walked, keeping each document that still fits. The plain
    weight (`length_normalize: false`) sums over n-grams: off-target documents' weights are
    negative and fall with length, so short ones rank first."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("dsir",)

    def rankings(self, pool: Pool, config: Config) -> list[np.ndarray]:
        options = config.select.options("dsir")
        weights = score_column(pool, _weight_column(options))
        if options.sampling == "gumbel":
            weights = weights + gumbel_noise_from_keys(pool.random_key)
        return [descending(weights, pool.random_key)]

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        chosen = fill_budget(self.rankings(pool, config)[0], pool.tokens, config.select.budget)
        options = config.select.options("dsir")
        section = {"column": _weight_column(options), **options.model_dump()}
        return chosen, {"budget": budget_section(config), **section}


def _weight_column(options: DsirOptions) -> str:
    return "dsir_log_weight_per_ngram" if options.length_normalize else "dsir_log_weight"
