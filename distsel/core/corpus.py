"""Read, validate and write sharded corpora (JSON Lines, optionally gzip/zstd, and Parquet).

Every row of every input shard ends up either accepted (a document with a stable id) or rejected
(quarantined with its shard, line or row, and reason), so documents in = accepted + rejected.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from distsel.core import layout
from distsel.core.config import InputConfig, TargetConfig
from distsel.core.errors import InputError
from distsel.core.errors import short as _short
from distsel.core.storage import Store, full_url, open_fs

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
RESERVED_COLUMNS = ("id", "text", "tokens_approx")
CHARS_PER_TOKEN = 4
#: A JSON line nested deeper is quarantined (`too_deep`): storing it would recurse without bound.
MAX_DEPTH = 100
# Automatic part size: about this many parts per core of the cluster (an actor takes one part at
# a time; with four per actor the last parts leave little of the cluster idle), within bounds.
PARTS_PER_CORE = 4
MIN_ROWS_PER_PART, MAX_ROWS_PER_PART = 200, 20_000
# Rows are counted in at most this many shards, in their first ESTIMATE_BYTES (decompressed).
ESTIMATE_SHARDS, ESTIMATE_BYTES = 8, 32 << 20
NAME_STEM_CHARS = 80
UNSAFE_NAME_CHARS = re.compile(r"[^0-9A-Za-z._-]+")
VERSION_BYTES = 1 << 16  # read from each end of a shard for its version
UTF8_BOM = b"\xef\xbb\xbf"
JSON_WHITESPACE = b" \t\r\n"
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
REJECTED_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("path", pa.string()),
        ("line", pa.int64()),
        ("row", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.binary()),
    ]
)


@dataclass(frozen=True)
class Shard:
    """One input file: `url` to open it, `key` (its path below the input root) to name it,
    `version` (shard_version) to tell its content apart from an earlier one's."""

    url: str
    key: str
    format: str
    version: str = ""

    @property
    def safe_key(self) -> str:
        """Name of the shard's files: its key made safe, then a hash of the whole key, so that
        distinct keys never share a name ('sub/y.jsonl' → 'sub__y.jsonl-<12 hex digits>')."""
        return safe_name(self.key)


def safe_name(key: str) -> str:
    """`key` in [0-9A-Za-z._-] ('/' → '__'), its last 80 characters, then '-' and a 48-bit
    BLAKE2b hash of `key`. No leading '.' or '_': Arrow's dataset readers skip such files."""
    stem = UNSAFE_NAME_CHARS.sub("_", key.replace("/", "__"))[-NAME_STEM_CHARS:].lstrip("._-")
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"{stem or 'shard'}-{digest}"


