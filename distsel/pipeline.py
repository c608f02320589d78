"""Run a configured selection: ingest → score stages (Ray Data actor pools) → select → write.

Every step works per document part and leaves a done marker under `_state/` after its output is
in place, so a rerun skips finished parts and a killed run resumes with the same result.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from distsel import corpus, duplicates, errors, evaluate, layout
from distsel.config import Budget, Config, OutputConfig, Phase
from distsel.console import duration, figure
from distsel.errors import ConfigError, DistselError, InputError
from distsel.executor import Executor, RayExecutor, current, installed, node_id, use_threads
from distsel.output import remove_stale, selected_table, write_selected
from distsel.registry import stage_class
from distsel.selection import Pool, Selector, gather_pool, selector_for, with_resolved_budget
from distsel.stage import Stage, StageContext, digest, fit_key, prepare_stage
from distsel.storage import Store, is_remote, reads_inside, retrying

log = logging.getLogger("distsel")
T = TypeVar("T")

SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")


@dataclasses.dataclass
class Scored:
    """What the scoring phase leaves for selection: the shards' ingest results, the document
    parts, the stages (prepared) and their timings."""

    ingested: list[corpus.IngestResult]
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
    names what is missing) → manifest.json. mixture: scoring, then only the mixture search →
    mixture/search.json (a later select with `select.method: mixture` reuses the search).

    The work runs on `executor`, else the active one (`Executor.active`), else Ray: the cluster
    at `address` (or config.ray.address, or RAY_ADDRESS), or a local Ray started here.
    `on_output` is called once the inputs are found and before the output is first written.
    """
    executor = executor or installed() or RayExecutor(address or config.ray.address)
    with executor.active():
        return _run(config, phase, on_output)


def _run(config: Config, phase: Phase, on_output: Callable[[], None] | None) -> dict[str, Any]:
    started = time.perf_counter()
    if phase == "mixture" and not config.target.paths:
        raise ConfigError("target.paths: the mixture search needs target examples")
    check_output_apart(config)
    shards = list_inputs(config)
    if on_output:
        on_output()
    store = Store(config.output.path, config.output.storage_options, config.output.retry_seconds)
    store.check_writable()
    _check_same_input(store, config)

    scored = score(config, store, shards, require_done=phase == "select")
    if phase == "score":
        summary = {**counts(scored.ingested), "stages": scored.timings, "phase": phase}
        return _finish(store, layout.SCORING, summary, started)
    if phase == "mixture":
        from distsel.selection.mixture import run_mixture_search

        stages = [s.name for s in scored.stages]
        pool = gather_pool(store, scored.parts, stages, config, scored.dropped)
        _, section = run_mixture_search(pool, config, StageContext(config, store, scored.parts))
        return _finish(store, layout.MIXTURE_SEARCH, {**section, "phase": phase}, started)
    return _finish(store, layout.MANIFEST, select(config, store, scored), started)


def check_output_apart(config: Config) -> None:
    """Refuse an output inside (or equal to) an input location: a rerun would read the
    output's own files back as input. Checked before anything is read or written."""
    output = config.output.path
    for kind, paths in (("input", config.input.paths), ("target", config.target.paths)):
        for given in paths:
            if reads_inside(given, output):
                raise ConfigError(
                    f"output {output} lies inside {kind} path {given}; a rerun would read the "
                    "output back as input: choose an output location outside it"
                )


def list_inputs(config: Config) -> list[corpus.Shard]:
    """The input shards with their versions, each opened once so a bad file fails early."""
    options, seconds = config.input.storage_options, config.output.retry_seconds
    shards = _reading(config.input.paths, lambda: corpus.list_shards(config.input), seconds)
    versioned = []
    for shard in shards:
        _reading([shard.url], functools.partial(corpus.check_readable, shard, options), seconds)
        version = _reading([shard.url], lambda s=shard: corpus.shard_version(s, options), seconds)
        versioned.append(dataclasses.replace(shard, version=version))
    return versioned


