"""The one stage runner: a stage set up once per actor (`StageWorker`) scores whole parts into
scores/<stage>/ for the pipeline (`run_stage`) and groups of texts on request for a selector
(`StagePool`, e.g. Quad's draws); `over_items` runs any per-item worker with progress lines."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from distsel.core import layout
from distsel.core.config import Config
from distsel.core.console import duration, figure
from distsel.core.errors import DistselError
from distsel.core.executor import current, node_id, use_threads
from distsel.core.registry import stage_class
from distsel.core.selector import selector_for
from distsel.core.stage import Stage, StageContext, digest, fit_key, prepare_stage
from distsel.core.storage import Store

log = logging.getLogger("distsel")


def not_scored(what: str, pending: list[str], total: int) -> DistselError:
    """The error of a selection-only run that finds `what` unfinished."""
    return DistselError(
        f"selection only: {what}: {len(pending)} of {total} not done yet (first: {pending[0]}); "
        "run the scoring phase first (`distsel run CONFIG --phase score` or jobs/scoring.py)"
    )


def over_items(
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


class StageWorker:
    """One actor of a stage's pool: sets the stage up once, then scores whole parts into
    `store` (`__call__`, under `Executor.over_items`) or groups of texts (`score`, under
    `Executor.actors`)."""

    def __init__(self, stage: Stage, store: Store | None = None, scores_version: str = "") -> None:
        self.stage, self.store, self.scores_version = stage, store, scores_version
        use_threads(stage.resources.num_cpus)
        stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        assert self.store is not None
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

    def score(self, texts: list[str], column: str) -> np.ndarray:
        """Output `column` of the stage on `texts`, as float64."""
        if not texts:
            return np.zeros(0)
        values = self.stage(pa.table({"text": texts}))[column]
        return np.asarray(values, dtype=np.float64)


class StagePool:
    """A prepared text stage as a pool of `StageWorker` actors (`Executor.pool_size`) that score
    small groups of documents on request (e.g. the draws of the arms a bandit pulled), several
    groups in parallel; `column` is the output column returned."""

    def __init__(self, stage: Stage, column: str) -> None:
        resources, executor = stage.resources, current()
        self.column = column
        self.actors = executor.actors(
            StageWorker,
            (stage,),
            size=executor.pool_size(resources),
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
        )
        self.evaluated = 0

    def score(self, groups: list[list[str]]) -> list[np.ndarray]:
        self.evaluated += sum(len(texts) for texts in groups)
        return self.actors.call("score", [(texts, self.column) for texts in groups])

    def close(self) -> None:
        self.actors.close()


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
    paths = [_stage_marker(stage, part) for part in parts]
    found = store.markers(paths)
    if require_done:
        _require_scored(stage, parts, found)
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
        store.remove_many(paths)
        found = [None] * len(parts)
    store.write_json(fingerprint_path, fingerprint)
    required = {name: versions.get(name) for name in stage.requires}
    version = versions[stage.name] = digest([fingerprint, fit, required])
    pending = _parts_to_score(stage, store, parts, found, version, reused)
    if pending and require_done:
        raise not_scored(f"the {stage.name} stage's parts (under its fit)", pending, len(parts))
    if pending:
        log.info("%s: %d of %d parts to score", stage.name, len(pending), len(parts))
        worker_kwargs = {"stage": stage, "store": store, "scores_version": version}
        for row in over_items(
            pending,
            StageWorker,
            stage.name,
            resources=stage.resources,
            worker_kwargs=worker_kwargs,
        ):
            if row["error"]:
                raise DistselError(f"{stage.name}: {row['error']}")
    markers = store.markers_again(paths, found, [_stage_marker(stage, p) for p in pending])
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
    stage: Stage, store: Store, parts: list[str], found: list[Any], version: str, reused: bool
) -> list[str]:
    """The parts without scores of this stage's `version` (its settings, fit and inputs), or
    whose scores file is missing or damaged (not of the size written); `found` are the parts'
    markers (None: none). A marker written before versions were recorded holds while the stage
    has no fit or reused it."""
    sizes = store.sizes(layout.scores(stage.name))
    pending, stale = [], []
    for part, done in zip(parts, found, strict=True):
        if done is None:
            pending.append(part)
        elif "version" not in done:
            if stage.fitted and not reused:
                pending.append(part)
                stale.append(part)
        elif done["version"] != version or sizes.get(part) != done.get("bytes"):
            pending.append(part)
            stale.append(part)
    if stale:
        log.info(
            "%s: %d parts scored under another fit or damaged (first: %s); scoring them again",
            stage.name,
            len(stale),
            stale[0],
        )
    return pending


def _require_scored(stage: Stage, parts: list[str], found: list[Any]) -> None:
    pending = [part for part, done in zip(parts, found, strict=True) if done is None]
    if pending:
        raise not_scored(f"the {stage.name} stage's parts", pending, len(parts))


def stage_names(config: Config) -> list[str]:
    """The stages the configuration asks for, plus those its selector needs, in dependency
    order."""
    wanted = config.listed_stages() + list(selector_for(config).required_stages(config))
    wanted += list(config.dedup.stages) if config.dedup else []
    wanted += ["perplexity"] if config.output.weights == "loss" else []
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
