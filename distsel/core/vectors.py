"""Embeddings as Arrow columns: fixed-size lists of float32, one row per document."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(rows, dim) float32 view of a fixed-size-list embedding column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
