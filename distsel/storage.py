"""One output location (local folder or s3:// prefix) with atomic writes and done markers."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import IO, Any, TypeVar

import aiohttp
import botocore.exceptions
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from distsel.errors import InputError

log = logging.getLogger("distsel")
T = TypeVar("T")

#: An object-store call that cannot reach the server is tried again, after RETRY_PAUSE seconds and
#: then twice as long each time, until RETRY_SECONDS have passed since its first try. (Each try
#: includes botocore's own quick retries, a few seconds when nothing answers.)
RETRY_SECONDS = 20.0
RETRY_PAUSE = 1.0
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # could not connect, connect timeout
    botocore.exceptions.HTTPClientError,  # connection closed, read timeout
    aiohttp.ClientConnectionError,
    ConnectionError,
    TimeoutError,
)


class StorageError(InputError):
    """The output location stayed unreachable through every retry; the message names the URL.

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
        began, pause, attempts = time.monotonic(), RETRY_PAUSE, 0
        while True:
            attempts += 1
            try:
                return action()
            except UNREACHABLE_ERRORS as exc:
                where, elapsed = full_url(self.fs, self.path(relative)), time.monotonic() - began
                if elapsed + pause > self.retry_seconds:
                    raise StorageError(
                        f"{where}: storage unreachable; gave up after {attempts} attempts "
                        f"in {elapsed:.0f} s ({_short(exc)})"
                    ) from exc
                log.warning("%s: storage unreachable (%s); trying again", where, _short(exc))
                time.sleep(pause)
                pause *= 2

    def _read(self, relative: str, reader: Callable[[IO[bytes]], T]) -> T:
        def attempt() -> T:
            with self.fs.open(self.path(relative), "rb") as handle:
                return reader(handle)

        return self._retrying(relative, attempt)

    def check_writable(self) -> None:
        """Fail early, naming the location, when the output cannot be created or written."""
        probe = f"_state/.probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"")
            self.fs.rm(self.path(probe))
        except Exception as exc:
            raise InputError(f"output {self.url}: cannot write there ({_short(exc)})") from None

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

    def write_table(self, relative: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(relative, buffer.getvalue())

    def read_table(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        return self._read(relative, lambda handle: pq.read_table(handle, columns=columns))

    def read_schema(self, relative: str) -> pa.Schema:
        return self.read_metadata(relative).schema.to_arrow_schema()

    def read_metadata(self, relative: str) -> pq.FileMetaData:
        return self._read(relative, pq.read_metadata)

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(
            relative, json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        )

    def read_json(self, relative: str) -> Any:
        return self._read(relative, json.load)

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

    def remove(self, relative: str) -> None:
        if self.exists(relative):
            with contextlib.suppress(FileNotFoundError):
                self._retrying(relative, lambda: self.fs.rm(self.path(relative)))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # An endpoint URL may carry user:password@; the message never repeats it.
    return re.sub(r"//[^/@\s]*@", "//", text[0]) if text else type(exc).__name__