def _reading(urls: list[str], action: Callable[[], T], retry_seconds: float) -> T:
    """`action()`, which reads `urls`; while those on an object store cannot be reached, it is
    tried again for `retry_seconds` (output.retry_seconds, as for the output)."""
    remote = [url for url in urls if is_remote(url)]
    return retrying(", ".join(remote), action, retry_seconds) if remote else action()


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
    parts = [part for result in ingested for part in result.parts]
    stages = build_stages(config)
    store.write_json(layout.STAGE_ORDER, {"stages": [stage.name for stage in stages]})
    versions: dict[str, str] = {}
    for stage in stages:
        run_stage(stage, StageContext(config, store, parts), timings, require_done, versions)
    return Scored(ingested, parts, stages, timings, dropped)


def select(config: Config, store: Store, scored: Scored) -> dict[str, Any]:
    """Select from the scored pool, write selected/ and evaluate; return the manifest."""
    parts, stages, timings = scored.parts, scored.stages, scored.timings
    selector = selector_for(config)
    began = time.perf_counter()
    pool = gather_pool(store, parts, [s.name for s in stages], config, scored.dropped)
    config = with_resolved_budget(config, pool)  # a share of the pool → documents or tokens
    over = budget_exceeds_pool(config.select.budget, pool)
    chosen, section = choose(selector, pool, config, StageContext(config, store, parts), over)
    write_selection(store, pool, chosen, [s.name for s in stages], config.output)
    timings["select"] = {"rows": int(len(chosen)), "seconds": round(time.perf_counter() - began, 3)}

    began = time.perf_counter()
    pool_counts = next((s.pool_counts for s in stages if s.name == "dsir"), None)
    evaluation = {
        "kl": evaluate.kl_section(config, store, pool, chosen, pool_counts),
        "ngram_lm": evaluate.ngram_lm_section(config, store, pool, chosen),
        "labels": evaluate.label_shares(config, pool, chosen),
    }
    timings["evaluate"] = {
        "rows": int(len(chosen)),
        "seconds": round(time.perf_counter() - began, 3),
    }
    manifest = build_manifest(config, scored.ingested, pool, chosen, timings, section)
    manifest["budget_exceeds_pool"] = over
    manifest["evaluation"] = evaluation
    return manifest


def budget_exceeds_pool(budget: Budget | None, pool: Pool) -> bool:
    """Whether the budget is larger than the whole pool, in documents or in tokens (a share of
    the pool, once resolved, only of an empty pool; not yet resolved, never)."""
    if budget is None or (budget.docs is None and budget.tokens is None):
        return False
    if budget.docs is not None:
        return budget.docs > len(pool)
    return budget.tokens > int(pool.tokens.sum())


