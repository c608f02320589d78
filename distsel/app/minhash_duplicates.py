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
   pair stays when the estimated Jaccard of the two signatures reaches the threshold;
4. clusters: the connected components of the verified pairs (on the driver, which holds only
   the verified pairs, 24 B each); every node but the first of its component is a near duplicate
   of that first one.

Memory per task is one group's band rows, or one verification group's pairs and the signatures
(P · 4 B per document) of the parts they reach. The rows that the duplicate-id check dropped
take no part.
"""

from __future__ import annotations

import io
import logging
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distsel.algorithms import minhash
from distsel.app.dedup import MAX_GROUPS, ROW_BITS, ROW_MASK, found_table
from distsel.core import layout
from distsel.core.config import DedupConfig
from distsel.core.executor import current
from distsel.core.storage import Store

log = logging.getLogger("distsel")
BAND_ROWS_PER_GROUP = 4_000_000
PAIRS_SCHEMA = pa.schema(
    [("first", pa.int64()), ("second", pa.int64()), ("similarity", pa.float32())]
)


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
    groups = max(1, min(MAX_GROUPS, math.ceil(total_docs * bands / BAND_ROWS_PER_GROUP)))
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
    calls = [(store, check, parts, v, groups, options.threshold) for v in range(verifiers)]
    verified = pa.concat_tables([PAIRS_SCHEMA.empty_table(), *executor.map(verified_pairs, calls)])
    for part in parts:
        store.remove(layout.minhash_bands(check, part))
        store.remove(layout.minhash_signatures(check, part))
    for group in range(groups):
        store.remove(layout.minhash_pairs(check, group))
    log.info("dedup: %d verified in %.1f s", verified.num_rows, time.perf_counter() - began)
    return _clusters(verified)


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
    group_of = keys % np.uint64(groups)
    order = np.argsort(group_of, kind="stable")
    bounds = np.searchsorted(group_of[order], np.arange(groups + 1, dtype=np.uint64))
    with io.BytesIO() as out:
        schema = pa.schema([("key", pa.uint64()), ("node", pa.int64())])
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for group in range(groups):
                chosen = order[bounds[group] : bounds[group + 1]]
                writer.write_table(pa.table({"key": keys[chosen], "node": nodes[chosen]}, schema))
        store.write_bytes(bands_path, out.getvalue())


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
    verifier = (pairs[:, 1] >> ROW_BITS) % verifiers
    schema = pa.schema([("first", pa.int64()), ("later", pa.int64())])
    with io.BytesIO() as out:
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for index in range(verifiers):
                chosen = pairs[verifier == index]
                writer.write_table(pa.table({"first": chosen[:, 0], "later": chosen[:, 1]}, schema))
        store.write_bytes(layout.minhash_pairs(check, group), out.getvalue())
    return len(pairs)


def verified_pairs(
    store: Store, check: str, parts: list[str], verifier: int, groups: int, threshold: float
) -> pa.Table:
    """The candidate pairs (first, later) of verification group `verifier`, from every bucket
    group, whose estimated Jaccard similarity is at least `threshold`."""
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
    return pa.table(
        {"first": pairs[keep, 0], "second": pairs[keep, 1], "similarity": similarity[keep]},
        schema=PAIRS_SCHEMA,
    )


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


def _clusters(verified: pa.Table) -> pa.Table:
    first = verified.column("first").to_numpy()
    second = verified.column("second").to_numpy()
    later, kept = minhash.components(first, second)
    similarity = verified.column("similarity").to_numpy()
    best = np.zeros(len(later), dtype=np.float32)
    for end in (first, second):  # the closest pair each near duplicate takes part in
        at = np.minimum(np.searchsorted(later, end), max(len(later) - 1, 0))
        inside = later[at] == end if len(later) else np.zeros(len(end), dtype=bool)
        np.maximum.at(best, at[inside], similarity[inside])
    return found_table(later, kept, best)
