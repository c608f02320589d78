"""Near-duplicate documents found by MinHash LSH (`dedup: {method: minhash}`), without a driver
that holds every signature.

A document is a node (distsel.app.dedup.node: part rank and row), so node order is input order.
Four steps, each spread over the cluster:

1. signatures, per part (`write_part_signatures`): the part's MinHash signatures, then its band
   keys as (key, node) rows, one Parquet row group per bucket group g = key mod T;
2. buckets, per group (`candidate_pairs`): row group g of every part, sorted by (key, node); each
   run of equal keys pairs its first node with every other one; the pairs are written with one
   row group per verification group v = (the later node's part rank) mod V;
3. verification, per group v (`verified_pairs`): row group v of every bucket group's pairs; a
   pair stays when the estimated Jaccard of the two signatures reaches the threshold, and is
   written under both its nodes, one row group per edge group e = hash(node) mod E;
4. clusters, per edge group (distsel.algorithms.components): large-star and small-star steps,
   each reading row group e of the last step's files and writing its own, until every component
   is a star around its smallest node; every node but that first one is a near duplicate of it.

Memory per task is one group's band rows, one verification group's pairs and the signatures
(P · 4 B per document) of the parts they reach, or one edge group's edges. The driver holds
per-task counts while the check runs, then the near duplicates it finds (FOUND_SCHEMA rows).
The rows that the duplicate-id check dropped take no part.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distsel.algorithms import components, minhash
from distsel.app.dedup import FOUND_SCHEMA, MAX_GROUPS, ROW_BITS, ROW_MASK, found_table
from distsel.core import layout
from distsel.core.config import DedupConfig
from distsel.core.executor import current
from distsel.core.storage import Store

log = logging.getLogger("distsel")
BAND_ROWS_PER_GROUP = 4_000_000
EDGE_ROWS_PER_GROUP = 4_000_000
MAX_ROUNDS = 200
EDGES_SCHEMA = pa.schema([("key", pa.int64()), ("other", pa.int64())])
VERIFIED_SCHEMA = EDGES_SCHEMA.append(pa.field("similarity", pa.float32()))


def find_near_duplicates(
    store: Store,
    parts: list[str],
    options: DedupConfig,
    dropped: dict[str, np.ndarray],
    check: str,
    seed: int,
    total_docs: int,
) -> pa.Table:
    """Every near duplicate that is not the first of its cluster, as FOUND_SCHEMA rows sorted
    by (rank, row): its part rank and row, the first document's, and the largest estimated
    Jaccard of its verified pairs. `total_docs` (of the parts) sizes the bucket groups."""
    bands, rows = minhash.lsh_bands(options.threshold, options.num_perm)
    groups = _groups(total_docs * bands, BAND_ROWS_PER_GROUP)
    log.info(
        "dedup: MinHash of %d parts (%d bands of %d rows, %d bucket groups)",
        len(parts),
        bands,
        rows,
        groups,
    )
    executor = current()
    settings = (options.num_perm, options.ngram, seed, bands, rows, groups)
    calls = [
        (store, check, part, rank, dropped.get(part), settings) for rank, part in enumerate(parts)
    ]
    began = time.perf_counter()
    executor.map(write_part_signatures, calls)
    log.info("dedup: signatures in %.1f s", time.perf_counter() - began)
    verifiers = max(1, min(MAX_GROUPS, len(parts)))
    calls = [(store, check, parts, g, verifiers) for g in range(groups)]
    candidates = sum(executor.map(candidate_pairs, calls))
    log.info("dedup: %d candidate pairs in %.1f s", candidates, time.perf_counter() - began)
    edge_groups = _groups(2 * candidates, EDGE_ROWS_PER_GROUP)
    limits = (groups, edge_groups, options.threshold)
    calls = [(store, check, parts, v, limits) for v in range(verifiers)]
    verified = sum(executor.map(verified_pairs, calls))
    for part in parts:
        store.remove(layout.minhash_bands(check, part))
        store.remove(layout.minhash_signatures(check, part))
    for group in range(groups):
        store.remove(layout.minhash_pairs(check, group))
    log.info("dedup: %d verified in %.1f s", verified, time.perf_counter() - began)
    found = connected_components(store, check, verifiers, edge_groups)
    log.info("dedup: clusters in %.1f s", time.perf_counter() - began)
    return found


def _groups(rows: int, rows_per_group: int) -> int:
    return max(1, min(MAX_GROUPS, math.ceil(rows / rows_per_group)))


def write_part_signatures(
    store: Store,
    check: str,
    part: str,
    rank: int,
    dropped: np.ndarray | None,
    settings: tuple[int, int, int, int, int, int],
) -> None:
    """Write part `rank`'s signatures, then its band rows (skipped when a killed run left
    them)."""
    num_perm, ngram, seed, bands, rows, groups = settings
    bands_path = layout.minhash_bands(check, part)
    if store.exists(bands_path):
        return
    texts = store.read_table(layout.docs(part), columns=["text"]).column("text").to_pylist()
    signature = minhash.signatures(texts, num_perm, ngram, seed)
    if dropped is not None and len(dropped):
        signature[dropped] = minhash.NO_SHINGLES
    buffer = io.BytesIO()
    np.save(buffer, signature)
    store.write_bytes(layout.minhash_signatures(check, part), buffer.getvalue())
    taking = np.flatnonzero(signature[:, 0] != minhash.NO_SHINGLES)
    keys = minhash.band_keys(signature[taking], bands, rows).ravel()
    nodes = np.repeat((np.int64(rank) << ROW_BITS) + taking, bands)
    table = pa.table({"key": keys, "node": nodes})
    _write_grouped(store, bands_path, table, keys % np.uint64(groups), groups)


def candidate_pairs(store: Store, check: str, parts: list[str], group: int, verifiers: int) -> int:
    """In group `group`, every node that shares a band key with a smaller node, paired with the
    smallest one: (first, later) rows written with one row group per verification group
    (the later node's part rank mod `verifiers`); returns how many."""
    tables = [store.read_row_group(layout.minhash_bands(check, part), group) for part in parts]
    rows = pa.concat_tables(tables)
    keys = rows.column("key").to_numpy()
    nodes = rows.column("node").to_numpy()
    order = np.lexsort((nodes, keys))
    keys, nodes = keys[order], nodes[order]
    repeats = np.flatnonzero(keys[1:] == keys[:-1]) + 1
    run_start = np.maximum.accumulate(
        np.where(np.concatenate([[True], keys[1:] != keys[:-1]]), np.arange(len(keys)), 0)
    )
    pairs = np.unique(np.stack([nodes[run_start[repeats]], nodes[repeats]], axis=1), axis=0)
    table = pa.table({"first": pairs[:, 0], "later": pairs[:, 1]})
    verifier = (pairs[:, 1] >> ROW_BITS) % verifiers
    _write_grouped(store, layout.minhash_pairs(check, group), table, verifier, verifiers)
    return len(pairs)


def verified_pairs(
    store: Store,
    check: str,
    parts: list[str],
    verifier: int,
    limits: tuple[int, int, float],
) -> int:
    """The candidate pairs (first, later) of verification group `verifier`, from every bucket
    group, whose estimated Jaccard similarity is at least the threshold: written under both
    nodes, by edge group; returns how many. `limits`: the bucket groups, the edge groups and
    the threshold."""
    groups, edge_groups, threshold = limits
    found = pa.concat_tables(
        [store.read_row_group(layout.minhash_pairs(check, g), verifier) for g in range(groups)]
    )
    pairs = np.stack([found.column(n).to_numpy() for n in ("first", "later")], axis=1)
    pairs = np.unique(pairs.reshape(-1, 2), axis=0)
    similarity = np.zeros(len(pairs))
    signatures = _Signatures(store, check, parts)
    later_rank = pairs[:, 1] >> ROW_BITS
    for rank in np.unique(later_rank):
        at = np.flatnonzero(later_rank == rank)
        later = signatures.rows(int(rank), pairs[at, 1] & ROW_MASK)
        first = np.empty_like(later)
        first_rank = pairs[at, 0] >> ROW_BITS
        for other in np.unique(first_rank):
            within = first_rank == other
            first[within] = signatures.rows(int(other), pairs[at[within], 0] & ROW_MASK)
        similarity[at] = minhash.estimated_jaccard(first, later)
    keep = similarity >= threshold
    keys, others = components.both_ways(pairs[keep, 0], pairs[keep, 1])
    table = pa.table(
        {
            "key": keys,
            "other": others,
            "similarity": np.tile(similarity[keep], 2).astype(np.float32),
        },
        schema=VERIFIED_SCHEMA,
    )
    path = layout.minhash_edges(check, "verified", verifier)
    _write_grouped(store, path, table, _edge_group(keys, edge_groups), edge_groups)
    return int(keep.sum())


def connected_components(store: Store, check: str, sources: int, groups: int) -> pa.Table:
    """The near duplicates (FOUND_SCHEMA) of the verified edges that `sources` verification
    tasks wrote in `groups` edge groups: large-star and small-star steps, one task per edge
    group, until not_stars is zero in every group."""
    executor = current()
    verified = [layout.minhash_edges(check, "verified", s) for s in range(sources)]
    edges = verified
    for step in range(MAX_ROUNDS):
        large = [layout.minhash_edges(check, f"large-{step}", g) for g in range(groups)]
        calls = [(store, edges, g, large[g], groups, True) for g in range(groups)]
        remaining = sum(executor.map(star_step, calls))
        log.info("dedup: clusters, round %d: %d nodes not yet in stars", step + 1, remaining)
        if remaining == 0:
            break
        _remove(store, edges if edges is not verified else [])
        edges = [layout.minhash_edges(check, f"small-{step}", g) for g in range(groups)]
        calls = [(store, large, g, edges[g], groups, False) for g in range(groups)]
        executor.map(star_step, calls)
        _remove(store, large)
    else:
        raise RuntimeError(f"connected components did not settle in {MAX_ROUNDS} rounds")
    calls = [(store, edges, verified, g) for g in range(groups)]
    found = pa.concat_tables([FOUND_SCHEMA.empty_table(), *executor.map(star_leaves, calls)])
    _remove(store, {*large, *edges, *verified})
    return found.sort_by([("rank", "ascending"), ("row", "ascending")])


def star_step(
    store: Store, sources: list[str], group: int, out: str, groups: int, large: bool
) -> int:
    """One large-star (`large`) or small-star step over edge group `group` of `sources`,
    written to `out` by edge group; for a large-star step, the group's not_stars count."""
    edges = _edge_rows(store, sources, group)
    keys, others = (edges.column(name).to_numpy() for name in ("key", "other"))
    step = components.large_star if large else components.small_star
    new_keys, new_others = step(keys, others)
    table = pa.table({"key": new_keys, "other": new_others}, schema=EDGES_SCHEMA)
    _write_grouped(store, out, table, _edge_group(new_keys, groups), groups)
    return components.not_stars(keys, others) if large else 0


def star_leaves(store: Store, sources: list[str], verified: list[str], group: int) -> pa.Table:
    """FOUND_SCHEMA rows of edge group `group` once its components are stars: each leaf, its
    centre, and the largest similarity among the leaf's verified edges."""
    edges = _edge_rows(store, sources, group)
    leaves, centres = components.star_leaves(
        *(edges.column(name).to_numpy() for name in ("key", "other"))
    )
    rows = _edge_rows(store, verified, group)
    keys, similarity = (rows.column(name).to_numpy() for name in ("key", "similarity"))
    best = np.zeros(len(leaves), dtype=np.float32)
    at = np.minimum(np.searchsorted(leaves, keys), max(len(leaves) - 1, 0))
    inside = leaves[at] == keys if len(leaves) else np.zeros(len(keys), dtype=bool)
    np.maximum.at(best, at[inside], similarity[inside])
    return found_table(leaves, centres, best)


def _edge_rows(store: Store, sources: list[str], group: int) -> pa.Table:
    return pa.concat_tables([store.read_row_group(path, group) for path in sources])


def _edge_group(nodes: np.ndarray, groups: int) -> np.ndarray:
    """hash(node) mod groups (Fibonacci hashing, so neither part rank nor row decides alone)."""
    mixed = np.asarray(nodes, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (mixed >> np.uint64(32)) % np.uint64(groups)


def _write_grouped(
    store: Store, path: str, table: pa.Table, group: np.ndarray, groups: int
) -> None:
    """`table` as one Parquet file whose row group g holds the rows with group == g."""
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(groups + 1, dtype=group.dtype))
    ordered = table.take(pa.array(order))
    with io.BytesIO() as out:
        with pq.ParquetWriter(out, table.schema, compression="zstd") as writer:
            for g in range(groups):
                writer.write_table(ordered.slice(bounds[g], bounds[g + 1] - bounds[g]))
        store.write_bytes(path, out.getvalue())


def _remove(store: Store, paths: Iterable[str]) -> None:
    for path in paths:
        store.remove(path)


class _Signatures:
    """Parts' signatures, each read once."""

    def __init__(self, store: Store, check: str, parts: list[str]) -> None:
        self.store, self.check, self.parts = store, check, parts
        self.read: dict[int, np.ndarray] = {}

    def rows(self, rank: int, rows: np.ndarray) -> np.ndarray:
        if rank not in self.read:
            self.read[rank] = _signatures(self.store, self.check, self.parts[rank])
        return self.read[rank][rows]


def _signatures(store: Store, check: str, part: str) -> np.ndarray:
    data = store.read_bytes(layout.minhash_signatures(check, part))
    return np.load(io.BytesIO(data), allow_pickle=False)