def choose(
    selector: Selector, pool: Pool, config: Config, context: StageContext, over: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The selector's choice. With a budget larger than the pool (`over`), the whole pool
    instead, and one warning; a selector that `filters` (threshold) still applies its filter."""
    if not over:
        return selector.select(pool, config, context)
    budget = config.select.budget
    assert budget is not None
    if budget.docs is not None:
        sizes = f"{budget.docs:,} documents", f"{len(pool):,} documents"
    else:
        sizes = f"{budget.tokens:,} tokens", f"~{int(pool.tokens.sum()):,} tokens"
    filters = getattr(selector, "filters", False)
    taken = "every document that passes the filter" if filters else "the whole pool"
    log.warning("select: the budget (%s) is larger than the pool (%s); selecting %s", *sizes, taken)
    if filters:
        return selector.select(pool, config, context)
    return np.arange(len(pool), dtype=np.int64), {"budget": budget.model_dump(exclude_none=True)}


def _not_scored(what: str, pending: list[str], total: int) -> DistselError:
    return DistselError(
        f"selection only: {what}: {len(pending)} of {total} not done yet (first: {pending[0]}); "
        "run the scoring phase first (`distsel run CONFIG --phase score` or jobs/scoring.py)"
    )


def stage_names(config: Config) -> list[str]:
    """The stages the configuration asks for, plus those its selector needs, in dependency
    order."""
    wanted = config.listed_stages() + list(selector_for(config).required_stages(config))
    return _with_requirements(wanted)


def build_stages(config: Config) -> list[Stage]:
    """The stages of `stage_names`, built."""
    ordered: list[Stage] = []
    for name in stage_names(config):
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
    if store.exists(layout.INPUT):
        previous = store.read_json(layout.INPUT)
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
        store.write_json(layout.INPUT, current)


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
    """The current executor's `over_items`, with progress lines."""
    progress = _Progress(label, len(items), "parts" if isinstance(worker, type) else "shards")
    for row in current().over_items(
        items, worker, resources=resources, worker_kwargs=worker_kwargs
    ):
        progress.advance()
        yield row


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
        rate = f"{figure(self.done / elapsed)} {self.unit}/s"
        if self.done >= self.total:
            log.info("%s done in %s (%s)", count, duration(elapsed), rate)
        elif now - self.logged >= self.every:
            eta = (self.total - self.done) * elapsed / self.done
            log.info("%s, %s, ETA %s", count, rate, duration(eta))
            self.logged = now


def _ingest_item(batch: dict[str, np.ndarray], config_json: str, store: Store) -> dict[str, list]:
    config = Config.model_validate_json(config_json)
    shard = corpus.Shard(**json.loads(batch["item"][0]))
    error = ""
    try:
        result = _ingest_retrying(shard, config, store)
        store.write_json(_ingest_marker(shard), dataclasses.asdict(result))
    except InputError as exc:
        error = str(exc)
    return {"shard": [shard.key], "error": [error]}


def _ingest_retrying(shard: corpus.Shard, config: Config, store: Store) -> corpus.IngestResult:
    """Ingest one shard; while its object store cannot be reached, the shard is read again
    from the start (its parts are rewritten under the same names)."""
    action = functools.partial(corpus.ingest_shard, shard, config.input, store)
    return _reading([shard.url], action, config.output.retry_seconds)


def ingest(
    shards: list[corpus.Shard],
    config: Config,
    store: Store,
    timings: dict[str, Any],
    require_done: bool = False,
) -> list[corpus.IngestResult]:
    """Validate and split every shard not yet done; return every shard's result, in shard order."""
    began = time.perf_counter()
    pending = _shards_to_read(shards, store)
    if pending and require_done:
        raise _not_scored("ingest", [s.key for s in pending], len(shards))
    if pending:
        log.info("ingest: %d of %d shards to read", len(pending), len(shards))
        items = [json.dumps(dataclasses.asdict(shard)) for shard in pending]
        sized = config.input.model_copy(update={"rows_per_part": part_size(config, store, shards)})
        config_json = config.model_copy(update={"input": sized}).model_dump_json()
        kwargs = {"config_json": config_json, "store": store}
        for row in _over_items(items, _ingest_item, "ingest", worker_kwargs=kwargs):
            if row["error"]:
                raise InputError(row["error"])
    results = [corpus.IngestResult(**store.read_json(_ingest_marker(s))) for s in shards]
    timings["ingest"] = {
        "rows": sum(r.docs_in for r in results),
        "parts": sum(len(r.parts) for r in results),
        "seconds": round(time.perf_counter() - began, 3),
        "resumed_shards": len(shards) - len(pending),
    }
    return results


def _ingest_marker(shard: corpus.Shard) -> str:
    return layout.ingest_marker(shard.safe_key)


def _shards_to_read(shards: list[corpus.Shard], store: Store) -> list[corpus.Shard]:
    """The shards not ingested yet, changed since (another version: their old parts are
    removed), or whose parts are missing or damaged (not of the size written)."""
    sizes = store.sizes(layout.DOCS)
    pending = []
    for shard in shards:
        if not store.exists(_ingest_marker(shard)):
            pending.append(shard)
            continue
        done = corpus.IngestResult(**store.read_json(_ingest_marker(shard)))
        if not done.version:  # written before versions were recorded: taken as it is
            continue
        if done.version != shard.version:
            log.warning(
                "ingest: %s changed since it was read; reading it again (the stages score "
                "its documents again)",
                shard.url,
            )
            for part in done.parts:
                store.remove(layout.docs(part))
            pending.append(shard)
        elif [sizes.get(part) for part in done.parts] != done.part_bytes:
            damaged = [
                p for p, b in zip(done.parts, done.part_bytes, strict=False) if sizes.get(p) != b
            ]
            log.warning(
                "ingest: %s is missing or damaged; reading %s again",
                layout.docs(damaged[0]),
                shard.url,
            )
            pending.append(shard)
    return pending


def part_size(config: Config, store: Store, shards: list[corpus.Shard]) -> int:
    """`input.rows_per_part`, else sized to the cluster's CPUs when the first run ingests
    (corpus.auto_rows_per_part) and kept in _state/part_size.json, so a resumed run cuts the
    shards it has left the same way."""
    if config.input.rows_per_part:
        return config.input.rows_per_part
    if store.exists(layout.PART_SIZE):
        return int(store.read_json(layout.PART_SIZE)["rows_per_part"])
    cpus = current().totals().get("CPU", 1.0)
    rows = corpus.auto_rows_per_part(shards, config.input.storage_options, cpus)
    log.info("ingest: %d rows per part, for %g CPUs", rows, cpus)
    store.write_json(layout.PART_SIZE, {"rows_per_part": rows, "cluster_cpus": cpus})
    return rows


def quarantine_duplicate_ids(
    config: Config,
    store: Store,
    shards: list[corpus.Shard],
    ingested: list[corpus.IngestResult],
    require_done: bool = False,
) -> tuple[list[corpus.IngestResult], dict[str, np.ndarray]]:
    """With `input.id_field` set, every later copy of an id (in input order) is quarantined as
    `duplicate_id`: moved from accepted to rejected and listed in rejected/duplicate_id.parquet.
    The check runs once per part list (kept in _state/duplicates-<digest>.parquet). Returns the
    results with the moved counts and the rows that each part drops from the pool."""
    if config.input.id_field is None:
        return ingested, {}
    parts = [part for result in ingested for part in result.parts]
    # the check's rows name parts by rank: a check of another part list does not apply
    found_path = layout.duplicates(digest(parts))
    if not store.exists(found_path):
        if require_done:
            raise _not_scored("the duplicate-id check", [found_path], 1)
        found = _find_duplicate_ids(store, parts, sum(r.accepted for r in ingested))
        shard_of = {part: result.shard for result in ingested for part in result.parts}
        if found.num_rows and config.input.strict:
            first = found.slice(0, 1).to_pylist()[0]
            raise InputError(
                f"{shard_of[parts[first['rank']]]}: id '{first['id']}' appears again "
                f"(first in {shard_of[parts[first['first_rank']]]}); input.strict is set"
            )
        urls = {shard.key: shard.url for shard in shards}
        if found.num_rows:
            rejections = _rejections(found, parts, shard_of, urls)
            store.write_table(layout.REJECTED_DUPLICATE_IDS, rejections)
        else:
            store.remove(layout.REJECTED_DUPLICATE_IDS)
        for name in store.list(layout.STATE, layout.PART_SUFFIX):
            if layout.is_duplicates(name):
                store.remove(layout.state(name))
        store.write_table(found_path, found)
    found = store.read_table(found_path)
    ranks, rows = found.column("rank").to_numpy(), found.column("row").to_numpy()
    dropped = {parts[rank]: np.sort(rows[ranks == rank]) for rank in np.unique(ranks)}
    return [_moved_to_rejected(result, dropped) for result in ingested], dropped


def _find_duplicate_ids(store: Store, parts: list[str], total_ids: int) -> pa.Table:
    groups = duplicates.group_count(total_ids)
    log.info("duplicate ids: checking %d parts in %d groups", len(parts), groups)
    executor = current()
    calls = [(store, part, rank, groups) for rank, part in enumerate(parts)]
    executor.map(duplicates.write_part_ids, calls)
    found = executor.map(duplicates.find_duplicates, [(store, parts, g) for g in range(groups)])
    return pa.concat_tables(found).sort_by([("rank", "ascending"), ("row", "ascending")])


def _rejections(
    found: pa.Table, parts: list[str], shard_of: dict[str, str], urls: dict[str, str]
) -> pa.Table:
    rows = found.to_pylist()
    shards = [shard_of[parts[row["rank"]]] for row in rows]
    return pa.table(
        {
            "shard": shards,
            "path": [urls[shard] for shard in shards],
            "line": pa.nulls(len(rows), pa.int64()),
            "row": pa.nulls(len(rows), pa.int64()),
            "reason": ["duplicate_id"] * len(rows),
            "detail": [
                f"id '{row['id']}' first in {shard_of[parts[row['first_rank']]]}; this copy: "
                f"{layout.docs(parts[row['rank']])} row {row['row']}"
                for row in rows
            ],
            "raw": [row["id"].encode() for row in rows],
        },
        schema=corpus.REJECTED_SCHEMA,
    )


def _moved_to_rejected(
    result: corpus.IngestResult, dropped: dict[str, np.ndarray]
) -> corpus.IngestResult:
    count = sum(len(dropped.get(part, ())) for part in result.parts)
    if not count:
        return result
    reasons = {**result.reasons, "duplicate_id": result.reasons.get("duplicate_id", 0) + count}
    return dataclasses.replace(
        result,
        accepted=result.accepted - count,
        rejected=result.rejected + count,
        reasons=dict(sorted(reasons.items())),
    )


class _StageWorker:
    """One actor of a stage's pool: sets the stage up once, then scores whole parts."""

    def __init__(self, stage: Stage, store: Store, scores_version: str) -> None:
        self.stage, self.store, self.scores_version = stage, store, scores_version
        use_threads(stage.resources.num_cpus)
        stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        part = str(batch["item"][0])
        began = time.perf_counter()
        try:
            rows, size = score_part(self.stage, self.store, part)
        except DistselError as exc:  # to the driver as one line, not a task traceback
            return {"part": [part], "rows": [0], "error": [str(exc)]}
        marker = {
            "rows": rows,
            "bytes": size,
            "version": self.scores_version,
            "seconds": time.perf_counter() - began,
            "node": node_id(),
        }
        self.store.write_json(_stage_marker(self.stage, part), marker)
        return {"part": [part], "rows": [rows], "error": [""]}


def _stage_marker(stage: Stage, part: str) -> str:
    return layout.marker(stage.name, part)


def score_part(stage: Stage, store: Store, part: str) -> tuple[int, int]:
    """Score one document part in batches; write `scores/<stage>/<part>` (id + outputs).
    Returns its rows and the file's size."""
    docs = store.read_table(layout.docs(part), columns=sorted({"id", *stage.input_columns}))
    for required in stage.requires:
        scores = store.read_table(layout.scores(required, part))
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
    size = store.write_table(layout.scores(stage.name, part), pa.table(columns))
    return docs.num_rows, size


def run_stage(
    stage: Stage,
    context: StageContext,
    timings: dict[str, Any],
    require_done: bool = False,
    versions: dict[str, str] | None = None,
) -> None:
    """Prepare `stage`, then score every part it has not done under this fit; a changed
    fingerprint redoes all. With `require_done`, an unscored part (or changed settings) is an
    error instead. `versions` holds each earlier stage's scores version; this one's is added."""
    began = time.perf_counter()
    store, parts = context.store, context.parts
    versions = {} if versions is None else versions
    fit = fit_key(stage, context) if stage.fitted else None
    if require_done:
        _require_scored(stage, store, parts)
    reused = prepare_stage(stage, context)
    prepared = time.perf_counter() - began
    fingerprint_path = layout.fingerprint(stage.name)
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
    required = {name: versions.get(name) for name in stage.requires}
    version = versions[stage.name] = digest([fingerprint, fit, required])
    pending = _parts_to_score(stage, store, parts, version, reused)
    if pending and require_done:
        raise _not_scored(f"the {stage.name} stage's parts (under its fit)", pending, len(parts))
    if pending:
        log.info("%s: %d of %d parts to score", stage.name, len(pending), len(parts))
        worker_kwargs = {"stage": stage, "store": store, "scores_version": version}
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
        "fit_reused": reused,
        **({"summary": stage.summary} if stage.summary else {}),
    }


