"""Run a configured selection: ingest → score stages (Ray Data actor pools) → select → write.

Every step works per document part and leaves a done marker under `_state/` after its output is
in place, so a rerun skips finished parts and a killed run resumes with the same result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from distsel import console, corpus, evaluate
from distsel.config import Config, Phase
from distsel.errors import ConfigError, DistselError, InputError
from distsel.scoring import stage_class
from distsel.select import Pool, gather_pool, selector_for
from distsel.stage import Resources, Stage, StageContext
from distsel.storage import Store

log = logging.getLogger("distsel")

SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")
LOCAL_RAY_SETTINGS = {"idle_worker_killing_time_threshold_ms": 60_000}


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); else start a local single-node Ray.
    Ray's own console output is off unless distsel.console is verbose (`distsel -v`)."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        options = console.ray_init_options()
        if address:
            ray.init(address=address, **options)
        else:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            # Idle workers are kept for a minute, not a second, so that the next stage's tasks
            # do not wait for new worker processes.
            ray.init(include_dashboard=False, _system_config=LOCAL_RAY_SETTINGS, **options)
    console.quiet_ray_data()


@dataclasses.dataclass
class Scored:
    """What the scoring phase leaves for selection: the shards' ingest results, the document
    parts, the stages (prepared) and their timings."""

    ingested: list[corpus.IngestResult]
    parts: list[str]
    stages: list[Stage]
    timings: dict[str, Any]


def run(config: Config, address: str | None = None, phase: Phase = "all") -> dict[str, Any]:
    """Run the selection described by `config`, or one phase of it; return its summary.

    all: ingest, score, select, evaluate → manifest.json. score: ingest and every stage the
    selector needs → scoring.json. select: selection from a finished scoring phase (an error
    names what is missing) → manifest.json. mixture: scoring, then only the mixture search →
    mixture/search.json (a later select with `select.method: mixture` reuses the search).
    """
    started = time.perf_counter()
    if phase == "mixture" and not config.target.paths:
        raise ConfigError("target.paths: the mixture search needs target examples")
    shards = corpus.list_shards(config.input)
    for shard in shards:
        corpus.check_readable(shard, config.input.storage_options)
    store = Store(config.output.path, config.output.storage_options, config.output.retry_seconds)
    store.check_writable()
    _check_same_input(store, config)
    connect_ray(address or config.ray.address)

    scored = score(config, store, shards, require_done=phase == "select")
    if phase == "score":
        summary = {**counts(scored.ingested), "stages": scored.timings, "phase": phase}
        return _finish(store, "scoring.json", summary, started)
    if phase == "mixture":
        from distsel.mixture import run_mixture_search

        pool = gather_pool(store, scored.parts, [s.name for s in scored.stages], config)
        _, section = run_mixture_search(pool, config, StageContext(config, store, scored.parts))
        return _finish(store, "mixture/search.json", {**section, "phase": phase}, started)
    return _finish(store, "manifest.json", select(config, store, scored), started)


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
    parts = [part for result in ingested for part in result.parts]
    stages = build_stages(config)
    for stage in stages:
        run_stage(stage, StageContext(config, store, parts), timings, require_done)
    return Scored(ingested, parts, stages, timings)


def select(config: Config, store: Store, scored: Scored) -> dict[str, Any]:
    """Select from the scored pool, write selected/ and evaluate; return the manifest."""
    parts, stages, timings = scored.parts, scored.stages, scored.timings
    selector = selector_for(config)
    began = time.perf_counter()
    pool = gather_pool(store, parts, [s.name for s in stages], config)
    chosen, section = selector.select(pool, config, StageContext(config, store, parts))
    selected_parts = write_selection(store, pool, chosen, [s.name for s in stages])
    timings["select"] = {"rows": int(len(chosen)), "seconds": round(time.perf_counter() - began, 3)}

    began = time.perf_counter()
    pool_counts = next((s.pool_counts for s in stages if s.name == "dsir"), None)
    evaluation = {
        "kl": evaluate.kl_section(config, store, parts, selected_parts, pool_counts),
        "labels": evaluate.label_shares(config, pool, chosen),
    }
    timings["evaluate"] = {
        "rows": int(len(chosen)),
        "seconds": round(time.perf_counter() - began, 3),
    }
    manifest = build_manifest(config, scored.ingested, pool, chosen, timings, section)
    manifest["evaluation"] = evaluation
    return manifest


def _not_scored(what: str, pending: list[str], total: int) -> DistselError:
    return DistselError(
        f"selection only: {what}: {len(pending)} of {total} not done yet (first: {pending[0]}); "
        "run the scoring phase first (`distsel run CONFIG --phase score` or jobs/scoring.py)"
    )


def build_stages(config: Config) -> list[Stage]:
    """The stages the configuration asks for, plus those its selector needs, in dependency order."""
    wanted = list(config.stages) + list(selector_for(config).required_stages(config))
    ordered: list[Stage] = []
    for name in _with_requirements(wanted):
        cls = stage_class(name)
        resources = cls.default_resources.with_overrides(config.stages.get(name))
        ordered.append(cls.from_config(config, resources))
    return ordered


def _with_requirements(names: list[str]) -> list[str]:
    """`names` with the stages they require, each after its requirements, without repeats."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in ordered:
            for required in stage_class(name).requires:
                visit(required)
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def _check_same_input(store: Store, config: Config) -> None:
    """Refuse to resume into an output that was made from a different input configuration."""
    current = _input_fingerprint(config)
    if store.exists("_state/input.json"):
        previous = store.read_json("_state/input.json")
        if previous != current:
            changed = sorted(
                k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k)
            )
            raise DistselError(
                f"{store.url} holds a run made with another input configuration "
                f"(changed: {', '.join('input.' + k for k in changed)}); "
                "choose another output.path or remove the old output"
            )
    else:
        store.write_json("_state/input.json", current)


