"""Run a configured selection: ingest → score stages (Ray Data actor pools) → select → write.

Every step works per document part and leaves a done marker under `_state/` after its output is
in place, so a rerun skips finished parts and a killed run resumes with the same result.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distsel.algorithms.reweighting import loss_weights
from distsel.app import evaluate
from distsel.app.dedup import before_scoring, quarantine_near_duplicates
from distsel.app.ingest import (
    check_output_apart,
    check_same_input,
    ingest,
    list_inputs,
    quarantine_duplicate_ids,
)
from distsel.app.manifest import build_manifest, counts
from distsel.app.output import write_selection
from distsel.core import corpus, layout, records, registry
from distsel.core.config import Budget, Config, Phase
from distsel.core.errors import ConfigError
from distsel.core.executor import Executor, RayExecutor, installed
from distsel.core.pool import Pool, gather_pool
from distsel.core.runner import build_stages, run_stage
from distsel.core.selector import Selector, selection_pool, selector_for
from distsel.core.stage import Stage, StageContext
from distsel.core.storage import Store

log = logging.getLogger("distsel")
# The phases of a selection run; any other is the search phase of the selector of its name.
RUN_PHASES = ("all", "score", "select")


@dataclasses.dataclass
class Scored:
    """What the scoring phase leaves for selection: the shards' ingest results, the document
    parts, the stages (prepared) and their timings."""

    ingested: list[records.IngestResult]
    parts: list[str]
    stages: list[Stage]
    timings: dict[str, Any]
    dropped: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def run(
    config: Config,
    address: str | None = None,
    phase: Phase = "all",
    executor: Executor | None = None,
    on_output: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the selection described by `config`, or one phase of it; return its summary.

    all: ingest, score, select, evaluate → manifest.json. score: ingest and every stage the
    selector needs → scoring.json. select: selection from a finished scoring phase (an error
    names what is missing) → manifest.json. mixture, a search phase: scoring, then only the
    search of the selector of that name → its `search_output`, mixture/search.json (a later
    select with that method reuses the search; see distsel.core.selector.Selector).

    The work runs on `executor`, else the active one (`Executor.active`), else Ray: the cluster
    at `address` (or config.ray.address, or RAY_ADDRESS), or a local Ray started here.
    `on_output` is called once the inputs are found and before the output is first written.
    """
    executor = executor or installed() or RayExecutor(address or config.ray.address)
    with executor.active():
        return _run(config, phase, on_output)


def _run(config: Config, phase: Phase, on_output: Callable[[], None] | None) -> dict[str, Any]:
    started = time.perf_counter()
    if phase not in RUN_PHASES and registry.needs_target(phase) and not config.target.paths:
        raise ConfigError(f"target.paths: the {phase} search needs target examples")
    check_output_apart(config)
    shards = list_inputs(config)
    if on_output:
        on_output()
    store = Store(config.output.path, config.output.storage_options, config.output.retry_seconds)
    store.check_writable()
    check_same_input(store, config)

    scored = score(config, store, shards, require_done=phase == "select")
    if phase == "score":
        summary = {**counts(scored.ingested), "stages": scored.timings, "phase": phase}
        return _finish(store, layout.SCORING, summary, started)
    if phase not in RUN_PHASES:
        return _search(config, store, scored, phase, started)
    return _finish(store, layout.MANIFEST, select(config, store, scored), started)


def _search(
    config: Config, store: Store, scored: Scored, phase: str, started: float
) -> dict[str, Any]:
    """A search phase: the `search` of the selector named `phase` on the scored pool, written
    to its `search_output` (see distsel.core.selector.Selector)."""
    searcher = registry.selector(phase)
    context = StageContext(config, store, scored.parts, scored.dropped)
    section = searcher.search(config, context)
    return _finish(store, searcher.search_output, {**section, "phase": phase}, started)


def _finish(store: Store, name: str, summary: dict[str, Any], started: float) -> dict[str, Any]:
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)
    store.write_json(name, summary)
    return summary