def _parts_to_score(
    stage: Stage, store: Store, parts: list[str], version: str, reused: bool
) -> list[str]:
    """The parts without scores of this stage's `version` (its settings, fit and inputs), or
    whose scores file is missing or damaged (not of the size written). A marker written before
    versions were recorded holds while the stage has no fit or reused it."""
    sizes = store.sizes(layout.scores(stage.name))
    pending = []
    for part in parts:
        marker = _stage_marker(stage, part)
        done = store.read_json(marker) if store.exists(marker) else None
        if done is None:
            pending.append(part)
        elif "version" not in done:
            if stage.fitted and not reused:
                pending.append(part)
        elif done["version"] != version or sizes.get(part) != done.get("bytes"):
            pending.append(part)
    stale = [p for p in pending if store.exists(_stage_marker(stage, p))]
    if stale:
        log.info(
            "%s: %d parts scored under another fit or damaged (first: %s); scoring them again",
            stage.name,
            len(stale),
            stale[0],
        )
    return pending


def _require_scored(stage: Stage, store: Store, parts: list[str]) -> None:
    pending = [part for part in parts if not store.exists(_stage_marker(stage, part))]
    if pending:
        raise _not_scored(f"the {stage.name} stage's parts", pending, len(parts))


def _write_selected_part(
    store: Store,
    part: str,
    rows: np.ndarray,
    stages: list[str],
    ranked_by: tuple[str, ...],
    output: OutputConfig,
) -> str:
    docs = store.read_table(layout.docs(part)).take(rows)
    scores = {stage: store.read_table(layout.scores(stage, part)).take(rows) for stage in stages}
    table = selected_table(docs, scores, ranked_by, output.columns)
    return write_selected(store, part, table, output)