def _input_fingerprint(config: Config) -> dict[str, Any]:
    return json.loads(config.input.model_dump_json(exclude={"storage_options", "strict"}))


def _over_items(
    items: list[str],
    worker: Any,
    label: str,
    *,
    resources: Any = None,
    worker_kwargs: dict[str, Any] | None = None,
) -> Iterable[dict[str, Any]]:
    """Run `worker` on each item (one item per call) on Ray Data; yield result rows as they come.

    A class runs as an actor pool sized by `resources`; a function runs as tasks.
    """
    dataset = ray.data.from_items(
        [{"item": item} for item in items], override_num_blocks=len(items)
    )
    options: dict[str, Any] = {"batch_size": 1}
    if isinstance(worker, type):
        start = max(1, min(resources.pool_size, len(items), _actors_that_fit(resources)))
        options.update(
            # One part at a time per actor: parts are large, and the first actor up must not
            # queue the parts that the actors still starting (on other nodes) would take.
            compute=ray.data.ActorPoolStrategy(
                min_size=start, max_size=resources.pool_size, max_tasks_in_flight_per_actor=1
            ),
            num_cpus=resources.num_cpus,
            fn_constructor_kwargs=worker_kwargs or {},
        )
        if resources.num_gpus:
            options["num_gpus"] = resources.num_gpus
    else:
        options.update(num_cpus=1, fn_kwargs=worker_kwargs or {})
    progress = _Progress(label, len(items), "parts" if isinstance(worker, type) else "shards")
    for row in dataset.map_batches(worker, **options).iter_rows():
        progress.advance()
        yield row


