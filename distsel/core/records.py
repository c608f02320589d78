"""A shard's records read and validated into documents (the docs/ parts) and rejections (with
their reasons, under rejected/): JSONL and Parquet, line by line, nothing lost uncounted."""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from distsel.core import layout
from distsel.core.config import InputConfig
from distsel.core.corpus import (
    MAX_DEPTH,
    MAX_ROWS_PER_PART,
    RESERVED_COLUMNS,
    UTF8_BOM,
    Shard,
    decompressed,
    list_shards,
    tokens_approx,
)
from distsel.core.errors import InputError
from distsel.core.errors import short as _short
from distsel.core.storage import Store, open_fs

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
            yield from _jsonl_records(decompressed(raw, shard.url), validator)


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
