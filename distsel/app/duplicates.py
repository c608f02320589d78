"""Duplicate document ids across shards and parts, found without a driver-side set of every id.

With `input.id_field` set, ids come from the data and may repeat. Each id goes to one of T
groups by a hash, h(id) mod T. Each part writes its ids once, as one Parquet file with one row
group per group (`write_part_ids`); check task t then reads row group t of every part
(`find_duplicates`), so every id is read once, by the one task that can see all its copies. The
first occurrence in input order (shard order, then position) is kept; the later ones are
quarantined as `duplicate_id`. Memory per task is the size of one group: N / T ids.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distsel.core import layout
from distsel.core.storage import Store

IDS_PER_GROUP = 2_000_000
MAX_GROUPS = 4096
DUPLICATES_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("first_rank", pa.int64()),
        ("first_row", pa.int64()),
    ]
)


def group_count(total_ids: int) -> int:
    """T = ceil(N / 2,000,000), at least 1 and at most 4,096."""
    return max(1, min(MAX_GROUPS, math.ceil(total_ids / IDS_PER_GROUP)))


def id_groups(ids: list[str], groups: int) -> np.ndarray:
    """h(id) mod T, with h the first 8 bytes of blake2b: the same in every process."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") % groups
            for i in ids
        ],
        dtype=np.int64,
    )


def write_part_ids(store: Store, part: str, rank: int, groups: int) -> None:
    """Write part `rank`'s ids as (rank, row, id), row group t holding the ids of group t."""
    ids = store.read_table(layout.docs(part), columns=["id"]).column("id").cast(pa.string())
    rows = np.arange(len(ids), dtype=np.int64)
    table = pa.table({"rank": np.full(len(ids), rank, dtype=np.int64), "row": rows, "id": ids})
    group_of = id_groups(ids.to_pylist(), groups)
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema, compression="zstd") as writer:
        for group in range(groups):
            writer.write_table(table.filter(pa.array(group_of == group)))
    store.write_bytes(layout.ids(part), buffer.getvalue())


def find_duplicates(store: Store, parts: list[str], group: int) -> pa.Table:
    """Every later occurrence of an id of `group`, with the position of its first occurrence."""
    tables = [store.read_row_group(layout.ids(part), group) for part in parts]
    order = [("id", "ascending"), ("rank", "ascending"), ("row", "ascending")]
    seen = pa.concat_tables(tables).sort_by(order)
    if seen.num_rows < 2:
        return DUPLICATES_SCHEMA.empty_table()
    ids = seen.column("id")
    repeats = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    later = np.flatnonzero(repeats) + 1
    first = _first_of_run(repeats)[later - 1]
    return pa.table(
        {
            "rank": seen.column("rank").take(later),
            "row": seen.column("row").take(later),
            "id": ids.take(later),
            "first_rank": seen.column("rank").take(first),
            "first_row": seen.column("row").take(first),
        },
        schema=DUPLICATES_SCHEMA,
    )


def _first_of_run(repeats: np.ndarray) -> np.ndarray:
    """For each position i ≥ 1 of the sorted ids, the index where its run of equal ids began."""
    starts = np.where(np.concatenate([[True], ~repeats]), np.arange(len(repeats) + 1), 0)
    return np.maximum.accumulate(starts)[1:]
