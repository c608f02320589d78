"""What the report reads from a run's output: small columns of every document, a sample of
rows per part for the histograms and the map, and the score columns the selector used."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distsel.app.output import read_selected, selected_files
from distsel.core import layout
from distsel.core.storage import Store, threaded

T = TypeVar("T")
MAX_ROWS = 200_000  # histogram rows, spread over the parts
MAX_POINTS = 5_000  # embedding-map points, spread over the parts
READ_THREADS = 8  # parts read at once
MISSING_GROUP = "(none)"  # as the pool names a missing group (distsel.core.pool)


def budget_unit(manifest: dict[str, Any]) -> str:
    """'tokens' when the run's budget is in tokens (tokens or tokens_share), else 'documents'."""
    budget = manifest["config"]["select"].get("budget") or {}
    by_tokens = budget.get("tokens") is not None or budget.get("tokens_share") is not None
    return "tokens" if by_tokens else "documents"


def score_columns(manifest: dict[str, Any], stage_columns: dict[str, list[str]]) -> list[str]:
    """The columns the selector ranked the pool by (several: a document's score is their
    maximum); [] for a selector that ranks by none (random, all, mixture). From the selector's
    manifest section, else from its options; `stage_columns` lists each stage's columns."""
    select = manifest["config"]["select"]
    method = select["method"]
    section = manifest.get(method) or {}
    options = select.get(method) or {}
    if section.get("score_column"):
        return [section["score_column"]]
    if section.get("columns"):
        return list(section["columns"])
    if isinstance(section.get("column"), str):
        return [section["column"]]
    normalized = (select.get("influence") or {}).get("normalize", True)
    influence = "influence_normalized" if normalized else "influence"
    if method == "dsir":
        per_ngram = options.get("length_normalize", True)
        return ["dsir_log_weight_per_ngram" if per_ngram else "dsir_log_weight"]
    if method == "classifier":
        return ["classifier_score"]
    if method == "influence":
        return [influence]
    if method == "similarity":
        if options.get("betr"):
            return ["betr_score"]
        return [c for c in stage_columns.get("similarity", []) if c.startswith("similarity_task_")]
    if method == "quad":
        if options.get("score_column"):
            return [options["score_column"]]
        return [influence] if options.get("scorer", "influence") == "influence" else []
    if isinstance(options.get("column"), str):  # topk, threshold, stratified
        return [options["column"]]
    return []


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What to read of each part."""

    group_field: str | None
    score_stage: str | None
    score_columns: tuple[str, ...]
    histogram_columns: dict[str, tuple[str, ...]]  # stage → numeric columns
    histogram_rows: int  # per part
    embed: bool
    embed_rows: int  # per part


@dataclasses.dataclass
class Gathered:
    """The pool (accepted documents, duplicates left out) as the report needs it, in part
    order then row order. `groups` maps each group to [pool documents, pool tokens, selected
    documents, selected tokens]."""

    parts: list[str]
    part_index: np.ndarray  # per document: its part
    row_index: np.ndarray  # per document: its row in the part
    selected: np.ndarray  # per document: whether it was selected
    score: np.ndarray | None  # per document: the selector's score (None: it ranks by none)
    groups: dict[str, np.ndarray]
    histogram_values: dict[str, np.ndarray]  # "stage: column" → a sample of its values
    histogram_selected: np.ndarray  # whether each sampled row was selected
    embeddings: np.ndarray | None  # a sample of the pool's embeddings
    embedding_selected: np.ndarray


def spread(count: int, limit: int) -> np.ndarray:
    """At most `limit` evenly spread positions of range(count)."""
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.floor(np.arange(limit) * (count / limit)).astype(np.int64)


def _read_part(
    store: Store, part: str, selected_file: str | None, dropped: np.ndarray, plan: _Plan
) -> dict[str, Any]:
    names = store.read_schema(layout.docs(part)).names
    group = plan.group_field if plan.group_field in names else None
    columns = ["id", "tokens_approx"] + ([group] if group else [])
    docs = store.read_table(layout.docs(part), columns=columns)
    keep = np.setdiff1d(np.arange(docs.num_rows, dtype=np.int64), dropped)
    docs = docs.take(keep)
    if selected_file:
        chosen_ids = read_selected(store, selected_file, ["id"]).column("id")
        selected = pc.is_in(docs.column("id"), value_set=chosen_ids.combine_chunks())
        selected = selected.to_numpy(zero_copy_only=False).astype(bool)
    else:
        selected = np.zeros(len(keep), dtype=bool)
    found: dict[str, Any] = {"rows": keep, "selected": selected}

    if plan.group_field:
        tokens = docs.column("tokens_approx").to_numpy().astype(np.float64)
        values = docs.column(group).to_pylist() if group else [None] * len(keep)
        labels = np.array([MISSING_GROUP if v is None else str(v) for v in values], dtype=object)
        names_found, inverse = np.unique(labels, return_inverse=True)
        sums = np.stack(
            [
                np.bincount(inverse, minlength=len(names_found)),
                np.bincount(inverse, weights=tokens, minlength=len(names_found)),
                np.bincount(inverse, weights=selected, minlength=len(names_found)),
                np.bincount(inverse, weights=tokens * selected, minlength=len(names_found)),
            ],
            axis=1,
        ).astype(np.float64)
        found["groups"] = dict(zip(names_found.tolist(), sums, strict=True))

    if plan.score_stage:
        table = store.read_table(
            layout.scores(plan.score_stage, part), columns=list(plan.score_columns)
        ).take(keep)
        matrix = np.stack(
            [c.to_numpy(zero_copy_only=False).astype(np.float64) for c in table.columns]
        )
        with np.errstate(invalid="ignore"):
            found["score"] = np.max(matrix, axis=0) if len(matrix) > 1 else matrix[0]

    sample = keep[spread(len(keep), plan.histogram_rows)]
    found["histogram_selected"] = selected[spread(len(keep), plan.histogram_rows)]
    found["histogram"] = {}
    for stage, numeric in plan.histogram_columns.items():
        table = store.read_table(layout.scores(stage, part), columns=list(numeric)).take(sample)
        for name in numeric:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            found["histogram"][f"{stage}: {name}"] = values

    if plan.embed:
        from distsel.core.vectors import embedding_matrix

        positions = spread(len(keep), plan.embed_rows)
        column = store.read_table(layout.scores("embed", part), columns=["embedding"]).column(0)
        found["embeddings"] = embedding_matrix(column.take(keep[positions])).astype(np.float32)
        found["embedding_selected"] = selected[positions]
    return found


def parallel_map(function: Callable[..., T], calls: Iterable[tuple[Any, ...]]) -> list[T]:
    """function(*call) for every call, a few at a time (reads that wait on storage); in order."""
    return threaded(lambda call: function(*call), list(calls), READ_THREADS)


def pool_parts(store: Store, manifest: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The pool's document parts (by name), and the rows of each that the pool leaves out as
    duplicate ids (input.id_field) or near duplicates (dedup:). The listing of docs/ serves
    when it holds as many parts as the run ingested and nothing was left out; else the shards'
    ingest markers say which parts, in the pool's order, which the checks' ranks refer to."""
    listed = store.list(layout.DOCS, layout.PART_SUFFIX)
    found = _left_out(store, manifest)
    ingested = (manifest["stages"].get("ingest") or {}).get("parts")
    if found is None and ingested == len(listed):
        return listed, {}
    from distsel.core.corpus import safe_name

    markers = parallel_map(
        store.read_json,
        ((layout.ingest_marker(safe_name(s["shard"])),) for s in manifest["shards"]),
    )
    parts = [part for marker in markers for part in marker["parts"]]
    if found is None:
        return sorted(parts), {}
    ranks, rows = found.column("rank").to_numpy(), found.column("row").to_numpy()
    dropped = {parts[rank]: np.unique(rows[ranks == rank]) for rank in np.unique(ranks)}
    return sorted(parts), dropped


