"""Semantic duplicates (`dedup: {method: semantic}`): SemDeDup inside the cluster stage's k-means
clusters (distsel.algorithms.semdedup), without a driver that holds the embeddings.

1. members, per part (`write_part_members`): each document's cluster, distance to its centroid,
   node and embedding, one Parquet row group per cluster group g = cluster mod T;
2. clusters, per group (`group_duplicates`): row group g of every part; each cluster's members
   in order of their distance to the centroid (then input order), and its semantic duplicates.

A task holds one group: N · (d · 4 + 16) B / T. A cluster of m members costs m² · d to compare,
so large clusters want more of them (stages.cluster.clusters).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distsel.algorithms import semdedup
from distsel.app.dedup import FOUND_SCHEMA, MAX_GROUPS, ROW_BITS, found_table
from distsel.core import layout
from distsel.core.config import DedupConfig
from distsel.core.executor import current
from distsel.core.storage import Store
from distsel.core.vectors import embedding_matrix

log = logging.getLogger("distsel")
BYTES_PER_GROUP = 256 * 2**20


def find_semantic_duplicates(
    store: Store,
    parts: list[str],
    options: DedupConfig,
    dropped: dict[str, np.ndarray],
    check: str,
    seed: int,
    total: int,
) -> pa.Table:
    """Every semantic duplicate, as FOUND_SCHEMA rows sorted by (rank, row): its part rank and
    row, those of the kept document it is most similar to, and their cosine. `total`
    (documents of the parts) sizes the cluster groups."""
    schema = store.read_schema(layout.scores("embed", parts[0])) if parts else None
    dim = schema.field("embedding").type.list_size if schema else 0
    groups = max(1, min(MAX_GROUPS, math.ceil(total * (4 * max(dim, 1) + 16) / BYTES_PER_GROUP)))
    log.info("dedup: semantic duplicates in %d parts, %d cluster groups", len(parts), groups)
    executor = current()
    calls = [
        (store, check, part, rank, dropped.get(part), groups) for rank, part in enumerate(parts)
    ]
    executor.map(write_part_members, calls)
    found = executor.map(
        group_duplicates, [(store, check, parts, g, options.epsilon) for g in range(groups)]
    )
    for part in parts:
        store.remove(layout.semdedup_members(check, part))
    table = pa.concat_tables([FOUND_SCHEMA.empty_table(), *found])
    return table.sort_by([("rank", "ascending"), ("row", "ascending")])


def write_part_members(
    store: Store, check: str, part: str, rank: int, dropped: np.ndarray | None, groups: int
) -> None:
    """Write part `rank`'s (cluster, distance, node, embedding) rows, grouped by cluster group
    (skipped when a killed run left them)."""
    path = layout.semdedup_members(check, part)
    if store.exists(path):
        return
    clusters = store.read_table(layout.scores("cluster", part), ["cluster", "cluster_distance"])
    embedded = store.read_table(layout.scores("embed", part), ["embedding"])
    rows = np.setdiff1d(np.arange(clusters.num_rows), [] if dropped is None else dropped)
    cluster = clusters.column("cluster").to_numpy()[rows].astype(np.int64)
    table = pa.table(
        {
            "cluster": cluster,
            "distance": clusters.column("cluster_distance").to_numpy()[rows],
            "node": (np.int64(rank) << ROW_BITS) + rows,
            "embedding": embedded.column("embedding").take(rows),
        }
    )
    group_of = cluster % groups
    with pa.BufferOutputStream() as out:
        with pq.ParquetWriter(out, table.schema, compression="zstd") as writer:
            for group in range(groups):
                writer.write_table(table.filter(pa.array(group_of == group)))
        store.write_bytes(path, out.getvalue().to_pybytes())


def group_duplicates(
    store: Store, check: str, parts: list[str], group: int, epsilon: float
) -> pa.Table:
    """The semantic duplicates of every cluster of group `group`."""
    members = pa.concat_tables(
        [store.read_row_group(layout.semdedup_members(check, part), group) for part in parts]
    )
    cluster = members.column("cluster").to_numpy()
    distance = members.column("distance").to_numpy()
    node = members.column("node").to_numpy()
    order = np.lexsort((node, distance, cluster))
    embeddings = embedding_matrix(members.column("embedding").take(order))
    cluster, node = cluster[order], node[order]
    starts = np.flatnonzero(np.diff(cluster, prepend=-1) != 0).tolist() + [len(cluster)]
    later, kept, cosine = [], [], []
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        duplicates, partners, similar = semdedup.cluster_duplicates(embeddings[start:stop], epsilon)
        later.append(node[start:stop][duplicates])
        kept.append(node[start:stop][partners])
        cosine.append(similar)
    if not later:
        return FOUND_SCHEMA.empty_table()
    return found_table(np.concatenate(later), np.concatenate(kept), np.concatenate(cosine))