def score(
    config: Config, store: Store, shards: list[corpus.Shard], require_done: bool = False
) -> Scored:
    """Ingest every shard and run every stage on every part, skipping finished work; with
    `require_done`, refuse to do any of it (a selection-only run needs a finished scoring)."""
    timings: dict[str, dict[str, Any]] = {}
    ingested = ingest(shards, config, store, timings, require_done)
    ingested, dropped = quarantine_duplicate_ids(config, store, shards, ingested, require_done)

    def deduplicated() -> tuple[list[records.IngestResult], dict[str, np.ndarray]]:
        return quarantine_near_duplicates(
            config, store, shards, ingested, dropped, timings, require_done
        )

    if before_scoring(config):
        ingested, dropped = deduplicated()
    parts = [part for result in ingested for part in result.parts]
    stages = build_stages(config)
    store.write_json(layout.STAGE_ORDER, {"stages": [stage.name for stage in stages]})
    versions: dict[str, str] = {}
    for stage in stages:
        context = StageContext(config, store, parts, dropped)
        run_stage(stage, context, timings, require_done, versions)
    if not before_scoring(config):
        ingested, dropped = deduplicated()
    return Scored(ingested, parts, stages, timings, dropped)


def select(config: Config, store: Store, scored: Scored) -> dict[str, Any]:
    """Select from the scored pool, write selected/ and evaluate; return the manifest."""
    parts, stages, timings = scored.parts, scored.stages, scored.timings
    selector = selector_for(config)
    began = time.perf_counter()
    names = [s.name for s in stages]
    pool, config = selection_pool(selector, store, parts, names, config, scored.dropped)
    over = budget_exceeds_pool(config.select.budget, pool)
    if over and not pool.complete and not getattr(selector, "filters", False):
        pool = gather_pool(store, parts, names, config, scored.dropped)  # the whole pool is chosen
    context = StageContext(config, store, parts, scored.dropped)
    chosen, section = choose(selector, pool, config, context, over)
    weights = training_weights(pool, chosen, config)
    write_selection(store, pool, chosen, names, config.output, weights)
    timings["select"] = {
        "rows": int(len(chosen)),
        "held_docs": len(pool),  # documents the selector was handed (distsel.core.candidates)
        "seconds": round(time.perf_counter() - began, 3),
    }

    began = time.perf_counter()
    evaluation = evaluate.evaluation(config, store, pool, chosen, stages)
    timings["evaluate"] = {
        "rows": int(len(chosen)),
        "seconds": round(time.perf_counter() - began, 3),
    }
    manifest = build_manifest(config, scored.ingested, pool, chosen, timings, section)
    manifest["budget_exceeds_pool"] = over
    manifest["evaluation"] = evaluation
    return manifest


def training_weights(pool: Pool, chosen: np.ndarray, config: Config) -> np.ndarray | None:
    """With `output.weights: loss`, each chosen document's weight from its proxy loss (the
    perplexity stage's `perplexity_loss`), normalised over the selection."""
    if config.output.weights is None:
        return None
    losses = pool.scores["perplexity_loss"][chosen]
    return loss_weights(losses, config.output.weight_temperature)


def budget_exceeds_pool(budget: Budget | None, pool: Pool) -> bool:
    """Whether the budget is larger than the whole pool, in documents or in tokens (a share of
    the pool, once resolved, only of an empty pool; not yet resolved, never)."""
    if budget is None or (budget.docs is None and budget.tokens is None):
        return False
    if budget.docs is not None:
        return budget.docs > pool.totals.docs
    return budget.tokens > pool.totals.tokens


def choose(
    selector: Selector, pool: Pool, config: Config, context: StageContext, over: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The selector's choice. With a budget larger than the pool (`over`), the whole pool
    instead, and one warning; a selector that `filters` still applies its filter."""
    if not over:
        return selector.select(pool, config, context)
    budget = config.select.budget
    assert budget is not None
    if budget.docs is not None:
        sizes = f"{budget.docs:,} documents", f"{pool.totals.docs:,} documents"
    else:
        sizes = f"{budget.tokens:,} tokens", f"~{pool.totals.tokens:,} tokens"
    filters = getattr(selector, "filters", False)
    taken = "every document that passes the filter" if filters else "the whole pool"
    log.warning("select: the budget (%s) is larger than the pool (%s); selecting %s", *sizes, taken)
    if filters:
        return selector.select(pool, config, context)
    return np.arange(len(pool), dtype=np.int64), {"budget": budget.model_dump(exclude_none=True)}
