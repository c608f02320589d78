"""How good is a selection: KL reduction towards the target, group and label shares.

KL reduction is DSIR's data metric (Xie et al. 2023): KL(target ‖ pool) − KL(target ‖ selection)
over hashed n-gram distributions; positive means the selection looks more like the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distsel.config import Config
from distsel.scoring.dsir import kl_divergence, pool_ngram_counts, target_ngram_counts
from distsel.select.pool import Pool
from distsel.storage import Store


def kl_section(
    config: Config,
    store: Store,
    parts: list[str],
    selected_parts: list[str],
    pool_counts: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """KL(target‖pool), KL(target‖selection) and their difference, when targets are given."""
    if not config.target.paths:
        return None
    options = config.stage_options("dsir")
    buckets, ngrams = options.num_buckets, options.ngrams
    target = target_ngram_counts(config, buckets, ngrams)
    if pool_counts is None:
        pool_counts = pool_ngram_counts(store, parts, buckets, ngrams)
    selection = pool_ngram_counts(store, selected_parts, buckets, ngrams, folder="selected")
    to_pool, to_selection = kl_divergence(target, pool_counts), kl_divergence(target, selection)
    return {
        "kl_target_pool": round(to_pool, 6),
        "kl_target_selection": round(to_selection, 6),
        "kl_reduction": round(to_pool - to_selection, 6),
        "buckets": buckets,
        "ngrams": ngrams,
    }


def label_shares(config: Config, pool: Pool, chosen: np.ndarray) -> dict[str, Any] | None:
    """Share of the pool and of the selection carrying each value of `input.label_field`."""
    counts = pool.counts(config.input.label_field, chosen)
    if counts is None:
        return None
    pool_total, chosen_total = max(len(pool), 1), max(len(chosen), 1)
    return {
        "field": counts["field"],
        "pool": {k: round(v / pool_total, 6) for k, v in counts["pool"].items()},
        "selected": {k: round(v / chosen_total, 6) for k, v in counts["selected"].items()},
    }
