"""Read, validate and write sharded corpora (JSON Lines, optionally gzip/zstd, and Parquet).

Every row of every input shard ends up either accepted (a document with a stable id) or rejected
(quarantined with its shard, line or row, and reason), so documents in = accepted + rejected.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.parquet as pq
import zstandard

from distsel.core.config import InputConfig, TargetConfig
from distsel.core.errors import InputError
from distsel.core.errors import short as _short
from distsel.core.storage import full_url, open_fs

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
                decompressed(raw, shard.url).read(1 << 16)
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
            reader, lines, read, last = decompressed(raw, shard.url), 0, 0, b"\n"
            while read < ESTIMATE_BYTES:
                chunk = reader.read(1 << 20)
                if not chunk:
                    return lines + (last != b"\n")
                lines, read, last = lines + chunk.count(b"\n"), read + len(chunk), chunk[-1:]
            return math.ceil(lines * fs.size(path) / max(raw.tell(), 1))
    except Exception as exc:
        raise InputError(f"{shard.url}: unreadable or corrupt ({_short(exc)})") from None


def decompressed(raw: IO[bytes], url: str) -> IO[bytes]:
    lowered = url.lower()
    if lowered.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if lowered.endswith(".zst"):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return raw
