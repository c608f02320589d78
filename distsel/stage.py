"""The Stage interface: a named scoring step with declared resources and per-worker setup."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from distsel.storage import Store

if TYPE_CHECKING:
    from distsel.config import Config, StageConfig


@dataclass(frozen=True)
class Resources:
    """What each worker of a stage asks for, and how the pipeline feeds it."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 256
    pool_size: int = 1

    def with_overrides(self, overrides: StageConfig | None) -> Resources:
        if overrides is None:
            return self
        changes = {k: v for k, v in overrides.model_dump().items() if v is not None}
        return replace(self, **changes)


@dataclass
class StageContext:
    """What a stage's driver-side `prepare` may use."""

    config: Config
    store: Store
    parts: list[str]


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

    def prepare(self, context: StageContext) -> None:  # noqa: B027 - optional hook
        """Driver-side work before scoring (e.g. fitting on the whole pool); default: none.

        What it learns worth reporting goes in `self.summary`, which the manifest records.
        """

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Per-worker initialisation (load a model); default: none."""

    @abstractmethod
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray | pa.Array]:
        """Score a batch; return output columns with one value per row."""
