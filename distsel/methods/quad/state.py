"""Quad's saved bandit state: what a round changes, written after every round (the output
layout's _state/quad/) so that a killed run resumes, and the fingerprint that ties a saved
state to the very run it belongs to.

A checkpoint writes what the round changed, not the whole run: the state without its growing
lists (state.json), and an .npz of what the selection and the scored draws gained since the
checkpoint before (saves/<n>.npz). state.json is written last and counts the saves that
belong to it; a fresh run writes its own before any save, so an earlier run's saves are never
read."""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
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
    saves: int = 0


GROWING = ("scored_rows", "scored_values")  # BanditState's lists kept in the saves
# In the fingerprint: a state written in another layout (before saves/) is not resumed.
CHECKPOINT_LAYOUT = 2


def fingerprint(
    options: QuadOptions, budget: Budget, seed: int, documents: QuadDocuments, arms: int
) -> dict[str, Any]:
    """What a saved state must match to be resumed: the options, budget and seed, and the pool
    (its size, its clusters and its documents)."""
    return {
        "layout": CHECKPOINT_LAYOUT,
        "options": options.model_dump(),
        "budget": budget.model_dump(),
        "seed": seed,
        "docs": len(documents),
        "clusters_checksum": int(documents.arms()[:arms].dot(np.arange(arms) + 1)),
        # the pool's documents (their random keys follow from their ids), in any order
        "pool": documents.key_xor(),
    }


class Checkpoints:
    """A run's checkpoints in `store` (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.saved = {"selected": 0, **dict.fromkeys(GROWING, 0)}  # lengths already written

    def start(self, state: BanditState) -> None:
        """Begin a fresh run: its state.json replaces an earlier run's, then that run's saves go."""
        self.store.write_bytes(layout.QUAD_STATE, _state_json(state))
        names = self.store.list(layout.QUAD_SAVES, ".npz")
        self.store.remove_many([f"{layout.QUAD_SAVES}/{name}" for name in names])

    def save(self, state: BanditState, selected: Sequence[int]) -> None:
        """Write what the selection and the scored draws gained, then the state."""
        grown = {"selected": selected, **{name: getattr(state, name) for name in GROWING}}
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(v[self.saved[name] :]) for name, v in grown.items()})
        self.store.write_bytes(layout.quad_save(state.saves), buffer.getvalue())
        state.saves += 1
        self.store.write_bytes(layout.QUAD_STATE, _state_json(state))
        self.saved = {name: len(values) for name, values in grown.items()}

    def load(self, expected: dict[str, Any]) -> tuple[BanditState, array] | None:
        """The saved state and selection when there is one whose fingerprint is `expected`."""
        if not self.store.exists(layout.QUAD_STATE):
            return None
        saved = BanditState(**self.store.read_json(layout.QUAD_STATE))
        if saved.fingerprint != expected:
            return None
        selected = array("q")
        saves = [layout.quad_save(index) for index in range(saved.saves)]
        for data in self.store.read_many(saves, self.store.read_bytes):
            with np.load(io.BytesIO(data), allow_pickle=False) as gained:
                selected.frombytes(gained["selected"].astype(np.int64).tobytes())
                for name in GROWING:
                    getattr(saved, name).extend(gained[name].tolist())
        self.saved = {"selected": len(selected), **{n: len(getattr(saved, n)) for n in GROWING}}
        return saved, selected


def _state_json(state: BanditState) -> bytes:
    kept = {f.name: getattr(state, f.name) for f in fields(state) if f.name not in GROWING}
    return json.dumps(kept).encode()
