"""Quad's saved bandit state: what a round changes, written after every round (the output
layout's _state/quad/) so that a killed run resumes, and the fingerprint that ties a saved
state to the very run it belongs to."""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from distsel.core import layout
from distsel.core.config import Budget
from distsel.core.storage import Store
from distsel.methods.quad.documents import QuadDocuments
from distsel.methods.quad.options import QuadOptions


@dataclass
class BanditState:
    """Everything a round changes; saved after every round so a killed run resumes."""

    fingerprint: dict[str, Any]
    round: int = 0
    pulls: list[int] = field(default_factory=list)
    reward_sums: list[float] = field(default_factory=list)
    cursors: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    evaluated: int = 0
    influence_sum: float = 0.0
    influence_sq_sum: float = 0.0
    selected_tokens: int = 0
    done: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    scored_rows: list[int] = field(default_factory=list)
    scored_values: list[float] = field(default_factory=list)
    filled: int = 0


def fingerprint(
    options: QuadOptions, budget: Budget, seed: int, documents: QuadDocuments, arms: int
) -> dict[str, Any]:
    """What a saved state must match to be resumed: the options, budget and seed, and the pool
    (its size, its clusters and its documents)."""
    return {
        "options": options.model_dump(),
        "budget": budget.model_dump(),
        "seed": seed,
        "docs": len(documents),
        "clusters_checksum": int(documents.arms()[:arms].dot(np.arange(arms) + 1)),
        # the pool's documents (their random keys follow from their ids), in any order
        "pool": documents.key_xor(),
    }


def save_state(store: Store, state: BanditState, selected: Sequence[int]) -> None:
    """Write the selection so far (.npy) and the state (JSON)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(selected, dtype=np.int64), allow_pickle=False)
    store.write_bytes(layout.QUAD_SELECTED, buffer.getvalue())
    store.write_bytes(layout.QUAD_STATE, json.dumps(asdict(state)).encode())


def load_state(store: Store, expected: dict[str, Any]) -> tuple[BanditState, array] | None:
    """The saved state and selection when there is one whose fingerprint is `expected`."""
    if not store.exists(layout.QUAD_STATE):
        return None
    saved = BanditState(**store.read_json(layout.QUAD_STATE))
    if saved.fingerprint != expected:
        return None
    with store.fs.open(store.path(layout.QUAD_SELECTED), "rb") as handle:
        selected = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    return saved, array("q", selected.astype(np.int64).tobytes())
