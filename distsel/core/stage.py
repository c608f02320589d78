"""The Stage interface: a named scoring step with declared resources and per-worker setup, and
`prepare_stage`, which saves what a stage fits and reuses it while its inputs stay the same."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from distsel.core import layout
from distsel.core.storage import Store

if TYPE_CHECKING:
    from pydantic import BaseModel

    from distsel.core.config import Config, StageConfig

log = logging.getLogger("distsel")


@dataclass(frozen=True)
class Resources:
    """What each worker of a stage asks for, and how the pipeline feeds it. `pool_size` None:
    as many actors as the cluster holds (`Executor.pool_size`)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 256
    pool_size: int | None = None

    def with_overrides(self, overrides: StageConfig | None) -> Resources:
        if overrides is None:
            return self
        return replace(self, **overrides.resources())


@dataclass
class StageContext:
    """What a stage's driver-side `prepare` may use. `left_out`: per part, the rows quarantined
    after ingest (duplicate ids, MinHash near duplicates), which fits leave out as selections
    do; they are still scored."""

    config: Config
    store: Store
    parts: list[str]
    left_out: dict[str, np.ndarray] = field(default_factory=dict)

    def left_out_of(self, parts: list[str] | None = None) -> list[np.ndarray | None]:
        """Per part (of `parts`, by default every one), its left-out rows or None."""
        return [self.left_out.get(part) for part in (self.parts if parts is None else parts)]


class Stage(ABC):
    """A scoring step. Built on the driver, shipped to each actor, where `setup` runs once.

    `__call__` gets a batch of documents (the columns in `input_columns`, plus the outputs of the
    stages named in `requires`) and returns one array per output column, row-aligned with it.
    """

    name: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]] = ("id", "text")
    output_columns: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    default_resources: ClassVar[Resources] = Resources()
    # The attributes that `prepare` fits: saved under _state/<name>/ with the inputs they came
    # from, and restored instead of fitting again while those stay the same (`prepare_stage`).
    fitted: ClassVar[tuple[str, ...]] = ()
    # Whether `__call__` also scores a batch of texts alone, tokenizing them itself, in place of
    # the ids of the tokenize stage it requires (as Quad's scorer on its draws).
    tokenizes_texts: ClassVar[bool] = False
    # Options of this stage, under `stages.<name>` beside its resources (Config.stage_options).
    options_class: ClassVar[type[BaseModel] | None] = None

    def __init__(self, resources: Resources | None = None) -> None:
        self.resources = resources or self.default_resources
        self.summary: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: Any, resources: Resources) -> Stage:
        """Build the stage for a run; stages with options read them from `config`."""
        return cls(resources)

    def fingerprint(self) -> dict[str, Any]:
        """What makes this stage's output what it is; a change invalidates finished parts."""
        return {"name": self.name}

    def fit_inputs(self, context: StageContext) -> dict[str, Any]:
        """What `prepare`'s result depends on besides the parts and the required stages'
        outputs (known before it runs); by default the fingerprint."""
        return self.fingerprint()

    def fitted_state(self) -> dict[str, Any]:
        """The `fitted` attributes: arrays, JSON values, and dicts of those."""
        return {name: getattr(self, name) for name in self.fitted}

    def load_fitted(self, state: dict[str, Any]) -> None:
        """Restore what `fitted_state` gave."""
        for name, value in state.items():
            setattr(self, name, value)

    def prepare(self, context: StageContext) -> None:  # noqa: B027 - optional hook
        """Driver-side work before scoring (e.g. fitting on the whole pool); default: none.

        What it learns worth reporting goes in `self.summary`, which the manifest records.
        """

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Per-worker initialisation (load a model); default: none."""

    def evaluation_inputs(self) -> dict[str, Any]:
        """What `prepare` computed that the evaluation of a selection would compute again, by
        keyword (distsel.app.evaluate.evaluation: `pool_counts`, the pool's hashed n-gram counts
        under the dsir options); default: nothing."""
        return {}

    @abstractmethod
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray | pa.Array]:
        """Score a batch; return output columns with one value per row."""


def prepare_stage(stage: Stage, context: StageContext) -> bool:
    """`stage.prepare(context)`, unless the output holds a fit of the same inputs (the stage's
    `fit_inputs`, the parts, the fingerprints of the stages it reads): then its fitted state and
    summary are restored. Returns whether the fit was reused.

    Saved as _state/<name>/fitted.npz (the arrays, read without pickle) and fitted.json (the
    inputs, the other values and the summary; written last, so it marks a complete save)."""
    if not stage.fitted:
        stage.prepare(context)
        return False
    store, folder = context.store, layout.state(stage.name)
    record, arrays_path = layout.fit_record(stage.name), layout.fit_arrays(stage.name)
    inputs = fit_key(stage, context)
    if store.exists(record):
        saved = store.read_json(record)
        if saved.get("inputs") == inputs and store.exists(arrays_path):
            data = io.BytesIO(store.read_bytes(arrays_path))
            with np.load(data, allow_pickle=False) as arrays:
                stage.load_fitted(_decode(saved["fitted"], dict(arrays.items())))
            stage.summary = saved["summary"]
            log.info("%s: reusing its fit from %s", stage.name, folder)
            return True
    stage.prepare(context)
    arrays: dict[str, np.ndarray] = {}
    fitted = _encode(stage.fitted_state(), arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    store.write_bytes(arrays_path, buffer.getvalue())
    saved = {"inputs": inputs, "fitted": fitted, "summary": stage.summary}
    store.write_json(record, saved)
    return False


def digest(value: Any) -> str:
    """16 hex digits that identify a JSON value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def fit_key(stage: Stage, context: StageContext) -> Any:
    """What a stage's fit depends on: its `fit_inputs`, the parts, the fingerprints of the
    stages it reads, and for a fit on the target examples their files' versions."""
    required = {}
    for name in stage.requires:
        path = layout.fingerprint(name)
        required[name] = context.store.read_json(path) if context.store.exists(path) else None
    inputs = stage.fit_inputs(context)
    key = {"stage": inputs, "parts": context.parts, "requires": required}
    if any(len(rows) for rows in context.left_out.values()):
        rows = hashlib.blake2b(digest_size=8)
        for part in sorted(context.left_out):
            rows.update(part.encode() + np.asarray(context.left_out[part], np.int64).tobytes())
        key["left_out"] = rows.hexdigest()
    if "target" in inputs and context.config.target.paths:
        from distsel.core.corpus import target_versions

        key["target_files"] = target_versions(context.config.target)  # their contents
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON with each array replaced by {"array": its name in `arrays`}."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"array": name}
    if isinstance(value, dict):
        return {"dict": {str(key): _encode(item, arrays) for key, item in value.items()}}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict) and "array" in value:
        return arrays[value["array"]]
    if isinstance(value, dict):
        return {key: _decode(item, arrays) for key, item in value["dict"].items()}
    return value