def tokens_approx(chars: int) -> int:
    """Approximate token count of a text: ceil(characters / 4)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def _format_of(path: str, configured: str) -> str | None:
    if configured != "auto":
        return configured
    lowered = path.lower()
    if lowered.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lowered.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def list_shards(config: InputConfig) -> list[Shard]:
    """Expand files, folders and globs into shards; a missing path or empty match is an error."""
    shards: dict[str, Shard] = {}
    for given in config.paths:
        fs, path = open_fs(given, config.storage_options)
        for file_path, key in _expand(fs, path, given):
            fmt = _format_of(file_path, config.format)
            if fmt is None:
                if _is_explicit_file(fs, path, file_path):
                    raise InputError(
                        f"{given}: cannot tell the format from the name; "
                        "set input.format to jsonl or parquet"
                    )
                continue
            shard = Shard(full_url(fs, file_path), key, fmt)
            if key in shards and shards[key].url != shard.url:
                raise InputError(
                    f"input files {shards[key].url} and {shard.url} would share the shard name "
                    f"'{key}'; give them as separate folders or rename one"
                )
            shards[key] = shard
    if not shards:
        raise InputError(f"no .jsonl[.gz|.zst] or .parquet files found in {config.paths}")
    _check_distinct_names(shards.values())
    return sorted(shards.values(), key=lambda shard: shard.key)


def _check_distinct_names(shards: Iterable[Shard]) -> None:
    """Two keys whose names share stem and hash are all but impossible; refuse them anyway."""
    seen: dict[str, Shard] = {}
    for shard in shards:
        other = seen.setdefault(shard.safe_key, shard)
        if other is not shard:
            raise InputError(
                f"input files {other.url} and {shard.url} would share the file name "
                f"'{shard.safe_key}'; rename one"
            )


def _is_explicit_file(fs: Any, given_path: str, file_path: str) -> bool:
    return given_path.rstrip("/") == file_path.rstrip("/")


def _expand(fs: Any, path: str, given: str) -> list[tuple[str, str]]:
    fs.invalidate_cache()
    try:
        if any(char in path for char in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise InputError(f"{given}: the pattern matches no file")
            root = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
            return [
                (match, match[len(root) :].lstrip("/")) for match in matches if fs.isfile(match)
            ]
        if fs.isdir(path):
            files = sorted(fs.find(path))
            if not files:
                raise InputError(f"{given}: the folder holds no file")
            return [(file, file[len(path.rstrip("/")) :].lstrip("/")) for file in files]
        if fs.isfile(path):
            return [(path, path.rsplit("/", 1)[-1])]
    except InputError:
        raise
    except (PermissionError, OSError) as exc:
        raise InputError(f"{given}: cannot read ({_short(exc)})") from None
    raise InputError(f"{given}: no such file or folder")


def check_readable(shard: Shard, storage_options: dict[str, Any]) -> None:
    """Open a shard and read its first bytes (or Parquet footer) so a bad file fails early."""
    try:
        fs, path = open_fs(shard.url, storage_options)
        with fs.open(path, "rb") as raw:
            if shard.format == "parquet":
                pq.ParquetFile(raw)
            else:
                _decompressed(raw, shard.url).read(1 << 16)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{shard.url}: unreadable or corrupt ({_short(exc)})") from None


def shard_version(shard: Shard, storage_options: dict[str, Any]) -> str:
    """12 hex digits that change with the file: a hash of its size, modification time or ETag,
    and its first and last VERSION_BYTES bytes."""
    fs, path = open_fs(shard.url, storage_options)
    info = fs.info(path)
    stamp = [info.get(name) for name in ("size", "mtime", "LastModified", "ETag", "etag")]
    digest = hashlib.blake2b(json.dumps(stamp, default=str).encode(), digest_size=6)
    size = int(info.get("size") or 0)
    with fs.open(path, "rb") as raw:
        digest.update(raw.read(VERSION_BYTES))
        if size > VERSION_BYTES:
            raw.seek(max(size - VERSION_BYTES, VERSION_BYTES))
            digest.update(raw.read(VERSION_BYTES))
    return digest.hexdigest()


def target_versions(target: TargetConfig) -> list[list[str]]:
    """[key, version] of each target file (shard_version): a fit on the target examples holds
    while these stay the same."""
    files = InputConfig(paths=target.paths, storage_options=target.storage_options)
    options = target.storage_options
    return [[shard.key, shard_version(shard, options)] for shard in list_shards(files)]


def auto_rows_per_part(shards: list[Shard], storage_options: dict[str, Any], cores: float) -> int:
    """Rows per part that cut the pool into about PARTS_PER_CORE parts per core, within
    [MIN_ROWS_PER_PART, MAX_ROWS_PER_PART]: the maximum when there are that many shards already
    (a shard makes one part at least), else from the shards' estimated rows."""
    wanted = PARTS_PER_CORE * max(1, int(cores))
    if len(shards) >= wanted:
        return MAX_ROWS_PER_PART
    rows = estimate_pool_rows(shards, storage_options)
    return min(MAX_ROWS_PER_PART, max(MIN_ROWS_PER_PART, math.ceil(rows / wanted)))


def estimate_pool_rows(shards: list[Shard], storage_options: dict[str, Any]) -> int:
    """The shards' rows: each one's `estimate_rows`, or, with more than ESTIMATE_SHARDS shards,
    the rows per byte of that many evenly spaced ones times every shard's bytes."""
    if len(shards) <= ESTIMATE_SHARDS:
        return sum(estimate_rows(shard, storage_options) for shard in shards)
    step = len(shards) / ESTIMATE_SHARDS
    sample = [shards[int(i * step)] for i in range(ESTIMATE_SHARDS)]
    sizes = {shard.url: _size(shard, storage_options) for shard in shards}
    rows = sum(estimate_rows(shard, storage_options) for shard in sample)
    sampled_bytes = sum(sizes[shard.url] for shard in sample)
    return math.ceil(rows * sum(sizes.values()) / max(sampled_bytes, 1))


