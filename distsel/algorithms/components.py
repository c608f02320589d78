"""Connected components by alternating large-star and small-star steps (Kiveris et al. 2014,
*Connected Components in MapReduce and Beyond*). Each step reads the edges grouped by one end
and writes edges grouped by one end, so the edges can be spread over tasks by a hash of that end.

Edges are undirected (key, other) rows of int64 node ids. With Γ(u) the neighbours of u:

    large-star(u): m = min(Γ(u) ∪ {u}); the edge (v, m) for every v ∈ Γ(u) with v > u
                   (input: every edge under both ends)
    small-star(u): Γ'(u) = {v ∈ Γ(u) : v < u}, m = min(Γ'(u) ∪ {u}); the edge (v, m) for every
                   v ∈ Γ'(u) ∪ {u} with v ≠ m (input: every edge under its larger end)

Neither step changes the components. Alternated, they reach a forest of stars centred on each
component's smallest node in O(log² n) rounds. The graph is such a forest exactly when every
node with a smaller neighbour has no other neighbour; `not_stars` counts the nodes where that
fails.
"""

from __future__ import annotations

import numpy as np


def both_ways(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every edge under both of its ends: the input of large_star and not_stars."""
    return np.concatenate([first, second]), np.concatenate([second, first])


def large_star(keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The large-star step over every edge of the keys present (both ways); the new edges,
    under their larger end."""
    keys, others, smallest = _with_smallest_neighbour(keys, others)
    centre = np.minimum(keys, smallest)
    larger = others > keys
    return _distinct(others[larger], centre[larger])


def small_star(keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The small-star step over edges under their larger end; the new edges, both ways."""
    keys, others, smallest = _with_smallest_neighbour(keys, others)
    leaves = np.concatenate([others, np.unique(keys)])
    centres = np.concatenate([smallest, smallest[np.unique(keys, return_index=True)[1]]])
    moved = leaves != centres
    return both_ways(*_distinct(leaves[moved], centres[moved]))


def not_stars(keys: np.ndarray, others: np.ndarray) -> int:
    """How many keys have a smaller neighbour and another neighbour (edges both ways): zero
    when the keys' components are stars centred on their smallest node."""
    keys, others = _distinct(keys, others)
    starts, counts = np.unique(keys, return_index=True, return_counts=True)[1:]
    return int(((others[starts] < keys[starts]) & (counts > 1)).sum())


def star_leaves(keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Once not_stars is zero: every key that is not its component's smallest node, with that
    node, sorted by key."""
    keys, others = _distinct(keys, others)
    leaf = others < keys
    return keys[leaf], others[leaf]


def _with_smallest_neighbour(
    keys: np.ndarray, others: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct edges sorted by (key, other), and each row's key's smallest neighbour."""
    keys, others = _distinct(keys, others)
    starts = np.unique(keys, return_index=True)[1]
    runs = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))
    return keys, others, others[starts][runs]


def _distinct(keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (key, other) rows, sorted by key then other."""
    pairs = np.unique(np.stack([keys, others], axis=1).astype(np.int64).reshape(-1, 2), axis=0)
    return pairs[:, 0], pairs[:, 1]
