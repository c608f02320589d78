"""The ingest phase: the input shards found and checked, read and validated into document parts
(each shard once, resumed by its done marker), and the duplicate ids quarantined."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from distsel.app import duplicates
from distsel.core import corpus, layout, records
from distsel.core.config import Config
from distsel.core.errors import ConfigError, DistselError, InputError
from distsel.core.executor import current
from distsel.core.runner import not_scored, over_items
from distsel.core.stage import digest
from distsel.core.storage import Store, is_remote, reads_inside, retrying

log = logging.getLogger("distsel")
T = TypeVar("T")


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


def check_same_input(store: Store, config: Config) -> None:
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


def _ingest_retrying(shard: corpus.Shard, config: Config, store: Store) -> records.IngestResult:
    """Ingest one shard; while its object store cannot be reached, the shard is read again
    from the start (its parts are rewritten under the same names)."""
    action = functools.partial(records.ingest_shard, shard, config.input, store)
    return _reading([shard.url], action, config.output.retry_seconds)


def ingest(
    shards: list[corpus.Shard],
    config: Config,
    store: Store,
    timings: dict[str, Any],
    require_done: bool = False,
) -> list[records.IngestResult]:
    """Validate and split every shard not yet done; return every shard's result, in shard order."""
    began = time.perf_counter()
    paths = [_ingest_marker(shard) for shard in shards]
    found = store.markers(paths)
    pending = _shards_to_read(shards, found, store)
    if pending and require_done:
        raise not_scored("ingest", [s.key for s in pending], len(shards))
    if pending:
        log.info("ingest: %d of %d shards to read", len(pending), len(shards))
        items = [json.dumps(dataclasses.asdict(shard)) for shard in pending]
        sized = config.input.model_copy(update={"rows_per_part": part_size(config, store, shards)})
        config_json = config.model_copy(update={"input": sized}).model_dump_json()
        kwargs = {"config_json": config_json, "store": store}
        for row in over_items(items, _ingest_item, "ingest", worker_kwargs=kwargs):
            if row["error"]:
                raise InputError(row["error"])
    markers = store.markers_again(paths, found, [_ingest_marker(shard) for shard in pending])
    results = [records.IngestResult(**marker) for marker in markers]
    timings["ingest"] = {
        "rows": sum(r.docs_in for r in results),
        "parts": sum(len(r.parts) for r in results),
        "seconds": round(time.perf_counter() - began, 3),
        "resumed_shards": len(shards) - len(pending),
    }
    return results


def _ingest_marker(shard: corpus.Shard) -> str:
    return layout.ingest_marker(shard.safe_key)


def _shards_to_read(
    shards: list[corpus.Shard], markers: list[Any], store: Store
) -> list[corpus.Shard]:
    """The shards not ingested yet (no marker), changed since (another version: their old parts
    are removed), or whose parts are missing or damaged (not of the size written)."""
    sizes = store.sizes(layout.DOCS)
    pending = []
    for shard, marker in zip(shards, markers, strict=True):
        if marker is None:
            pending.append(shard)
            continue
        done = records.IngestResult(**marker)
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
    ingested: list[records.IngestResult],
    require_done: bool = False,
) -> tuple[list[records.IngestResult], dict[str, np.ndarray]]:
    """With `input.id_field` set, every later copy of an id (in input order) is quarantined as
    `duplicate_id`: moved from accepted to rejected and listed in rejected/duplicate_id.parquet.
    The check runs once per part list (kept in _state/duplicates-<digest>.parquet). Returns the
    results with the moved counts and the rows that each part drops from the pool."""
    if config.input.id_field is None:
        return ingested, {}
    parts = [part for result in ingested for part in result.parts]
    # the check's rows name parts by rank: a check of another part list does not apply
    found_path = layout.duplicates(digest(parts))
    if store.exists(found_path):
        found = store.read_table(found_path)
    else:
        if require_done:
            raise not_scored("the duplicate-id check", [found_path], 1)
        found = _find_duplicate_ids(store, parts, sum(r.accepted for r in ingested))
        shard_of = {part: result.shard for result in ingested for part in result.parts}
        if found.num_rows and config.input.strict:
            first = found.slice(0, 1).to_pylist()[0]
            raise InputError(
                f"{shard_of[parts[first['rank']]]}: id '{first['id']}' appears again "
                f"(first in {shard_of[parts[first['first_rank']]]}); input.strict is set"
            )
        urls = {shard.key: shard.url for shard in shards}
        rejections = _rejections(found, parts, shard_of, urls) if found.num_rows else None
        rejected = layout.REJECTED_DUPLICATE_IDS
        save_check(store, found_path, found, rejected, rejections, layout.is_duplicates)
    dropped = rows_by_part(found, parts)
    return [moved_to_rejected(result, dropped, "duplicate_id") for result in ingested], dropped


def save_check(
    store: Store,
    path: str,
    found: pa.Table,
    rejected: str,
    rejections: pa.Table | None,
    is_check: Callable[[str], bool],
) -> None:
    """Keep a check of quarantined documents: its rejected/ list (a stale one removed when it
    found none), no other check of its kind (`is_check`) in _state/, then the check itself
    (written last: it marks the check done)."""
    if rejections is not None:
        store.write_table(rejected, rejections)
    else:
        store.remove(rejected)
    for name in store.list(layout.STATE, layout.PART_SUFFIX):
        if is_check(name):
            store.remove(layout.state(name))
    store.write_table(path, found)


def rows_by_part(found: pa.Table, parts: list[str]) -> dict[str, np.ndarray]:
    """A check's (rank, row) rows as sorted rows per part."""
    ranks, rows = found.column("rank").to_numpy(), found.column("row").to_numpy()
    return {parts[rank]: np.sort(rows[ranks == rank]) for rank in np.unique(ranks)}


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
    details = [
        f"id '{row['id']}' first in {shard_of[parts[row['first_rank']]]}; this copy: "
        f"{layout.docs(parts[row['rank']])} row {row['row']}"
        for row in rows
    ]
    shards = [shard_of[parts[row["rank"]]] for row in rows]
    raw = [row["id"].encode() for row in rows]
    return rejected_after_ingest(shards, urls, "duplicate_id", details, raw)


def rejected_after_ingest(
    shards: list[str], urls: dict[str, str], reason: str, details: list[str], raw: list[bytes]
) -> pa.Table:
    """Rows of rejected/ for documents quarantined after ingest (no line or row of the input:
    `details` says where they lie in docs/)."""
    return pa.table(
        {
            "shard": shards,
            "path": [urls[shard] for shard in shards],
            "line": pa.nulls(len(shards), pa.int64()),
            "row": pa.nulls(len(shards), pa.int64()),
            "reason": [reason] * len(shards),
            "detail": details,
            "raw": raw,
        },
        schema=records.REJECTED_SCHEMA,
    )


def moved_to_rejected(
    result: records.IngestResult, dropped: dict[str, np.ndarray], reason: str
) -> records.IngestResult:
    """`result` with the `dropped` rows of its parts counted as rejected for `reason`."""
    count = sum(len(dropped.get(part, ())) for part in result.parts)
    if not count:
        return result
    reasons = {**result.reasons, reason: result.reasons.get(reason, 0) + count}
    return dataclasses.replace(
        result,
        accepted=result.accepted - count,
        rejected=result.rejected + count,
        reasons=dict(sorted(reasons.items())),
    )
