"""Seeded fuzzing of ingest: byte-level mutations of valid shards never crash it or lose a row.

Each mutated shard either fails as a whole with an InputError naming it (corrupt, unreadable), or
is ingested with documents in = accepted + rejected, every row found in docs/ or rejected/, and as
many documents in as a reader independent of distsel counts in the file.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import stdlib_paragraphs

from distsel.core import corpus, records
from distsel.core.config import InputConfig
from distsel.core.errors import InputError
from distsel.core.storage import Store

SEED = 20260613
CASES_PER_FORMAT = 120
TEXTS = stdlib_paragraphs(30)
RECORDS = [
    {
        "text": f"{text[:160]} – café 😀 {i}",
        "domain": ["web", "books", "code"][i % 3],
        "n": i * 1_000_003,
        "score": i / 7,
        "flag": i % 2 == 0,
        "tags": [f"t{i}", "x"][: 1 + i % 2],
        "meta": {"a": i, "b": f"m{i}"},
    }
    for i, text in enumerate(TEXTS)
]
# Inserted pieces that reach the parser's corners: line breaks, structure, escapes, bad bytes.
PIECES = [
    b"\n",
    b"{",
    b"[",
    b'"',
    b"\\",
    b"\xff",
    b"\x00",
    b"\r\n",
    corpus.UTF8_BOM,
    b"\\ud800",
    b"\\udc00",
    b"[" * 300,
    b'{"a":' * 150,
    b"9" * 5000,
    b'"text": {}, ',
    b'"meta": {}, ',
]


def jsonl_shard() -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in RECORDS)


def parquet_shard() -> bytes:
    table = pa.Table.from_pylist(RECORDS).append_column(
        "when", pa.array([datetime.datetime(2024, 1, 1 + i % 28) for i in range(len(RECORDS))])
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none", row_group_size=10)
    return buffer.getvalue()


SHARDS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jsonl": ("shard.jsonl", jsonl_shard),
    "gzip": ("shard.jsonl.gz", lambda: gzip.compress(jsonl_shard(), mtime=0)),
    "parquet": ("shard.parquet", parquet_shard),
}


def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    flipped = bytearray(data)
    for position in rng.integers(len(data), size=int(rng.integers(1, 9))):
        flipped[position] ^= 1 << int(rng.integers(8))
    return bytes(flipped)


def insert_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    at = int(rng.integers(len(data) + 1))
    if rng.random() < 0.6:
        piece = PIECES[int(rng.integers(len(PIECES)))]
    else:
        piece = rng.bytes(int(rng.integers(1, 17)))
    return data[:at] + piece + data[at:]


def delete_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    at = int(rng.integers(len(data)))
    return data[:at] + data[at + int(rng.integers(1, 65)) :]


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(len(data)))]


def duplicate_chunk(data: bytes, rng: np.random.Generator) -> bytes:
    start = int(rng.integers(len(data)))
    chunk = data[start : start + int(rng.integers(1, 257))]
    at = int(rng.integers(len(data) + 1))
    return data[:at] + chunk + data[at:]


MUTATIONS = [flip_bits, insert_bytes, delete_bytes, truncate, duplicate_chunk]


def mutated(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """`data` after one to three random mutations, and their names."""
    names = []
    for _ in range(int(rng.integers(1, 4))):
        if not data:
            break
        mutation = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
        data = mutation(data, rng)
        names.append(mutation.__name__)
    return data, names


def mutated_shard(kind: str, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """A mutated shard of this kind. Half of the gzip cases mutate the lines inside a valid
    stream, and half of the Parquet cases flip bits in the data pages only, leaving the layout
    intact: mutations of the container alone would mostly stop at its checks."""
    if kind == "gzip" and rng.random() < 0.5:
        data, names = mutated(jsonl_shard(), rng)
        return gzip.compress(data, mtime=0), [f"{name} inside" for name in names]
    if kind == "parquet" and rng.random() < 0.5:
        data = parquet_shard()
        footer = int.from_bytes(data[-8:-4], "little") + 8
        body = flip_bits(data[4:-footer], rng)
        return data[:4] + body + data[-footer:], ["flip_bits in pages"]
    return mutated(SHARDS[kind][1](), rng)


def rows_in(name: str, data: bytes) -> int | None:
    """Rows in the file as a reader independent of distsel counts them (non-blank lines, or
    the Parquet footer's row count); None where that reader cannot read the file."""
    if name.endswith(".parquet"):
        try:
            return pq.read_metadata(io.BytesIO(data)).num_rows
        except (OSError, pa.ArrowException):
            return None
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    data = data.removeprefix(corpus.UTF8_BOM)
    return sum(1 for line in data.split(b"\n") if line.strip(records.JSON_WHITESPACE))


def problem_with(name: str, data: bytes, folder: Path) -> str | None:
    """Ingest one mutated shard; what went wrong, or None."""
    path = folder / name
    folder.mkdir()
    path.write_bytes(data)
    config = InputConfig(paths=[str(path)])
    (shard,) = corpus.list_shards(config)
    store = Store(str(folder / "out"))
    try:
        result = records.ingest_shard(shard, config, store)
    except InputError as exc:
        if name.endswith(".jsonl"):
            return f"an uncompressed JSON Lines file failed as a whole: {exc}"
        return None if str(path) in str(exc) else f"error does not name the file: {exc}"
    accepted = sum(store.read_table(f"docs/{part}").num_rows for part in result.parts)
    rejected_file = f"rejected/{shard.safe_key}.parquet"
    rejected = store.read_table(rejected_file).num_rows if store.exists(rejected_file) else 0
    expected = rows_in(name, data)
    counts = (result.docs_in, result.accepted, result.rejected)
    if counts != (result.accepted + result.rejected, accepted, rejected) or (
        expected != result.docs_in
    ):
        return f"in/accepted/rejected {counts}; stored {accepted}/{rejected}; rows {expected}"
    return None


@pytest.mark.parametrize("kind", sorted(SHARDS))
def test_mutated_shards_fail_clearly_or_account_for_every_row(tmp_path, kind):
    name = SHARDS[kind][0]
    rng = np.random.default_rng([SEED, sorted(SHARDS).index(kind)])
    problems = []
    for case in range(CASES_PER_FORMAT):
        data, mutations = mutated_shard(kind, rng)
        try:
            problem = problem_with(name, data, tmp_path / str(case))
        except Exception as exc:  # a crash is reported with the case, like any other problem
            problem = f"crashed: {type(exc).__name__}: {exc}"
        if problem:
            problems.append(f"case {case} ({', '.join(mutations)}): {problem}")
    assert not problems, "\n".join(problems)
