"""One output location (local folder or s3:// prefix) with atomic writes and done markers."""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from distsel.errors import InputError


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
    object only when its single upload completes, so the bytes are uploaded in one call.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = open_fs(self.url, self.storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (self.url, self.storage_options))

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

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
            self.fs.pipe_file(target, data)
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
        with self.fs.open(self.path(relative), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def read_schema(self, relative: str) -> pa.Schema:
        return self.read_metadata(relative).schema.to_arrow_schema()

    def read_metadata(self, relative: str) -> pq.FileMetaData:
        with self.fs.open(self.path(relative), "rb") as handle:
            return pq.read_metadata(handle)

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(
            relative, json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        )

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as handle:
            return json.load(handle)

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache(self.path(relative))
        return self.fs.exists(self.path(relative))

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Names (relative to `folder`) of the visible files in it, sorted."""
        try:
            entries = self.fs.ls(self.path(folder), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        return sorted(name for name in names if name.endswith(suffix) and not name.startswith("."))

    def remove(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