def _size(shard: Shard, storage_options: dict[str, Any]) -> int:
    fs, path = open_fs(shard.url, storage_options)
    return int(fs.size(path))


def estimate_rows(shard: Shard, storage_options: dict[str, Any]) -> int:
    """A shard's rows: exact for Parquet (its metadata) and for JSON Lines up to ESTIMATE_BYTES
    decompressed; a longer JSON Lines file's lines are counted in its first ESTIMATE_BYTES and
    scaled by the share of the file read."""
    try:
        fs, path = open_fs(shard.url, storage_options)
        with fs.open(path, "rb") as raw:
            if shard.format == "parquet":
                return pq.ParquetFile(raw).metadata.num_rows
            reader, lines, read, last = _decompressed(raw, shard.url), 0, 0, b"\n"
            while read < ESTIMATE_BYTES:
                chunk = reader.read(1 << 20)
                if not chunk:
                    return lines + (last != b"\n")
                lines, read, last = lines + chunk.count(b"\n"), read + len(chunk), chunk[-1:]
            return math.ceil(lines * fs.size(path) / max(raw.tell(), 1))
    except Exception as exc:
        raise InputError(f"{shard.url}: unreadable or corrupt ({_short(exc)})") from None


def _decompressed(raw: IO[bytes], url: str) -> IO[bytes]:
    lowered = url.lower()
    if lowered.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if lowered.endswith(".zst"):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return raw


@dataclass
class Rejection:
    line: int | None
    row: int | None
    reason: str
    detail: str
    raw: bytes


@dataclass
class IngestResult:
    """What one shard produced; stored as the shard's done marker."""

    shard: str
    docs_in: int = 0
    accepted: int = 0
    rejected: int = 0
    parts: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    version: str = ""  # the shard's version when it was read
    part_bytes: list[int] = field(default_factory=list)  # each part's file size


class _Validator:
    """Turns one raw record (a JSON object or a Parquet row) into a document or a rejection."""

    def __init__(self, config: InputConfig, shard: Shard) -> None:
        self.config = config
        self.shard = shard

    def document(self, record: dict[str, Any], position: int) -> dict[str, Any] | tuple[str, str]:
        config = self.config
        if config.text_field not in record:
            return "missing_text", f"no field '{config.text_field}'"
        text = record[config.text_field]
        if text is None:
            return "null_text", f"field '{config.text_field}' is null"
        if not isinstance(text, str):
            return "text_not_string", f"field '{config.text_field}' is {type(text).__name__}"
        if not text.strip():
            return "empty_text", f"field '{config.text_field}' is empty or whitespace"
        if len(text) > config.max_chars:
            return "text_too_long", f"{len(text)} characters > input.max_chars={config.max_chars}"
        if config.id_field is None:
            doc_id = f"{self.shard.key}:{position}"
        else:
            value = record.get(config.id_field)
            if value is None or isinstance(value, (dict, list)) or value == "":
                return "missing_id", f"field '{config.id_field}' is missing, null or not a scalar"
            doc_id = str(value)
        document = {"id": doc_id, "text": text, "tokens_approx": tokens_approx(len(text))}
        for name, value in record.items():
            if name in (config.text_field, config.id_field):
                continue
            document[f"input_{name}" if name in RESERVED_COLUMNS else name] = value
        return document


def _jsonl_records(handle: IO[bytes], validator: _Validator) -> Iterator[tuple[int, Any]]:
    """Yield (line number, document or Rejection) for every non-blank line."""
    for number, line in enumerate(handle, start=1):
        if number == 1 and line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM) :]
        line = line.rstrip(b"\r\n")
        if not line.strip(JSON_WHITESPACE):
            continue
        try:
            outcome = _jsonl_row(line, number, validator)
        except Exception as exc:  # no check foresaw it: this row is quarantined, the run goes on
            outcome = _failed_row(exc, number, None, line)
        yield number, outcome


def _jsonl_row(line: bytes, number: int, validator: _Validator) -> dict[str, Any] | Rejection:
    def rejected(reason: str, detail: str) -> Rejection:
        return Rejection(number, None, reason, detail, line)

    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return rejected("not_utf8", f"byte {exc.start}: {exc.reason}")
    except json.JSONDecodeError as exc:
        return rejected("invalid_json", exc.msg)
    except ValueError as exc:  # valid JSON that Python refuses: an integer of over 4300 digits
        return rejected("invalid_json", _short(exc))
    if not isinstance(value, dict):
        return rejected("not_an_object", f"a JSON {type(value).__name__}")
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return rejected("too_deep", f"nested more than {MAX_DEPTH} levels")
    if SURROGATE_ESCAPE.search(line) and not _encodable(value):
        return rejected("not_utf8", "a \\u escape stands for a lone surrogate, not a character")
    outcome = validator.document(value, number)
    return rejected(*outcome) if isinstance(outcome, tuple) else outcome


