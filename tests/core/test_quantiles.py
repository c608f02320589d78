"""Exact order statistics of a column spread over parts, against numpy's sort of the whole."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distsel.core import layout
from distsel.core.executor import LocalExecutor
from distsel.core.quantiles import (
    ColumnParts,
    count_between,
    leading_digit_counts,
    median,
    order_statistics,
    sortable,
    unsortable,
)
from distsel.core.storage import Store


def column_in_parts(root, chunks: list[np.ndarray], dropped=None) -> ColumnParts:
    store = Store(str(root))
    parts = []
    for index, values in enumerate(chunks):
        part = f"p{index:03d}{layout.PART_SUFFIX}"
        ids = [f"d{index}-{row}" for row in range(len(values))]
        store.write_table(
            layout.scores("similarity", part), pa.table({"id": ids, "similarity": values})
        )
        parts.append(part)
    return ColumnParts(store, parts, "similarity", dropped or {})


def test_sortable_keys_keep_the_order_of_floats():
    values = np.array([-np.inf, -1e300, -2.5, -1e-310, -0.0, 0.0, 1e-310, 3.0, 1e300, np.inf])
    keys = sortable(values)
    assert np.all(np.diff(keys.astype(object)) >= 0)
    assert keys[4] == keys[5], "−0.0 counts as +0.0"
    assert [unsortable(k) for k in keys] == [*values[:4], 0.0, *values[5:]]


@pytest.mark.parametrize("seed", range(6))
def test_order_statistics_equal_the_sorted_values(tmp_path, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 60, rng.integers(1, 6))
    chunks = [
        np.where(rng.random(n) < 0.1, np.nan, np.round(rng.normal(0, 10, n), seed % 3))
        for n in sizes
    ]
    whole = np.concatenate(chunks)
    dropped = {f"p000{layout.PART_SUFFIX}": np.array([0, 2])} if sizes[0] > 2 else {}
    if dropped:
        whole = np.concatenate([np.delete(chunks[0], [0, 2]), *chunks[1:]])
    column = column_in_parts(tmp_path, chunks, dropped)
    present = np.sort(whole[~np.isnan(whole)])
    with LocalExecutor().active():
        assert leading_digit_counts(column).sum() == len(present)
        if not len(present):
            assert np.isnan(median(column))
            return
        ranks = sorted({0, len(present) // 3, len(present) - 1})
        found = order_statistics(column, ranks)
        assert median(column) == np.nanmedian(whole)
        low, high = np.quantile(present, [0.2, 0.7])
        between = np.count_nonzero((whole >= low) & (whole <= high))
        assert count_between(column, low, high) == between
    for rank, statistic in zip(ranks, found, strict=True):
        assert statistic.value == present[rank]
        assert statistic.below == np.count_nonzero(present < present[rank])
        assert statistic.equal == np.count_nonzero(present == present[rank])
