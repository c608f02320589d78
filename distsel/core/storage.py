"""One output location (local folder or s3:// prefix) with atomic writes and done markers."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

import aiohttp
import botocore.exceptions
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from distsel.core import layout
from distsel.core.errors import (
    USERINFO,
    ConfigError,
    DistselError,
    InputError,
    credentials_in_url,
    short,
)

log = logging.getLogger("distsel")
T = TypeVar("T")

#: An object-store call that cannot reach the server is tried again, after RETRY_PAUSE seconds and
#: then twice as long each time, until RETRY_SECONDS have passed since its first try. (Each try
#: includes botocore's own quick retries, a few seconds when nothing answers.)
RETRY_SECONDS = 20.0
RETRY_PAUSE = 1.0
# Small files (markers, parquet footers) an object store is asked for at once: each call waits
# on the network, not the CPU.
READ_THREADS = 32
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # could not connect, connect timeout
    botocore.exceptions.HTTPClientError,  # connection closed, read timeout
    aiohttp.ClientConnectionError,
    ConnectionError,
    TimeoutError,
)
#: Characters that make an input path a glob (as corpus.list_shards reads it).
WILDCARDS = "*?["


class StorageError(InputError):
    """An object store stayed unreachable through every retry; the message names the URL.

    An InputError, like an output that cannot be written at all: the ingest tasks report those
    to the driver as one clear line instead of a Ray task traceback.
    """


def open_fs(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it (s3:// goes through s3fs)."""
    return url_to_fs(url, **(storage_options or {}))


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if not isinstance(fs, LocalFileSystem) else path


def is_remote(url: str) -> bool:
    """Whether `url` names an object store (or another remote filesystem), not a local path."""
    return "://" in url and not url.startswith("file://")


def retrying(where: str, action: Callable[[], T], retry_seconds: float = RETRY_SECONDS) -> T:
    """`action()`, tried again while an object store is unreachable; then a StorageError
    naming `where`. Other errors pass through at once."""
    began, pause, attempts = time.monotonic(), RETRY_PAUSE, 0
    while True:
        attempts += 1
        try:
            return action()
        except Exception as exc:
            reason = unreachable(exc)
            if reason is None:
                raise
            elapsed = time.monotonic() - began
            if elapsed + pause > retry_seconds:
                raise StorageError(
                    f"{where}: storage unreachable; gave up after {attempts} attempts "
                    f"in {elapsed:.0f} s ({short(reason, with_type=False)})"
                ) from exc
            log.warning(
                "%s: storage unreachable (%s); trying again", where, short(reason, with_type=False)
            )
            time.sleep(pause)
            pause *= 2


def unreachable(exc: BaseException) -> BaseException | None:
    """The error behind `exc` that says an object store could not be reached, if any (also
    when a reader reported it as another error); never for a StorageError, whose retries are
    spent."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and not isinstance(current, StorageError):
        if isinstance(current, UNREACHABLE_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def reads_inside(given: str, location: str) -> bool:
    """Whether reading the input `given` (a file, folder or glob) could read `location` or
    files under it. Local paths compare as real absolute paths; URLs by scheme and path
    components, so s3://b/data2 is not inside s3://b/data."""
    (scheme, pattern), (other, target) = _components(given), _components(location)
    if scheme != other:
        return False
    glob = any(char in given for char in WILDCARDS)
    for index, part in enumerate(pattern):
        if index == len(target):
            return glob  # a glob reaches below `location`; a folder or file lies below it
        if glob and "**" in part:
            return True
        if not (fnmatch.fnmatchcase(target[index], part) if glob else target[index] == part):
            return False
    return not glob or len(target) == len(pattern)


def _components(url: str) -> tuple[str, list[str]]:
    """A URL's scheme and path components; a local path's real path up to its first wildcard."""
    if is_remote(url):
        scheme, rest = USERINFO.sub("", url).split("://", 1)
        return scheme.lower(), [part for part in rest.split("/") if part]
    path = os.path.expanduser(url.removeprefix("file://"))
    literal = path[: min((path.index(c) for c in WILDCARDS if c in path), default=len(path))]
    head = literal if literal == path else literal[: literal.rfind(os.sep) + 1]
    parts = [*os.path.realpath(head or ".").split(os.sep), *path[len(head) :].split(os.sep)]
    return "file", [part for part in parts if part]


def threaded(function: Callable[[Any], T], items: Sequence[Any], threads: int) -> list[T]:
    """function(item) for each item, `threads` at a time (calls that wait on storage); in order."""
    if len(items) <= 1 or threads <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(function, items))