def _left_out(store: Store, manifest: dict[str, Any]) -> pa.Table | None:
    """(rank, row) of the documents the run's duplicate checks left out of the pool, or None."""
    names = store.list(layout.STATE, layout.PART_SUFFIX)
    checks = [n for n in names if layout.is_duplicates(n)][-1:]
    if "dedup" in manifest["stages"]:
        checks += [n for n in names if layout.is_near_duplicates(n)][-1:]
    tables = [store.read_table(layout.state(n), columns=["rank", "row"]) for n in checks]
    found = pa.concat_tables(tables) if tables else None
    return found if found is not None and found.num_rows else None


def _stage_columns(store: Store, manifest: dict[str, Any], part: str) -> dict[str, pa.Schema]:
    """The schema of each of this run's stages that wrote scores (one part's metadata)."""
    schemas = {}
    for stage in store.list(layout.SCORES):
        if stage not in manifest["stages"]:
            continue  # left by an earlier run into the same output
        try:
            schemas[stage] = store.read_schema(layout.scores(stage, part))
        except FileNotFoundError:
            continue
    return schemas


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def gather(store: Store, manifest: dict[str, Any]) -> tuple[Gathered, list[str], str | None]:
    """Read what the report shows of every part; also the selector's score columns and the
    stage that holds them (None when no stage holds them all, or the selector has none)."""
    parts, dropped = pool_parts(store, manifest)
    schemas = _stage_columns(store, manifest, parts[0]) if parts else {}
    columns = score_columns(manifest, {s: schema.names for s, schema in schemas.items()})
    score_stage = next(
        (s for s, schema in schemas.items() if columns and set(columns) <= set(schema.names)),
        None,
    )
    histogram_columns = {
        stage: tuple(f.name for f in schema if f.name != "id" and _numeric(f.type))
        for stage, schema in schemas.items()
    }
    plan = _Plan(
        group_field=(manifest.get("by_group") or {}).get("field")
        or manifest["config"]["input"].get("group_field"),
        score_stage=score_stage,
        score_columns=tuple(columns),
        histogram_columns={stage: names for stage, names in histogram_columns.items() if names},
        histogram_rows=max(1, MAX_ROWS // max(len(parts), 1)),
        embed="embed" in schemas and "embedding" in schemas["embed"].names,
        embed_rows=max(1, MAX_POINTS // max(len(parts), 1)),
    )
    selected = selected_files(store)
    none = np.zeros(0, dtype=np.int64)
    found = parallel_map(
        _read_part,
        ((store, p, selected.get(p), dropped.get(p, none), plan) for p in parts),
    )

    def stacked(name: str, dtype: Any) -> np.ndarray:
        arrays = [f[name] for f in found]
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    groups: dict[str, np.ndarray] = {}
    for f in found:
        for name, sums in f.get("groups", {}).items():
            groups[name] = groups.get(name, 0) + sums
    embeddings = [f["embeddings"] for f in found if "embeddings" in f]
    gathered = Gathered(
        parts=parts,
        part_index=np.repeat(
            np.arange(len(parts), dtype=np.int32), [len(f["rows"]) for f in found]
        ),
        row_index=stacked("rows", np.int64),
        selected=stacked("selected", bool),
        score=stacked("score", np.float64) if score_stage else None,
        groups=dict(sorted(groups.items())),
        histogram_values={
            name: np.concatenate([f["histogram"][name] for f in found])
            for name in (found[0]["histogram"] if found else {})
        },
        histogram_selected=stacked("histogram_selected", bool),
        embeddings=np.concatenate(embeddings) if embeddings else None,
        embedding_selected=stacked("embedding_selected", bool) if embeddings else np.zeros(0, bool),
    )
    return gathered, columns, score_stage