def _actors_that_fit(resources: Resources) -> int:
    """How many actors of these resources the cluster holds now: the pool starts with as many
    (up to its size), so the work spreads over the nodes from the start; an autoscaling cluster
    grows the pool to its size as nodes join."""
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // resources.num_cpus)] if resources.num_cpus else []
    if resources.num_gpus:
        fits.append(int(total.get("GPU", 0) // resources.num_gpus))
    return min(fits, default=resources.pool_size)


class _Progress:
    """distsel's progress lines for one step over `total` items: count, rate and ETA at most
    every `every` seconds, then one line with the count, rate and time taken."""

    def __init__(self, label: str, total: int, unit: str, every: float = 5.0) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done = 0
        self.started = self.logged = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        count = f"{self.label}: {self.done}/{self.total} {self.unit}"
        rate = f"{_figure(self.done / elapsed)} {self.unit}/s"
        if self.done >= self.total:
            log.info("%s done in %s (%s)", count, _duration(elapsed), rate)
        elif now - self.logged >= self.every:
            eta = (self.total - self.done) * elapsed / self.done
            log.info("%s, %s, ETA %s", count, rate, _duration(eta))
            self.logged = now


def _figure(value: float) -> str:
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{_figure(seconds)} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ingest_item(batch: dict[str, np.ndarray], config_json: str, store: Store) -> dict[str, list]:
    config = Config.model_validate_json(config_json)
    shard = corpus.Shard(**json.loads(batch["item"][0]))
    error = ""
    try:
        result = corpus.ingest_shard(shard, config.input, store)
        store.write_json(f"_state/ingest/{shard.safe_key}.json", dataclasses.asdict(result))
    except InputError as exc:
        error = str(exc)
    return {"shard": [shard.key], "error": [error]}


def ingest(
    shards: list[corpus.Shard],
    config: Config,
    store: Store,
    timings: dict[str, Any],
    require_done: bool = False,
) -> list[corpus.IngestResult]:
    """Validate and split every shard not yet done; return every shard's result, in shard order."""
    began = time.perf_counter()
    pending = [s for s in shards if not store.exists(f"_state/ingest/{s.safe_key}.json")]
    if pending and require_done:
        raise _not_scored("ingest", [s.key for s in pending], len(shards))
    if pending:
        log.info("ingest: %d of %d shards to read", len(pending), len(shards))
        items = [json.dumps(dataclasses.asdict(shard)) for shard in pending]
        kwargs = {"config_json": config.model_dump_json(), "store": store}
        for row in _over_items(items, _ingest_item, "ingest", worker_kwargs=kwargs):
            if row["error"]:
                raise InputError(row["error"])
    results = [
        corpus.IngestResult(**store.read_json(f"_state/ingest/{s.safe_key}.json")) for s in shards
    ]
    timings["ingest"] = {
        "rows": sum(r.docs_in for r in results),
        "seconds": round(time.perf_counter() - began, 3),
        "resumed_shards": len(shards) - len(pending),
    }
    return results


class _StageWorker:
    """One actor of a stage's pool: sets the stage up once, then scores whole parts."""

    def __init__(self, stage: Stage, store: Store) -> None:
        self.stage, self.store = stage, store
        stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        part = str(batch["item"][0])
        began = time.perf_counter()
        try:
            rows = score_part(self.stage, self.store, part)
        except DistselError as exc:  # to the driver as one line, not a task traceback
            return {"part": [part], "rows": [0], "error": [str(exc)]}
        seconds = time.perf_counter() - began
        node = ray.get_runtime_context().get_node_id()
        marker = {"rows": rows, "seconds": seconds, "node": node}
        self.store.write_json(_stage_marker(self.stage, part), marker)
        return {"part": [part], "rows": [rows], "error": [""]}


def _stage_marker(stage: Stage, part: str) -> str:
    return f"_state/{stage.name}/{part}.json"


def score_part(stage: Stage, store: Store, part: str) -> int:
    """Score one document part in batches; write `scores/<stage>/<part>` (id + outputs)."""
    docs = store.read_table(f"docs/{part}", columns=sorted({"id", *stage.input_columns}))
    for required in stage.requires:
        scores = store.read_table(f"scores/{required}/{part}")
        for name in scores.column_names:
            if name != "id":
                docs = docs.append_column(name, scores.column(name))
    size = stage.resources.batch_size
    chunks: dict[str, list[pa.Array]] = {}
    for offset in range(0, docs.num_rows, size):
        for name, values in stage(docs.slice(offset, size)).items():
            chunks.setdefault(name, []).append(
                pa.array(values) if isinstance(values, np.ndarray) else values
            )
    columns = {"id": docs.column("id")}
    columns.update({name: pa.chunked_array(arrays) for name, arrays in chunks.items()})
    store.write_table(f"scores/{stage.name}/{part}", pa.table(columns))
    return docs.num_rows


def run_stage(
    stage: Stage, context: StageContext, timings: dict[str, Any], require_done: bool = False
) -> None:
    """Prepare `stage`, then score every part it has not done; a changed fingerprint redoes all.
    With `require_done`, an unscored part (or changed settings) is an error instead."""
    began = time.perf_counter()
    store, parts = context.store, context.parts
    if require_done:
        _require_scored(stage, store, parts)
    stage.prepare(context)
    prepared = time.perf_counter() - began
    fingerprint_path = f"_state/{stage.name}/_fingerprint.json"
    fingerprint = stage.fingerprint()
    if store.exists(fingerprint_path) and store.read_json(fingerprint_path) != fingerprint:
        if require_done:
            raise DistselError(
                f"selection only: the {stage.name} stage's settings changed since it scored "
                "the pool; run the scoring phase again first"
            )
        log.info("%s: settings changed, scoring every part again", stage.name)
        for part in parts:
            store.remove(_stage_marker(stage, part))
    store.write_json(fingerprint_path, fingerprint)
    pending = [part for part in parts if not store.exists(_stage_marker(stage, part))]
    if pending:
        log.info("%s: %d of %d parts to score", stage.name, len(pending), len(parts))
        worker_kwargs = {"stage": stage, "store": store}
        for row in _over_items(
            pending,
            _StageWorker,
            stage.name,
            resources=stage.resources,
            worker_kwargs=worker_kwargs,
        ):
            if row["error"]:
                raise DistselError(f"{stage.name}: {row['error']}")
    markers = [store.read_json(_stage_marker(stage, part)) for part in parts]
    timings[stage.name] = {
        "rows": sum(marker["rows"] for marker in markers),
        "parts_per_node": dict(Counter(marker.get("node", "?") for marker in markers)),
        "seconds": round(time.perf_counter() - began, 3),
        "resumed_parts": len(parts) - len(pending),
        "prepare_seconds": round(prepared, 3),
        **({"summary": stage.summary} if stage.summary else {}),
    }


def _require_scored(stage: Stage, store: Store, parts: list[str]) -> None:
    pending = [part for part in parts if not store.exists(_stage_marker(stage, part))]
    if pending:
        raise _not_scored(f"the {stage.name} stage's parts", pending, len(parts))


@ray.remote(num_cpus=1)
def _write_selected_part(store: Store, part: str, rows: np.ndarray, stages: list[str]) -> int:
    table = store.read_table(f"docs/{part}").take(rows)
    for stage in stages:
        scores = store.read_table(f"scores/{stage}/{part}").take(rows)
        for name in scores.column_names:
            if name != "id":
                table = table.append_column(name, scores.column(name))
    store.write_table(f"selected/{part}", table)
    return table.num_rows


def write_selection(store: Store, pool: Pool, chosen: np.ndarray, stages: list[str]) -> list[str]:
    """Write the chosen rows of each part to `selected/<part>`; remove stale selected parts."""
    part_of = pool.part_index[chosen]
    chosen = chosen[np.lexsort((chosen, part_of))]
    bounds = np.searchsorted(np.sort(part_of), np.arange(len(pool.parts) + 1))
    futures, written = [], set()
    for index, part in enumerate(pool.parts):
        rows = pool.row_index[chosen[bounds[index] : bounds[index + 1]]]
        if len(rows):
            futures.append(_write_selected_part.remote(store, part, rows, stages))
            written.add(part)
    try:
        ray.get(futures)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, DistselError):
            raise exc.cause from None
        raise
    for name in store.list("selected", ".parquet"):
        if name not in written:
            store.remove(f"selected/{name}")
    return sorted(written)


def build_manifest(
    config: Config,
    ingested: list[corpus.IngestResult],
    pool: Pool,
    chosen: np.ndarray,
    timings: dict[str, Any],
    section: dict[str, Any],
) -> dict[str, Any]:
    manifest = {
        **counts(ingested),
        "selected_docs": int(len(chosen)),
        "pool_tokens_approx": int(pool.tokens.sum()),
        "selected_tokens_approx": int(pool.tokens[chosen].sum()),
        "by_group": pool.counts(config.input.group_field, chosen),
        "config": redact(config.model_dump(mode="json")),
        "seed": config.seed,
        "versions": versions(),
        "stages": timings,
    }
    manifest[config.select.method] = section
    return manifest


def counts(ingested: list[corpus.IngestResult]) -> dict[str, Any]:
    """Documents in, accepted and rejected (by reason), in all and per shard."""
    reasons: dict[str, int] = {}
    for result in ingested:
        for reason, count in result.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    found = {
        "input_docs": sum(r.docs_in for r in ingested),
        "accepted_docs": sum(r.accepted for r in ingested),
        "rejected_docs": sum(r.rejected for r in ingested),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": [
            {"shard": r.shard, "docs_in": r.docs_in, "accepted": r.accepted, "rejected": r.rejected}
            for r in ingested
        ],
    }
    if found["input_docs"] != found["accepted_docs"] + found["rejected_docs"]:
        raise AssertionError("documents in != accepted + rejected")
    return found


def redact(value: Any, inside_storage_options: bool = False) -> Any:
    """Hide credential-like values (keys naming a secret, key or token) in storage options."""
    if isinstance(value, dict):
        return {key: _redact_item(key, item, inside_storage_options) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, inside_storage_options) for item in value]
    return value


def _redact_item(key: str, item: Any, inside_storage_options: bool) -> Any:
    if inside_storage_options and item and any(word in key.lower() for word in SECRET_WORDS):
        return "***"
    return redact(item, inside_storage_options or key == "storage_options")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("distsel", "ray", "pyarrow", "torch", "transformers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