def write_selection(
    store: Store, pool: Pool, chosen: np.ndarray, stages: list[str], output: OutputConfig
) -> list[str]:
    """Write the chosen rows of each part to selected/ (distsel.output); remove stale files.
    Returns the names written."""
    part_of = pool.part_index[chosen]
    chosen = chosen[np.lexsort((chosen, part_of))]
    bounds = np.searchsorted(np.sort(part_of), np.arange(len(pool.parts) + 1))
    calls = []
    for index, part in enumerate(pool.parts):
        rows = pool.row_index[chosen[bounds[index] : bounds[index + 1]]]
        if len(rows):
            calls.append((store, part, rows, stages, tuple(pool.ranked_by), output))
    written = current().map(_write_selected_part, calls)
    remove_stale(store, set(written))
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


def credentials(config: Config) -> list[str]:
    """The credential-like strings of the configuration: those that redact hides."""
    return _secret_values(config.model_dump(mode="json"))


def _secret_values(value: Any, inside_storage_options: bool = False) -> list[str]:
    if isinstance(value, str):
        return errors.userinfo(value)
    if isinstance(value, list):
        return [found for item in value for found in _secret_values(item, inside_storage_options)]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        if inside_storage_options and isinstance(item, str) and _names_a_secret(key):
            found.append(item)
        else:
            found += _secret_values(item, inside_storage_options or key == "storage_options")
    return found


def redact(value: Any, inside_storage_options: bool = False) -> Any:
    """Hide credential-like values: in storage options those under keys naming a secret, key
    or token; anywhere, the user information of a URL (http://user:pass@host → ***@host)."""
    if isinstance(value, str):
        return errors.USERINFO.sub("***@", value)
    if isinstance(value, dict):
        return {key: _redact_item(key, item, inside_storage_options) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, inside_storage_options) for item in value]
    return value


def _redact_item(key: str, item: Any, inside_storage_options: bool) -> Any:
    if inside_storage_options and item and _names_a_secret(key):
        return "***"
    return redact(item, inside_storage_options or key == "storage_options")


def _names_a_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("distsel", "ray", "pyarrow", "torch", "transformers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
