"""The pool a selector chooses from: a few small columns per document, gathered part by part.

A selector that ranks (distsel.core.candidates) is handed only each part's best-ranked documents;
every other selector gets every document. Either way `Pool.totals` describes the whole pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable
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
class PoolTotals:
    """The whole pool's size, whichever of its documents a `Pool` holds: accepted documents,
    their approximate tokens, and documents per value of each passed-through field."""

    docs: int = 0
    tokens: int = 0
    categories: dict[str, Counter] = field(default_factory=dict)

    def add(self, other: PoolTotals) -> None:
        self.docs += other.docs
        self.tokens += other.tokens
        for name, counts in other.categories.items():
            self.categories.setdefault(name, Counter()).update(counts)


@dataclass
class Pool:
    """Column arrays over the accepted documents a selector is handed (every one, or each part's
    best-ranked ones: distsel.core.candidates), in part order then row order; `totals` counts the
    whole pool.

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
    # the whole pool; by default, the documents held
    totals: PoolTotals | None = None
    # per part: the rows quarantined after ingest (duplicate ids), which no selection sees
    dropped: dict[str, np.ndarray] = field(default_factory=dict)
    # per part: its accepted documents, held or not (None: as many as are held)
    part_docs: np.ndarray | None = None
    # the HeadPlan the documents were gathered by (distsel.core.candidates), with the pool-wide
    # statistics its selector computed first; None: gathered without one
    plan: Any = None

    def __post_init__(self) -> None:
        if self.totals is None:
            self.totals = PoolTotals(
                docs=len(self.tokens),
                tokens=int(np.sum(self.tokens)),
                categories={n: Counter(v.tolist()) for n, v in self.categories.items()},
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def accepted_rows(self) -> list[np.ndarray | None]:
        """Per part, the row numbers of its accepted documents, or None for every row (a part
        without quarantined rows)."""
        sizes = self.part_docs
        if sizes is None:
            sizes = np.bincount(self.part_index, minlength=len(self.parts))
        rows: list[np.ndarray | None] = []
        for index, part in enumerate(self.parts):
            dropped = self.dropped.get(part)
            if dropped is None or not len(dropped):
                rows.append(None)
                continue
            every = np.arange(int(sizes[index]) + len(dropped), dtype=np.int64)
            rows.append(np.setdiff1d(every, dropped))
        return rows

    @property
    def complete(self) -> bool:
        """Whether every document of the pool is held, not only a selector's candidates."""
        return len(self) == self.totals.docs

    def counts(self, name: str | None, chosen: np.ndarray) -> dict[str, Any] | None:
        """Documents per value of the passed-through field `name`, in the pool and chosen."""
        if name is None or name not in self.categories:
            return None
        return {
            "field": name,
            "pool": dict(sorted(self.totals.categories[name].items())),
            "selected": dict(sorted(Counter(self.categories[name][chosen].tolist()).items())),
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


@dataclass
class Head:
    """The documents a part sends for a walk of one or more orders (distsel.core.candidates):
    `rows` index the part's own Pool, `lengths[j]` is how many of order j's first documents it
    sends, and `left_out_min_tokens[j]` the fewest tokens of one of the others (inf: none)."""

    rows: np.ndarray
    lengths: np.ndarray
    left_out_min_tokens: np.ndarray


# Which of a part's documents a selector is handed: a Head, or None for every one.
Keep = Callable[[Pool], "Head | None"]


@dataclass
class PartColumns:
    """One part's gathered rows: `pool` holds the kept ones (its `totals` count all of them),
    and per order walked, `left_out_min_tokens`, the fewest tokens of a document of that order
    left out (None: the part sent every document), and `head_lengths`, how many of the order's
    first documents it sent (None: every one of its documents in the order)."""

    pool: Pool
    left_out_min_tokens: np.ndarray | None
    head_lengths: np.ndarray | None = None


def part_columns(
    store: Store,
    part: str,
    stages: list[str],
    fields: list[str],
    seed: int,
    dropped: np.ndarray,
    keep: Keep | None = None,
) -> PartColumns:
    """The selection columns of one part's accepted rows (all but `dropped`), then only the rows
    `keep` picks from them."""
    rows, docs = _accepted_docs(store, part, ["id", "tokens_approx"], fields, dropped)
    scores = {}
    for stage in stages:
        table = store.read_table(layout.scores(stage, part)).take(rows)
        for name in table.column_names:
            if name != "id" and _is_numeric(table.schema.field(name).type):
                scores[name] = table.column(name).to_numpy()
    categories = {name: category_values(docs, name) for name in fields}
    tokens = docs.column("tokens_approx").to_numpy().astype(np.int64)
    pool = Pool(
        parts=[part],
        part_index=np.zeros(len(rows), dtype=np.int32),
        row_index=rows,
        tokens=tokens,
        random_key=random_keys(docs.column("id").to_pylist(), seed),
        categories=categories,
        scores=scores,
    )
    head = None if keep is None else keep(pool)
    if head is None:
        return PartColumns(pool, None)
    kept = np.sort(np.asarray(head.rows, dtype=np.int64))
    return PartColumns(take(pool, kept), head.left_out_min_tokens, head.lengths)


def _accepted_docs(
    store: Store, part: str, columns: list[str], fields: list[str], dropped: np.ndarray
) -> tuple[np.ndarray, pa.Table]:
    """The row numbers of a part's accepted documents (all but `dropped`) and their `columns`
    and passed-through `fields` (those the part has)."""
    present = [name for name in fields if name in store.read_schema(layout.docs(part)).names]
    docs = store.read_table(layout.docs(part), columns=[*columns, *present])
    rows = np.setdiff1d(np.arange(docs.num_rows, dtype=np.int64), dropped)
    return rows, docs.take(rows)


def _part_totals(store: Store, part: str, fields: list[str], dropped: np.ndarray) -> PoolTotals:
    rows, docs = _accepted_docs(store, part, ["tokens_approx"], fields, dropped)
    return PoolTotals(
        docs=len(rows),
        tokens=int(docs.column("tokens_approx").to_numpy().sum()),
        categories={name: Counter(category_values(docs, name).tolist()) for name in fields},
    )


def pool_totals(
    store: Store, parts: list[str], config: Config, dropped: dict[str, np.ndarray] | None = None
) -> PoolTotals:
    """The whole pool's `PoolTotals`, counted part by part in parallel (no document gathered)."""
    fields = selection_fields(config)
    none = np.zeros(0, dtype=np.int64)
    calls = [(store, part, fields, (dropped or {}).get(part, none)) for part in parts]
    totals = PoolTotals(categories={name: Counter() for name in fields})
    for part in current().map(_part_totals, calls):
        totals.add(part)
    return totals


def take(pool: Pool, indices: np.ndarray) -> Pool:
    """The pool documents `indices` (in that order), with the same parts and totals."""
    return dataclasses.replace(
        pool,
        part_index=pool.part_index[indices],
        row_index=pool.row_index[indices],
        tokens=pool.tokens[indices],
        random_key=pool.random_key[indices],
        categories={name: values[indices] for name, values in pool.categories.items()},
        scores={name: values[indices] for name, values in pool.scores.items()},
        ranked_by=[],
        totals=pool.totals,
    )


def category_values(docs: pa.Table, name: str) -> np.ndarray:
    """Field `name` of each document as a string (MISSING_GROUP where null or absent), every
    equal value one shared object: dictionary-encoded, a document costs one 8-byte reference,
    also on the driver (pickling keeps the sharing)."""
    if name not in docs.column_names:
        return np.full(len(docs), MISSING_GROUP, dtype=object)
    column = docs.column(name).combine_chunks()
    try:
        encoded = column.dictionary_encode()
    except pa.ArrowNotImplementedError:  # a nested type: one string per document
        values = column.to_pylist()
        return np.array([MISSING_GROUP if v is None else str(v) for v in values], dtype=object)
    labels = [str(value) for value in encoded.dictionary.to_pylist()] + [MISSING_GROUP]
    codes = encoded.indices.fill_null(len(labels) - 1).to_numpy(zero_copy_only=False)
    return np.array(labels, dtype=object)[codes]


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def selection_fields(config: Config) -> list[str]:
    """The passed-through fields a selection reads: groups, labels, mixture groups."""
    wanted = (config.input.group_field, config.input.label_field, config.mixture.group_field)
    return list(dict.fromkeys(f for f in wanted if f))


def gather_parts(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    dropped: dict[str, np.ndarray] | None = None,
    keeps: list[Keep | None] | None = None,
) -> list[PartColumns]:
    """`part_columns` of every part (with its `keeps` entry), one task per part in parallel."""
    none = np.zeros(0, dtype=np.int64)
    fields = selection_fields(config)
    keeps = keeps or [None] * len(parts)
    calls = [
        (store, part, stages, fields, config.seed, (dropped or {}).get(part, none), keep)
        for part, keep in zip(parts, keeps, strict=True)
    ]
    return current().map(part_columns, calls)


def stack(parts: list[str], gathered: list[PartColumns], fields: list[str]) -> Pool:
    """One Pool of the parts' gathered rows, in part order, with the parts' totals summed."""
    totals = PoolTotals(categories={name: Counter() for name in fields})
    for columns in gathered:
        totals.add(columns.pool.totals)
    pools = [columns.pool for columns in gathered]
    sizes = [len(pool) for pool in pools]
    score_names = sorted(set().union(*(pool.scores for pool in pools))) if pools else []
    return Pool(
        parts=list(parts),
        part_index=np.repeat(np.arange(len(parts), dtype=np.int32), sizes),
        row_index=_stack([p.row_index for p in pools], np.int64),
        tokens=_stack([p.tokens for p in pools], np.int64),
        random_key=_stack([p.random_key for p in pools], np.uint64),
        categories={
            name: np.concatenate([p.categories[name] for p in pools]).astype(object)
            if pools
            else np.zeros(0, dtype=object)
            for name in fields
        },
        scores={name: np.concatenate([p.scores[name] for p in pools]) for name in score_names},
        totals=totals,
        part_docs=np.array([columns.pool.totals.docs for columns in gathered], dtype=np.int64),
    )


def gather_pool(
    store: Store,
    parts: list[str],
    stages: list[str],
    config: Config,
    dropped: dict[str, np.ndarray] | None = None,
) -> Pool:
    """Every accepted document's selection columns, read part by part in parallel, leaving out
    the `dropped` rows of each part (quarantined after ingest, such as duplicate ids)."""
    gathered = gather_parts(store, parts, stages, config, dropped)
    pool = stack(parts, gathered, selection_fields(config))
    pool.dropped = dict(dropped or {})
    return pool


def _stack(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
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


def part_embeddings(store: Store, part: str, rows: np.ndarray) -> np.ndarray:
    from distsel.core.vectors import embedding_matrix

    path = layout.scores("embed", part)
    column = store.read_table(path, columns=["embedding"]).column("embedding")
    return embedding_matrix(column.take(rows)).astype(np.float32)
