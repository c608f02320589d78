"""distsel from Python: `select` documents from a Ray Dataset, paths or dicts and get a Dataset
back; `run` a configuration and get its result.

    import distsel, ray
    docs = ray.data.from_items([{"text": ..., "source": ...}, ...])
    chosen = distsel.select(docs, method="dsir", target=["an example", ...], budget={"docs": 10})
    chosen.take(3)   # their own fields, `id` and the score the method ranked by

Both run on the active executor (a LocalExecutor made `active()`), else on the Ray that is
initialised, else on a local Ray started here, as `distsel run` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from distsel.core import layout
from distsel.core.config import Config, load_config, parse_config
from distsel.core.errors import ConfigError
from distsel.core.executor import is_dataset, read_dataset
from distsel.core.storage import Store, is_remote

Dataset = Any  # a ray.data.Dataset (Ray is imported by distsel.core.executor alone)

#: Keys of `select(**options)` that are sections of the configuration; any other key is an
#: option of the method (select.<method>.<key>).
SECTIONS = ("input", "output", "dedup", "stages", "proxy", "embed", "mixture", "ray", "seed")


@dataclasses.dataclass
class Result:
    """A finished run: its manifest and where its output lies."""

    manifest: dict[str, Any]
    output: str

    @property
    def selected(self) -> str:
        return f"{self.output.rstrip('/')}/selected"


def run(
    config: Config | dict[str, Any] | str | Path,
    phase: str = "all",
    *,
    address: str | None = None,
    on_output: Callable[[], None] | None = None,
) -> Result:
    """Run a configuration (a Config, a mapping as in the YAML file, or the file's path), or
    one `phase` of it, on the Ray at `address` (default: config.ray.address, RAY_ADDRESS, or a
    local one); `on_output` is called once the inputs are found, before the first write."""
    from distsel.app import pipeline

    if isinstance(config, str | Path):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    summary = pipeline.run(config, address=address, phase=phase, on_output=on_output)
    return Result(summary, config.output.path)


def select(
    data: Dataset | Iterable[dict[str, Any]] | list[str] | str,
    *,
    method: str,
    budget: dict[str, Any],
    target: Any = None,
    output: str | None = None,
    text_field: str = "text",
    **options: Any,
) -> Dataset:
    """The documents of `data` that `method` selects within `budget`, as a Ray Dataset with
    their own fields, `id` and the score the method ranked by.

    `data`: a Ray Dataset, input paths (files, folders, globs, s3://), or an iterable of dicts.
    `target`: target examples as texts, dicts, paths or a Dataset. `options`: the method's
    options (select.<method>.*), or whole configuration sections (stages=, proxy=, seed=, ...).
    Without `output` the work happens in a temporary folder, removed once the result is read
    into Ray's object store; with it, the output stays there and a call repeated after an
    interruption resumes (the documents it was given are kept under OUTPUT/_input/)."""
    with _work_folder(output) as folder:
        raw: dict[str, Any] = {
            "input": {"paths": _input_paths(data, folder, text_field), "text_field": text_field},
            "output": {"path": folder},
            "select": {"method": method, "budget": budget},
        }
        if target is not None:
            raw["target"] = {"paths": _target_paths(target, folder, text_field)}
            raw["target"]["text_field"] = text_field
        for key, value in options.items():
            if key in SECTIONS:
                raw[key] = _merged(raw.get(key), value)
            else:
                raw["select"].setdefault(method, {})[key] = value
        result = run(parse_config(raw, "distsel.select"))
        chosen = _read_selected(result)
        return chosen if output else chosen.materialize()


@contextlib.contextmanager
def _work_folder(output: str | None) -> Iterator[str]:
    if output:
        yield output
        return
    folder = tempfile.mkdtemp(prefix="distsel-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _merged(given: Any, value: Any) -> Any:
    if isinstance(given, dict) and isinstance(value, dict):
        return {**given, **value}
    return value


def _input_paths(data: Any, folder: str, text_field: str) -> list[str]:
    if isinstance(data, str | Path):
        return [str(data)]
    if is_dataset(data):
        return [_staged_dataset(data, folder, "docs")]
    items = list(data)
    if items and all(isinstance(item, str | Path) for item in items):
        return [str(item) for item in items]
    if not all(isinstance(item, dict) for item in items):
        raise ConfigError("distsel.select: data must be a Ray Dataset, paths or dicts")
    return [_staged_rows(items, folder, "docs")]


def _target_paths(target: Any, folder: str, text_field: str) -> list[str]:
    if isinstance(target, Path) or (isinstance(target, str) and _is_path(target)):
        return [str(target)]
    if isinstance(target, str):
        target = [target]
    if is_dataset(target):
        return [_staged_dataset(target, folder, "target")]
    items = list(target)
    if items and all(isinstance(i, Path) or (isinstance(i, str) and _is_path(i)) for i in items):
        return [str(item) for item in items]
    rows = [item if isinstance(item, dict) else {text_field: item} for item in items]
    if not rows or not all(isinstance(row.get(text_field), str) for row in rows):
        raise ConfigError(f"distsel.select: target must be texts, or dicts with '{text_field}'")
    return [_staged_rows(rows, folder, "target")]


def _is_path(text: str) -> bool:
    if is_remote(text):
        return True
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a long text, or one with a NUL, is no file name
        return False


def _staged_rows(rows: list[dict[str, Any]], folder: str, name: str) -> str:
    """`rows` as OUTPUT/_input/<name>.jsonl, written once (kept on a repeated call)."""
    store = Store(folder)
    relative = layout.staged(f"{name}.jsonl")
    if not store.exists(relative):
        lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        store.write_bytes(relative, lines.encode())
    return store.path(relative) if store.is_local else f"{store.url}/{relative}"


def _staged_dataset(dataset: Dataset, folder: str, name: str) -> str:
    """A Dataset written as Parquet under OUTPUT/_input/<name>/ (by Ray Data, in parallel),
    once: a repeated call reads the files already there."""
    store = Store(folder)
    relative = layout.staged(name)
    target = store.path(relative) if store.is_local else f"{store.url}/{relative}"
    if not store.list(relative, ".parquet"):
        dataset.write_parquet(target, filesystem=_arrow_fs(store))
    return target


def _arrow_fs(store: Store) -> Any:
    if store.is_local:
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(store.fs))


def _read_selected(result: Result) -> Dataset:
    store = Store(result.output)
    files = store.list(layout.SELECTED)
    paths = [store.path(layout.selected(name)) for name in files]
    return read_dataset(
        paths,
        _arrow_fs(store),
        json_lines=not files[0].endswith(".parquet") if files else False,
    )
