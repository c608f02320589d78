"""Semantic duplicates inside one k-means cluster.

Abbas, Tirumala, Simig, Ganguli and Morcos (2023), "SemDeDup: Data-efficient learning at
web-scale through semantic deduplication" (arXiv:2303.09540).

The members of a cluster are visited in order of their distance to the centroid (nearest first,
then input order). A member is a semantic duplicate when its cosine similarity to a member kept
before it exceeds 1 − ε:

    duplicate(i) ⇔ max_{j kept, j before i} cos(e_i, e_j) > 1 − ε

so of a group of near-identical documents the one nearest the centroid is kept. Cosines are
computed `BLOCK` rows at a time against the members before them (m² · d work for m members,
never an m × m matrix in memory); only the pairs above 1 − ε are kept for the greedy pass.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLOCK", "cluster_duplicates", "unit_rows"]

BLOCK = 1024


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1)


def cluster_duplicates(
    embeddings: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The duplicates of one cluster whose members are given in visiting order: (duplicate
    positions, the position of the kept member each is most similar to, that cosine), sorted by
    position."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie strictly between 0 and 1, got {epsilon}")
    unit = unit_rows(embeddings)
    later, earlier, cosine = _close_pairs(unit, 1 - epsilon)
    kept = np.ones(len(unit), dtype=bool)
    duplicates, partners, cosines = [], [], []
    starts = np.searchsorted(later, np.arange(len(unit) + 1))
    for position in np.unique(later).tolist():
        span = slice(starts[position], starts[position + 1])
        alive = kept[earlier[span]]
        if alive.any():
            best = np.argmax(np.where(alive, cosine[span], -np.inf))
            kept[position] = False
            duplicates.append(position)
            partners.append(int(earlier[span][best]))
            cosines.append(float(cosine[span][best]))
    return (
        np.asarray(duplicates, dtype=np.int64),
        np.asarray(partners, dtype=np.int64),
        np.asarray(cosines, dtype=np.float32),
    )


def _close_pairs(unit: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j), j < i, with cos(e_i, e_j) > threshold, sorted by i."""
    later, earlier, cosine = [], [], []
    for start in range(0, len(unit), BLOCK):
        block = unit[start : start + BLOCK]
        similar = block @ unit[: start + len(block)].T
        rows, columns = np.nonzero(similar > threshold)
        before = columns < rows + start
        later.append(rows[before] + start)
        earlier.append(columns[before])
        cosine.append(similar[rows[before], columns[before]])
    if not later:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (
        np.concatenate(later).astype(np.int64),
        np.concatenate(earlier).astype(np.int64),
        np.concatenate(cosine).astype(np.float32),
    )
