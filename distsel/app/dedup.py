"""Near-duplicate removal before selection (`dedup:`): the check of one part list and setting,
run once and kept, and its near duplicates quarantined as `near_duplicate`.

A document is the node rank · 2^32 + row (its part's rank in input order, its row in the part),
so node order is input order. A finder (distsel.app.minhash_duplicates, semantic_duplicates)
returns FOUND_SCHEMA rows: each near duplicate, the document it repeats (kept) and their
similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from distsel.app.ingest import (
    moved_to_rejected,
    rejected_after_ingest,
    rows_by_part,
    save_check,
)
from distsel.core import corpus, layout, records
from distsel.core.config import Config, DedupConfig
from distsel.core.executor import current
from distsel.core.runner import not_scored
from distsel.core.stage import digest
from distsel.core.storage import Store

log = logging.getLogger("distsel")
MAX_GROUPS = 4096
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1
FOUND_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("row", pa.int64()),
        ("first_rank", pa.int64()),
        ("first_row", pa.int64()),
        ("similarity", pa.float32()),
    ]
)
MEASURE = {"minhash": "estimated Jaccard", "semantic": "cosine"}


def before_scoring(config: Config) -> bool:
    """Whether the check runs before the scoring stages (MinHash reads only the texts; the
    semantic check reads the embed and cluster stages' output)."""
    return config.dedup is None or config.dedup.method == "minhash"


def found_table(later: np.ndarray, kept: np.ndarray, similarity: np.ndarray) -> pa.Table:
    """FOUND_SCHEMA rows from nodes, sorted by the near duplicate's node."""
    order = np.argsort(later, kind="stable")
    later, kept = np.asarray(later)[order], np.asarray(kept)[order]
    return pa.table(
        {
            "rank": later >> ROW_BITS,
            "row": later & ROW_MASK,
            "first_rank": kept >> ROW_BITS,
            "first_row": kept & ROW_MASK,
            "similarity": np.asarray(similarity, dtype=np.float32)[order],
        },
        schema=FOUND_SCHEMA,
    )


def quarantine_near_duplicates(
    config: Config,
    store: Store,
    shards: list[corpus.Shard],
    ingested: list[records.IngestResult],
    dropped: dict[str, np.ndarray],
    timings: dict[str, Any],
    require_done: bool = False,
) -> tuple[list[records.IngestResult], dict[str, np.ndarray]]:
    """With `dedup:` set, every near duplicate but the one its cluster keeps (minhash: the first
    in input order; semantic: the one nearest the k-means centroid, see
    distsel.algorithms.semdedup) is quarantined as `near_duplicate`: moved from accepted to
    rejected and listed in
    rejected/near_duplicate.parquet. `dropped` (the duplicate ids) takes no part and is
    returned with the near duplicates added. The check runs once per part list and setting;
    timings["dedup"] says how long it took, or that it was reused."""
    began = time.perf_counter()
    if config.dedup is None:
        store.remove(layout.REJECTED_NEAR_DUPLICATES)
        return ingested, dropped
    parts = [part for result in ingested for part in result.parts]
    check = check_digest(parts, config.dedup, config.seed, _inputs(store, config.dedup))
    found_path = layout.near_duplicates(check)
    total = sum(r.accepted for r in ingested)
    reused = store.exists(found_path)
    if reused:
        found = store.read_table(found_path)
    else:
        if require_done:
            raise not_scored("the near-duplicate check", [found_path], 1)
        find = _finder(config.dedup)
        found = find(store, parts, config.dedup, dropped, check, config.seed, total)
        shard_of = {part: result.shard for result in ingested for part in result.parts}
        urls = {shard.key: shard.url for shard in shards}
        measure = MEASURE[config.dedup.method]
        rejections = (
            _rejections(store, found, parts, shard_of, urls, measure) if found.num_rows else None
        )
        rejected = layout.REJECTED_NEAR_DUPLICATES
        save_check(store, found_path, found, rejected, rejections, layout.is_near_duplicates)
    near = rows_by_part(found, parts)
    log.info("dedup: %d near duplicates quarantined", found.num_rows)
    timings["dedup"] = {
        "rows": total,
        "near_duplicates": found.num_rows,
        "seconds": round(time.perf_counter() - began, 3),
        "reused": reused,
    }
    merged = {
        part: np.union1d(dropped.get(part, []), near.get(part, [])).astype(np.int64)
        for part in {*dropped, *near}
    }
    return [moved_to_rejected(result, near, "near_duplicate") for result in ingested], merged


def _rejections(
    store: Store,
    found: pa.Table,
    parts: list[str],
    shard_of: dict[str, str],
    urls: dict[str, str],
    measure: str,
) -> pa.Table:
    """rejected/near_duplicate.parquet: each near duplicate's shard, its id as `raw`, and where
    it and the document it repeats lie; built by one task per part holding any (`found` is
    sorted by rank, then row)."""
    ranks = found.column("rank").to_numpy()
    present = np.unique(ranks)
    bounds = np.searchsorted(ranks, np.append(present, ranks[-1] + 1 if len(ranks) else 0))
    calls = []
    for rank, start, stop in zip(present.tolist(), bounds[:-1], bounds[1:], strict=True):
        rows = found.slice(start, stop - start)
        firsts = {r: parts[r] for r in set(rows.column("first_rank").to_pylist())}
        shard = shard_of[parts[rank]]
        calls.append((store, parts[rank], rows, firsts, (shard, urls[shard]), measure))
    return pa.concat_tables(current().map(_part_rejections, calls, num_cpus=0))


def _part_rejections(
    store: Store,
    part: str,
    rows: pa.Table,
    firsts: dict[int, str],
    shard: tuple[str, str],
    measure: str,
) -> pa.Table:
    """The rejected/ rows of one part's near duplicates (FOUND_SCHEMA `rows`): `firsts` names
    the parts of the documents they repeat, `shard` is the part's shard and its url."""
    column = store.read_table(layout.docs(part), columns=["id"]).column("id").cast(pa.string())
    ids = column.take(rows.column("row")).to_pylist()
    details = [
        f"{measure} {similarity:.2f} to {layout.docs(firsts[first_rank])} row {first_row}; "
        f"this copy: {layout.docs(part)} row {row}"
        for similarity, first_rank, first_row, row in zip(
            *(
                rows.column(name).to_pylist()
                for name in ("similarity", "first_rank", "first_row", "row")
            ),
            strict=True,
        )
    ]
    shards = [shard[0]] * rows.num_rows
    raw = [value.encode() for value in ids]
    return rejected_after_ingest(shards, dict([shard]), "near_duplicate", details, raw)


def check_digest(parts: list[str], options: DedupConfig, seed: int, inputs: str = "") -> str:
    """Names one check: the part list, the settings that change its result and what else it
    reads (`inputs`)."""
    settings = {**options.settings(), "seed": seed, "inputs": inputs}
    return digest([*parts, json.dumps(settings, sort_keys=True)])


def _inputs(store: Store, options: DedupConfig) -> str:
    """What the check reads besides the documents: the semantic check, the cluster stage's
    centroids (a new fit redoes it)."""
    if options.method != "semantic":
        return ""
    return hashlib.sha256(store.read_bytes(layout.CENTROIDS)).hexdigest()


def _finder(options: DedupConfig) -> Any:
    if options.method == "minhash":
        from distsel.app.minhash_duplicates import find_near_duplicates

        return find_near_duplicates
    from distsel.app.semantic_duplicates import find_semantic_duplicates

    return find_semantic_duplicates