def _failed_row(exc: Exception, line: int | None, row: int | None, raw: bytes) -> Rejection:
    if isinstance(exc, RecursionError):
        return Rejection(line, row, "too_deep", f"nested more than {MAX_DEPTH} levels", raw)
    return Rejection(line, row, "invalid_row", _short(exc), raw)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (0 for a scalar, 1 for a flat object), without recursion."""
    depth, level = 0, [value]
    while level := [item for item in level if isinstance(item, (dict, list))]:
        depth += 1
        level = [
            child for item in level for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parquet_records(handle: IO[bytes], validator: _Validator) -> Iterator[tuple[int, Any]]:
    """Yield (row index, document or Rejection) for every row, batch by batch."""
    parquet = pq.ParquetFile(handle)
    text_field = validator.config.text_field
    if text_field not in parquet.schema_arrow.names:
        raise InputError(
            f"{validator.shard.url}: no column '{text_field}' "
            f"(columns: {', '.join(parquet.schema_arrow.names)}); set input.text_field"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record, unreadable in _batch_records(batch):
            try:
                outcome = _parquet_row(record, unreadable, row, validator)
            except Exception as exc:  # no check foresaw it: this row is quarantined
                outcome = _failed_row(exc, None, row, _raw_record(record))
            yield row, outcome
            row += 1


def _batch_records(batch: pa.RecordBatch) -> list[tuple[dict[str, Any], Exception | None]]:
    """The batch's rows as Python values, each with the error of a value Python cannot hold
    (a date past year 9999, a string that is not UTF-8), if any."""
    try:
        return [(record, None) for record in batch.to_pylist()]
    except Exception:  # find the rows that fail, value by value
        return [_row_values(batch, index) for index in range(batch.num_rows)]


def _row_values(batch: pa.RecordBatch, index: int) -> tuple[dict[str, Any], Exception | None]:
    record: dict[str, Any] = {}
    failure: Exception | None = None
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            record[name] = column[index].as_py()
        except Exception as exc:
            record[name] = None
            failure = failure or ValueError(f"column '{name}': {_short(exc)}")
    return record, failure


def _records(shard: Shard, config: InputConfig, validator: _Validator) -> Iterator[tuple[int, Any]]:
    fs, path = open_fs(shard.url, config.storage_options)
    with fs.open(path, "rb") as raw:
        if shard.format == "parquet":
            yield from _parquet_records(raw, validator)
        else:
            yield from _jsonl_records(_decompressed(raw, shard.url), validator)


def _parquet_row(
    record: dict[str, Any], unreadable: Exception | None, row: int, validator: _Validator
) -> Any:
    def rejected(reason: str, detail: str) -> Rejection:
        return Rejection(None, row, reason, detail, _raw_record(record))

    if unreadable is not None:
        return rejected("invalid_value", str(unreadable))
    text = record.get(validator.config.text_field)
    if isinstance(text, bytes):
        try:
            record[validator.config.text_field] = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return rejected("not_utf8", f"byte {exc.start}: {exc.reason}")
    outcome = validator.document(record, row)
    return rejected(*outcome) if isinstance(outcome, tuple) else outcome


def _raw_record(record: dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, default=repr).encode()
    except (ValueError, TypeError, RecursionError):
        return repr(record).encode("utf-8", "backslashreplace")


def documents_table(documents: list[dict[str, Any]]) -> pa.Table:
    """Arrow table of documents; a field whose values have mixed types, or a type Parquet cannot
    store and read back, is stored as JSON text."""
    names = list(dict.fromkeys(name for document in documents for name in document))
    return pa.table(
        {name: _column([document.get(name) for document in documents]) for name in names}
    )


def _column(values: list[Any]) -> pa.Array | pa.ChunkedArray:
    try:
        array = pa.array(values)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        array = None
    if array is None or not _parquet_round_trips(array.type):
        texts = [None if value is None else json.dumps(value, default=str) for value in values]
        return pa.array(texts, pa.string())
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


@functools.lru_cache(maxsize=1024)
def _parquet_round_trips(kind: pa.DataType) -> bool:
    """Whether Parquet stores and reads back this type (not: an empty struct, an interval,
    lists nested about 50 deep, which are written but then refused as too deeply nested)."""
    buffer = pa.BufferOutputStream()
    try:
        pq.write_table(pa.table({"value": pa.array([], kind)}), buffer)
        pq.read_table(pa.BufferReader(buffer.getvalue()))
    except (pa.ArrowException, OSError):
        return False
    return True


def rejected_table(shard: Shard, rejections: list[Rejection]) -> pa.Table:
    return pa.table(
        {
            "shard": [shard.key] * len(rejections),
            "path": [shard.url] * len(rejections),
            "line": [r.line for r in rejections],
            "row": [r.row for r in rejections],
            "reason": [r.reason for r in rejections],
            "detail": [r.detail for r in rejections],
            "raw": [r.raw for r in rejections],
        },
        schema=REJECTED_SCHEMA,
    )


def ingest_shard(shard: Shard, config: InputConfig, store: Store) -> IngestResult:
    """Validate one shard; write its documents as Parquet parts and its rejected rows.

    Parts are named after the shard and written atomically, so redoing a shard after a crash
    rewrites the same files with the same content.
    """
    validator = _Validator(config, shard)
    result = IngestResult(shard=shard.key, version=shard.version)
    reasons: Counter[str] = Counter()
    rejections: list[Rejection] = []
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        name = layout.part_name(shard.safe_key, shard.version, len(result.parts))
        result.part_bytes.append(store.write_table(layout.docs(name), documents_table(pending)))
        result.parts.append(name)
        pending.clear()

    position = 0
    try:
        for position, outcome in _records(shard, config, validator):  # noqa: B007
            result.docs_in += 1
            if isinstance(outcome, Rejection):
                if config.strict:
                    raise InputError(_strict_message(shard, outcome))
                rejections.append(outcome)
                reasons[outcome.reason] += 1
                continue
            pending.append(outcome)
            if len(pending) >= (config.rows_per_part or MAX_ROWS_PER_PART):
                flush()
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException) as exc:
        where = (
            f"after {'line' if shard.format == 'jsonl' else 'row'} {position}" if position else ""
        )
        raise InputError(f"{shard.url}: unreadable or corrupt {where} ({_short(exc)})") from None
    if pending:  # a shard without accepted rows has no part
        flush()
    result.accepted = result.docs_in - len(rejections)
    result.rejected = len(rejections)
    result.reasons = dict(sorted(reasons.items()))
    if rejections:
        store.write_table(layout.rejected(shard.safe_key), rejected_table(shard, rejections))
    else:
        store.remove(layout.rejected(shard.safe_key))
    return result


def _strict_message(shard: Shard, rejection: Rejection) -> str:
    where = f"line {rejection.line}" if rejection.line is not None else f"row {rejection.row}"
    return f"{shard.url}: {where}: {rejection.reason.replace('_', ' ')} ({rejection.detail})"


def read_target_tasks(
    paths: list[str], text_field: str, storage_options: dict[str, Any]
) -> dict[str, list[str]]:
    """Texts of a small file set (target examples), one task per file, named by its stem.

    Bad rows are errors here: target sets are small and a silent gap would skew every score.
    """
    config = InputConfig(paths=paths, text_field=text_field, storage_options=storage_options)
    tasks: dict[str, list[str]] = {}
    for shard in list_shards(config):
        texts = tasks.setdefault(task_name(shard.key), [])
        for _, outcome in _records(shard, config, _Validator(config, shard)):
            if isinstance(outcome, Rejection):
                raise InputError(_strict_message(shard, outcome))
            texts.append(outcome["text"])
    return tasks


def task_name(key: str) -> str:
    """'evals/gsm8k.jsonl.gz' → 'gsm8k': the file's stem, safe as part of a column name."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return re.sub(r"[^0-9A-Za-z_]+", "_", stem) or "target"


def read_texts(paths: list[str], text_field: str, storage_options: dict[str, Any]) -> list[str]:
    """All texts of a small file set, every task together."""
    tasks = read_target_tasks(paths, text_field, storage_options)
    return [text for texts in tasks.values() for text in texts]
