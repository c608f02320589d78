"""The pool a selector chooses from: a few small columns per document, gathered part by part."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from distsel.core import layout
from distsel.core.config import Config
from distsel.core.executor import current
from distsel.core.storage import Store

MISSING_GROUP = "(none)"


@dataclass
class Pool:
    """Column arrays over every accepted document, in part order then row order.

    Texts stay in the parts: a document is addressed by (`part_index`, `row_index`).
    """

    parts: list[str]
    part_index: np.ndarray
    row_index: np.ndarray
    tokens: np.ndarray
    random_key: np.ndarray
    categories: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    # the score columns the selector read (select.score_column), in the order it read them
    ranked_by: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def counts(self, name: str | None, chosen: np.ndarray) -> dict[str, Any] | None:
        """Documents per value of the passed-through field `name`, in the pool and chosen."""
        if name is None or name not in self.categories:
            return None
        values = self.categories[name]
        return {
            "field": name,
            "pool": dict(sorted(Counter(values.tolist()).items())),
            "selected": dict(sorted(Counter(values[chosen].tolist()).items())),
        }


def random_keys(ids: list[str], seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per document id, independent of order and sharding."""
    salt = f"{seed}\0".encode()
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(salt + i.encode(), digest_size=8).digest(), "little")
            for i in ids
        ],
        dtype=np.uint64,
    )


def _part_columns(
    store: Store, part: str, stages: list[str], fields: list[str], seed: int, dropped: np.ndarray
) -> dict:
    present = [name for name in fields if name in store.read_schema(layout.docs(part)).names]
    docs = store.read_table(layout.docs(part), columns=["id", "tokens_approx", *present])
    rows = np.setdiff1d(np.arange(docs.num_rows, dtype=np.int64), dropped)
    docs = docs.take(rows)
    columns: dict[str, Any] = {
        "rows": rows,
        "tokens": docs.column("tokens_approx").to_numpy(),
        "random_key": random_keys(docs.column("id").to_pylist(), seed),
        "categories": {name: _category(docs, name) for name in fields},
    }
    scores = {}
    for stage in stages:
        table = store.read_table(layout.scores(stage, part)).take(rows)
        for name in table.column_names:
            if name != "id" and _is_numeric(table.schema.field(name).type):
                scores[name] = table.column(name).to_numpy()
    columns["scores"] = scores
    return columns


def _category(docs: pa.Table, name: str) -> np.ndarray:
    values = docs.column(name).to_pylist() if name in docs.column_names else [None] * len(docs)
    return np.array([MISSING_GROUP if v is None else str(v) for v in values], dtype=object)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def gather_pool(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    dropped: dict[str, np.ndarray] | None = None,
) -> Pool:
    """Read the selection columns of every part in parallel and stack them, leaving out the
    `dropped` rows of each part (quarantined after ingest, such as duplicate ids)."""
    wanted = (config.input.group_field, config.input.label_field, config.mixture.group_field)
    fields = list(dict.fromkeys(f for f in wanted if f))
    none = np.zeros(0, dtype=np.int64)
    calls = [
        (store, part, stages, fields, config.seed, (dropped or {}).get(part, none))
        for part in parts
    ]
    gathered = current().map(_part_columns, calls)
    sizes = [len(columns["tokens"]) for columns in gathered]
    score_names = set().union(*(columns["scores"] for columns in gathered)) if gathered else set()
    return Pool(
        parts=list(parts),
        part_index=np.repeat(np.arange(len(parts), dtype=np.int32), sizes),
        row_index=_stack(gathered, "rows", np.int64),
        tokens=_stack(gathered, "tokens", np.int64),
        random_key=_stack(gathered, "random_key", np.uint64),
        categories={
            name: np.concatenate([columns["categories"][name] for columns in gathered])
            for name in fields
        },
        scores={
            name: np.concatenate([columns["scores"][name] for columns in gathered])
            for name in sorted(score_names)
        },
    )


def _stack(gathered: list[dict], name: str, dtype: Any) -> np.ndarray:
    arrays = [columns[name] for columns in gathered]
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)


def _part_texts(store: Store, part: str, rows: np.ndarray) -> list[str]:
    texts = store.read_table(layout.docs(part), columns=["text"]).column("text")
    return texts.take(rows).to_pylist()


def fetch_texts(store: Store, pool: Pool, groups: list[np.ndarray]) -> list[list[str]]:
    """The texts of a few groups of pool documents, read part by part in parallel."""
    flat = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    parts = pool.part_index[flat]
    texts: list[str | None] = [None] * len(flat)
    calls, places = [], []
    for part in np.unique(parts):
        positions = np.flatnonzero(parts == part)
        calls.append((store, pool.parts[part], pool.row_index[flat[positions]]))
        places.append(positions)
    # num_cpus=0: light reads that must run while influence actors hold every CPU
    found = current().map(_part_texts, calls, num_cpus=0)
    for positions, part_texts in zip(places, found, strict=True):
        for position, text in zip(positions, part_texts, strict=True):
            texts[position] = text
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return [texts[bounds[i] : bounds[i + 1]] for i in range(len(groups))]


def _part_embeddings(store: Store, part: str, rows: np.ndarray) -> np.ndarray:
    from distsel.core.vectors import embedding_matrix

    path = layout.scores("embed", part)
    column = store.read_table(path, columns=["embedding"]).column("embedding")
    return embedding_matrix(column.take(rows)).astype(np.float32)


def gather_embeddings(store: Store, pool: Pool) -> np.ndarray:
    """(len(pool), d) float32: each pool document's embedding from scores/embed, read part by part
    in parallel."""
    calls = [
        (store, part, pool.row_index[pool.part_index == index])
        for index, part in enumerate(pool.parts)
    ]
    found = current().map(_part_embeddings, calls, num_cpus=0)
    return np.concatenate(found) if found else np.zeros((0, 0), np.float32)
