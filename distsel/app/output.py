"""The selection as a user trains on it: `selected/<part>` files, in Parquet or JSON Lines.

Each file holds, in this order: `id`, the input's own fields (`text` first), the score columns
the selector ranked by, then the columns named in `output.columns` (distsel's internal ones,
such as `tokens_approx`, `token_ids` or `embedding`; `all` for every one), and last, with
`output.weights`, each document's training `weight`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import zstandard

from distsel.core import layout
from distsel.core.config import OutputConfig
from distsel.core.errors import ConfigError
from distsel.core.executor import current
from distsel.core.storage import Store

if TYPE_CHECKING:
    from distsel.core.pool import Pool

INTERNAL_DOC_COLUMNS = ("tokens_approx",)
SUFFIXES = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz"}
SUFFIXES["jsonl.zst"] = ".jsonl.zst"


def selected_name(part: str, output_format: str) -> str:
    """The selected file of document part `part` (`<stem>.parquet` or `<stem>.jsonl[.gz|.zst]`)."""
    return part.removesuffix(layout.PART_SUFFIX) + SUFFIXES[output_format]


def selected_table(
    docs: pa.Table, scores: dict[str, pa.Table], ranked_by: Iterable[str], extra: list[str]
) -> pa.Table:
    """The columns a user gets: id, the input's fields, the `ranked_by` score columns, then
    `extra` (an unknown name is an error naming output.columns and the known ones)."""
    stage_columns = {
        name: table.column(name)
        for table in scores.values()
        for name in table.column_names
        if name != "id"
    }
    own = [n for n in docs.column_names if n not in ("id", *INTERNAL_DOC_COLUMNS)]
    own.sort(key=lambda n: n != "text")  # stable: text first, then the input's order
    wanted = ["id", *own, *(n for n in ranked_by if n in stage_columns)]
    internal = [*INTERNAL_DOC_COLUMNS, *stage_columns]
    if "all" in extra:
        extra = internal
    unknown = [name for name in extra if name not in internal and name not in wanted]
    if unknown:
        raise ConfigError(
            f"output.columns: no column {', '.join(unknown)} (columns: all, {', '.join(internal)})"
        )
    wanted += [name for name in extra if name not in wanted]
    return pa.table(
        {n: docs.column(n) if n in docs.column_names else stage_columns[n] for n in wanted}
    )


def write_selected(store: Store, part: str, table: pa.Table, output: OutputConfig) -> str:
    """Write one part's selected rows in `output.format`; returns the file's name."""
    name = selected_name(part, output.format)
    if output.format == "parquet":
        store.write_table(layout.selected(name), table)
        return name
    lines = b"".join(
        json.dumps(row, ensure_ascii=False, default=_json_value).encode() + b"\n"
        for row in table.to_pylist()
    )
    if output.format == "jsonl.gz":
        lines = gzip.compress(lines, mtime=0)
    elif output.format == "jsonl.zst":
        lines = zstandard.ZstdCompressor().compress(lines)
    store.write_bytes(layout.selected(name), lines)
    return name


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_selection(
    store: Store,
    pool: Pool,
    chosen: np.ndarray,
    stages: list[str],
    output: OutputConfig,
    weights: np.ndarray | None = None,
) -> list[str]:
    """Write the chosen rows of each part to selected/ (with `weights`, one per chosen
    document, as the `weight` column); remove stale files. Returns the names written."""
    part_of = pool.part_index[chosen]
    order = np.lexsort((chosen, part_of))
    chosen = chosen[order]
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)[order]
    bounds = np.searchsorted(np.sort(part_of), np.arange(len(pool.parts) + 1))
    calls = []
    for index, part in enumerate(pool.parts):
        span = slice(bounds[index], bounds[index + 1])
        rows = pool.row_index[chosen[span]]
        if len(rows):
            weight = None if weights is None else weights[span]
            calls.append((store, part, rows, stages, tuple(pool.ranked_by), output, weight))
    written = current().map(_write_selected_part, calls)
    remove_stale(store, set(written))
    return sorted(written)


def _write_selected_part(
    store: Store,
    part: str,
    rows: np.ndarray,
    stages: list[str],
    ranked_by: tuple[str, ...],
    output: OutputConfig,
    weights: np.ndarray | None,
) -> str:
    docs = store.read_table(layout.docs(part)).take(rows)
    scores = {stage: store.read_table(layout.scores(stage, part)).take(rows) for stage in stages}
    table = selected_table(docs, scores, ranked_by, output.columns)
    if weights is not None:
        table = table.append_column("weight", pa.array(weights, pa.float64()))
    return write_selected(store, part, table, output)


def remove_stale(store: Store, written: set[str]) -> None:
    """Remove every file of selected/ that this selection did not write."""
    for name in store.list(layout.SELECTED):
        if name not in written:
            store.remove(layout.selected(name))


def selected_files(store: Store) -> dict[str, str]:
    """The selected file of each document part that has one, by part."""
    found = {}
    for name in store.list(layout.SELECTED):
        for suffix in SUFFIXES.values():
            if name.endswith(suffix):
                found[name.removesuffix(suffix) + layout.PART_SUFFIX] = name
    return found


def read_selected(store: Store, name: str, columns: list[str]) -> pa.Table:
    """`columns` of one selected file, in either format."""
    if name.endswith(".parquet"):
        return store.read_table(layout.selected(name), columns=columns)
    data = store.read_bytes(layout.selected(name))
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    elif name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    rows = [json.loads(line) for line in data.splitlines() if line.strip()]
    return pa.table({c: [row.get(c) for row in rows] for c in columns})
