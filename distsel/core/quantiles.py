"""Exact order statistics and counts of one score column spread over parts, without gathering it.

A float64's 64 bits, mapped so that unsigned order is numeric order (non-negative values get the
sign bit set, negative ones have every bit inverted), are read 16 at a time. Each round, every
part counts its values that share a wanted rank's known prefix by their next 16 bits; the counts
are added where they are made (map_reduce), and the rank's prefix narrows to the bucket that
holds it. After four rounds the prefix is the value itself, with the counts of values below it
and equal to it. The driver holds 65,536 counts per wanted rank, whatever the pool's size.
NaN values are left out of every rank and count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from distsel.core import layout
from distsel.core.executor import current
from distsel.core.pool import Pool
from distsel.core.registry import stage_for_column
from distsel.core.storage import Store

T = TypeVar("T")
DIGIT_BITS = 16
SIGN = np.uint64(1 << 63)


class Column:
    """One numeric score column, read one part at a time where the part is."""

    parts: list[str]
    column: str

    def values(self, index: int) -> np.ndarray:
        """Part `index`'s values, in row order, NaN included."""
        raise NotImplementedError

    def tokens(self, index: int) -> np.ndarray:
        """Part `index`'s documents' approximate tokens, in row order."""
        raise NotImplementedError

    def map(self, fn: Callable[..., T], *args: Any) -> list[T]:
        """fn(self, part index, *args) for every part, in parallel."""
        return current().map(fn, self._calls(args))

    def map_reduce(self, fn: Callable[..., T], combine: Callable[..., T], *args: Any) -> T:
        """combine over fn(self, part index, *args) for every part (one part at least), added
        where the results are made."""
        return current().map_reduce(fn, self._calls(args), combine)

    def _calls(self, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [(self, index, *args) for index in range(len(self.parts))]


@dataclass(frozen=True)
class ColumnParts(Column):
    """A score column of the accepted documents of `parts` (each part's `dropped` rows,
    quarantined after ingest, left out), as the stage that writes it stored it."""

    store: Store
    parts: list[str]
    column: str
    dropped: dict[str, np.ndarray] = field(default_factory=dict)

    def values(self, index: int) -> np.ndarray:
        path = layout.scores(stage_for_column(self.column), self.parts[index])
        return self._accepted(index, path, self.column).astype(np.float64)

    def tokens(self, index: int) -> np.ndarray:
        path = layout.docs(self.parts[index])
        return self._accepted(index, path, "tokens_approx").astype(np.int64)

    def _accepted(self, index: int, path: str, column: str) -> np.ndarray:
        values = self.store.read_table(path, columns=[column]).column(column).to_numpy()
        dropped = self.dropped.get(self.parts[index])
        return values if dropped is None or not len(dropped) else np.delete(values, dropped)


@dataclass(frozen=True)
class PoolColumn(Column):
    """A score column of a pool held in memory, part by part."""

    pool: Pool
    column: str

    @property
    def parts(self) -> list[str]:  # type: ignore[override]
        return self.pool.parts

    def values(self, index: int) -> np.ndarray:
        scores = np.asarray(self.pool.scores[self.column], dtype=np.float64)
        return scores[self.pool.part_index == index]

    def tokens(self, index: int) -> np.ndarray:
        return self.pool.tokens[self.pool.part_index == index]


@dataclass(frozen=True)
class OrderStatistic:
    """The value at a rank of the ascending non-NaN values, and how many lie below it and at it."""

    value: float
    below: int
    equal: int


def sortable(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 `values` (−0.0 counted as +0.0)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where(bits & SIGN, ~bits, bits | SIGN)


def unsortable(key: int) -> float:
    """The float64 of a `sortable` key."""
    key = np.uint64(key)
    bits = key & ~SIGN if key & SIGN else ~key
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _digit_counts(source: Column, index: int, prefixes: list[tuple[int, int]]) -> np.ndarray:
    """Per (prefix, bits known): the part's count of non-NaN values under that prefix, by their
    next DIGIT_BITS bits."""
    values = source.values(index)
    keys = sortable(values[~np.isnan(values)])
    counts = np.zeros((len(prefixes), 1 << DIGIT_BITS), dtype=np.int64)
    for row, (prefix, known) in enumerate(prefixes):
        shift = np.uint64(64 - known - DIGIT_BITS)
        under = keys if known == 0 else keys[(keys >> np.uint64(64 - known)) == np.uint64(prefix)]
        digits = ((under >> shift) & np.uint64((1 << DIGIT_BITS) - 1)).astype(np.int64)
        counts[row] = np.bincount(digits, minlength=1 << DIGIT_BITS)
    return counts


def _add(*counts: np.ndarray) -> np.ndarray:
    return np.sum(counts, axis=0)


def leading_digit_counts(source: Column) -> np.ndarray:
    """The first round's counts: the non-NaN values by their leading DIGIT_BITS bits (their sum
    is how many the column holds)."""
    return _counts_round(source, [(0, 0)])[0]


def _counts_round(source: Column, prefixes: list[tuple[int, int]]) -> np.ndarray:
    if not source.parts:
        return np.zeros((len(prefixes), 1 << DIGIT_BITS), dtype=np.int64)
    return source.map_reduce(_digit_counts, _add, prefixes)


def order_statistics(
    source: Column, ranks: list[int], leading_digits: np.ndarray | None = None
) -> list[OrderStatistic]:
    """The values at 0-based `ranks` of the column's ascending non-NaN values (each rank below
    their count), exactly; `leading_digits`, `leading_digit_counts` of the column when the
    caller has them, saves the first round."""
    state = {rank: (0, 0, 0) for rank in ranks}  # rank -> (prefix, bits known, values below)
    equal: dict[int, int] = {}
    for round_ in range(64 // DIGIT_BITS):
        prefixes = sorted({(prefix, known) for prefix, known, _ in state.values()})
        if round_ == 0 and leading_digits is not None:
            counts = leading_digits[np.newaxis]  # every rank starts at the empty prefix
        else:
            counts = _counts_round(source, prefixes)
        for rank, (prefix, known, below) in state.items():
            row = counts[prefixes.index((prefix, known))]
            cumulative = np.cumsum(row)
            digit = int(np.searchsorted(cumulative, rank - below, side="right"))
            if digit >= len(row):
                raise ValueError(f"rank {rank} is beyond the column's {below + row.sum()} values")
            below += int(cumulative[digit - 1]) if digit else 0
            state[rank] = ((prefix << DIGIT_BITS) | digit, known + DIGIT_BITS, below)
            equal[rank] = int(row[digit])
    return [
        OrderStatistic(unsortable(state[rank][0]), state[rank][2], equal[rank]) for rank in ranks
    ]


def median(source: Column) -> float:
    """numpy's nanmedian of the column (NaN for an empty or all-NaN column)."""
    leading_digits = leading_digit_counts(source)
    count = int(leading_digits.sum())
    if not count:
        return float("nan")
    middle = sorted({(count - 1) // 2, count // 2})
    values = [s.value for s in order_statistics(source, middle, leading_digits)]
    return float(np.mean(values))


def _count_between(source: Column, index: int, low: float, high: float) -> int:
    values = source.values(index)
    return int(np.count_nonzero((values >= low) & (values <= high)))


def count_between(source: Column, low: float, high: float) -> int:
    """How many values lie in [low, high]."""
    return sum(source.map(_count_between, low, high))