class Store:
    """Files under one root. Every write is atomic: a reader sees the whole file or nothing.

    Local files are written beside their target and renamed into place; object stores publish an
    object only when its single upload completes, so the bytes are uploaded in one call. A call
    the object store does not answer is tried again for up to `retry_seconds`, then fails with a
    StorageError naming the object's URL (an interrupted upload leaves no object behind).
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        problem = credentials_in_url(url)
        if problem:
            raise ConfigError(problem)
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.retry_seconds = retry_seconds
        self.fs, self.root = open_fs(self.url, self.storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (self.url, self.storage_options, self.retry_seconds))

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _retrying(self, relative: str, action: Callable[[], T]) -> T:
        """`action()`, tried again while the object store is unreachable; then a StorageError."""
        if self.is_local:
            return action()
        return retrying(full_url(self.fs, self.path(relative)), action, self.retry_seconds)

    def _read(self, relative: str, reader: Callable[[IO[bytes]], T]) -> T:
        def attempt() -> T:
            with self.fs.open(self.path(relative), "rb") as handle:
                return reader(handle)

        return self._retrying(relative, attempt)

    def check_writable(self) -> None:
        """Fail early, naming the location, when the output cannot be created or written."""
        probe = layout.probe(uuid.uuid4().hex)
        try:
            self.write_bytes(probe, b"")
            self.fs.rm(self.path(probe))
        except Exception as exc:
            raise InputError(
                f"output {self.url}: cannot write there ({short(exc, with_type=False)})"
            ) from None

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.path(relative)
        if not self.is_local:
            self._retrying(relative, lambda: self.fs.pipe_file(target, data))
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temporary = f"{os.path.dirname(target)}/.{os.path.basename(target)}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def write_table(self, relative: str, table: pa.Table) -> int:
        """Write `table` as Parquet; returns the file's size in bytes."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(relative, buffer.getvalue())
        return buffer.tell()

    def read_table(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        return self._read_parquet(relative, lambda handle: pq.read_table(handle, columns=columns))

    def read_row_group(self, relative: str, index: int) -> pa.Table:
        return self._read_parquet(
            relative, lambda handle: pq.ParquetFile(handle).read_row_group(index)
        )

    def _read_parquet(self, relative: str, reader: Callable[[IO[bytes]], T]) -> T:
        """`reader` on a Parquet file; a truncated or corrupt one is a DistselError naming it."""
        try:
            return self._read(relative, reader)
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, FileNotFoundError | StorageError) or unreachable(exc) is not None:
                raise
            raise DistselError(
                f"{full_url(self.fs, self.path(relative))}: unreadable Parquet, truncated or "
                f"corrupt ({short(exc)}); run again to rewrite it, or remove it"
            ) from None

    def read_schema(self, relative: str) -> pa.Schema:
        return self.read_metadata(relative).schema.to_arrow_schema()

    def read_metadata(self, relative: str) -> pq.FileMetaData:
        return self._read_parquet(relative, pq.read_metadata)

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(
            relative, json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        )

    def read_json(self, relative: str) -> Any:
        return self._read(relative, json.load)

    def read_json_or_none(self, relative: str) -> Any | None:
        """read_json, or None where the file does not exist (also one written since a listing
        was cached)."""
        self.fs.invalidate_cache(self.path(relative))
        try:
            return self.read_json(relative)
        except FileNotFoundError:
            return None

    def read_many(self, relatives: Sequence[str], reader: Callable[[str], T]) -> list[T]:
        """`reader(relative)` for each file, in order; on an object store READ_THREADS at a time
        (a driver checking thousands of per-part markers one by one waits on each round trip)."""
        return threaded(reader, relatives, 1 if self.is_local else READ_THREADS)

    def markers(self, relatives: Sequence[str]) -> list[Any | None]:
        """read_json_or_none of each file (read_many)."""
        return self.read_many(relatives, self.read_json_or_none)

    def markers_again(
        self, relatives: Sequence[str], found: Sequence[Any], changed: Sequence[str]
    ) -> list[Any | None]:
        """`found` (the markers of `relatives`, read earlier) with those of `changed` read
        again: after a step rewrote some markers, only those are asked for."""
        again = dict(zip(changed, self.markers(changed), strict=True))
        return [
            again.get(relative, marker) for relative, marker in zip(relatives, found, strict=True)
        ]

    def row_counts(self, relatives: Sequence[str]) -> list[int]:
        """The rows of each parquet file, from its footer (read_many)."""
        return self.read_many(relatives, lambda relative: self.read_metadata(relative).num_rows)

    def read_bytes(self, relative: str) -> bytes:
        return self._read(relative, lambda handle: handle.read())

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache(self.path(relative))
        return self._retrying(relative, lambda: self.fs.exists(self.path(relative)))

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Names (relative to `folder`) of the visible files in it, sorted."""

        def attempt() -> list[str]:
            try:
                return self.fs.ls(self.path(folder), detail=False, refresh=True)
            except FileNotFoundError:
                return []

        entries = self._retrying(folder, attempt)
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        return sorted(name for name in names if name.endswith(suffix) and not name.startswith("."))

    def sizes(self, folder: str) -> dict[str, int]:
        """Size in bytes of each visible file in `folder`, by name."""

        def attempt() -> list[dict[str, Any]]:
            try:
                return self.fs.ls(self.path(folder), detail=True, refresh=True)
            except FileNotFoundError:
                return []

        entries = self._retrying(folder, attempt)
        found = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("size") for e in entries}
        return {n: int(size) for n, size in found.items() if size is not None and n[0] != "."}

    def remove(self, relative: str) -> None:
        if self.exists(relative):
            with contextlib.suppress(FileNotFoundError):
                self._retrying(relative, lambda: self.fs.rm(self.path(relative)))

    def remove_many(self, relatives: Sequence[str]) -> None:
        """remove each file; on an object store READ_THREADS requests at a time."""
        threaded(self.remove, relatives, 1 if self.is_local else READ_THREADS)
