"""A self-contained HTML report of a finished run (any method), with PNG plots embedded in the page.

What it shows:

- the run's counts and its budget;
- group shares of the pool and of the selection in the budget's own unit: for group g,
  share_g = Σ_{d ∈ g} u_d / Σ_d u_d, with u_d = tokens_approx under a token budget and u_d = 1
  under a document budget;
- example documents by the selector's score column: the top (the highest-scored selected ones),
  the borderline (around the cut-off: the k-th highest score of the pool, k = the documents
  selected with a score; for a top-k selector, the lowest selected score) and the bottom (the
  lowest-scored of the pool), each with its score, rank in the pool and whether it was selected;
- the embedding map: the first two principal components of a sample of the pool's embeddings,
  the selection in colour, and the target examples, embedded here with the run's own model
  (distsel.scoring.embed) and projected on the same components;
- the selector's own plots (Quad's rounds, the mixture search) and a histogram of every numeric
  score column, pool against selection.

Only small columns are read for every document (id, tokens, the group, the selector's score);
the histograms and the map read a sample of rows per part, and texts are read only for the
examples. Every text that comes from the run (documents, ids, groups, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distsel import layout
from distsel.errors import short
from distsel.output import read_selected, selected_files
from distsel.storage import Store

T = TypeVar("T")

MAX_ROWS = 200_000  # histogram rows, spread over the parts
MAX_POINTS = 5_000  # embedding-map points, spread over the parts
MAX_TARGET_POINTS = 300  # target examples embedded for the map, spread over the target files
EXAMPLES = 5  # top and bottom examples
BORDERLINE = 3  # borderline examples on each side of the cut-off
MAX_TEXT_CHARS = 600  # of each example's text
READ_THREADS = 8  # parts read at once
REDACTED = "***"  # how the manifest hides a credential (distsel.manifest.redact)
MISSING_GROUP = "(none)"  # as the pool names a missing group (distsel.selection.pool)
_BASELINE = {"uniform": "#2ca02c", "natural": "#d62728"}

Figures = list[tuple[str, str]]  # (caption, base64 PNG)


# ---------------------------------------------------------------------------------------------
# Plot helpers


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt: Any, figure: Any, caption: str) -> tuple[str, str]:
    picture = (caption, _png(figure))
    plt.close(figure)
    return picture


# ---------------------------------------------------------------------------------------------
# What the run's manifest says


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


def _summary_rows(manifest: dict[str, Any]) -> str:
    keys = (
        "input_docs",
        "accepted_docs",
        "rejected_docs",
        "selected_docs",
        "pool_tokens_approx",
        "selected_tokens_approx",
    )
    rows = [(key, f"{manifest[key]:,}") for key in keys]
    kl = (manifest.get("evaluation") or {}).get("kl")
    if kl:
        rows.append(("KL reduction (target ‖ pool → selection)", f"{kl['kl_reduction']:.4f}"))
    method = manifest["config"]["select"]["method"]
    rows.append(("method", method))
    budget = (manifest.get(method) or {}).get("budget") or manifest["config"]["select"]["budget"]
    if budget:
        given = ", ".join(f"{k} {v:,}" for k, v in budget.items() if v is not None)
        rows.append(("budget", f"{given} (shares below in {budget_unit(manifest)})"))
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


# ---------------------------------------------------------------------------------------------
# Reading the run: one pass over the parts


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


def _spread(count: int, limit: int) -> np.ndarray:
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

    sample = keep[_spread(len(keep), plan.histogram_rows)]
    found["histogram_selected"] = selected[_spread(len(keep), plan.histogram_rows)]
    found["histogram"] = {}
    for stage, numeric in plan.histogram_columns.items():
        table = store.read_table(layout.scores(stage, part), columns=list(numeric)).take(sample)
        for name in numeric:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            found["histogram"][f"{stage}: {name}"] = values

    if plan.embed:
        from distsel.scoring.embed import embedding_matrix

        positions = _spread(len(keep), plan.embed_rows)
        column = store.read_table(layout.scores("embed", part), columns=["embedding"]).column(0)
        found["embeddings"] = embedding_matrix(column.take(keep[positions])).astype(np.float32)
        found["embedding_selected"] = selected[positions]
    return found


def _parallel(function: Callable[..., T], calls: Iterable[tuple[Any, ...]]) -> list[T]:
    """function(*call) for every call, a few at a time (reads that wait on storage); in order."""
    calls = list(calls)
    if len(calls) <= 1:
        return [function(*call) for call in calls]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(calls))) as pool:
        return list(pool.map(lambda call: function(*call), calls))


def pool_parts(store: Store, manifest: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The pool's document parts (by name), and the rows of each that the pool leaves out as
    duplicate ids (input.id_field). The listing of docs/ serves when it holds as many parts as
    the run ingested and no duplicates were found; else the shards' ingest markers say which
    parts, in the pool's order, which the duplicate check's ranks refer to."""
    listed = store.list(layout.DOCS, layout.PART_SUFFIX)
    checks = [n for n in store.list(layout.STATE, layout.PART_SUFFIX) if layout.is_duplicates(n)]
    found = store.read_table(layout.state(checks[-1]), columns=["rank", "row"]) if checks else None
    ingested = (manifest["stages"].get("ingest") or {}).get("parts")
    if (found is None or not found.num_rows) and ingested == len(listed):
        return listed, {}
    from distsel.corpus import safe_name

    markers = _parallel(
        store.read_json,
        ((layout.ingest_marker(safe_name(s["shard"])),) for s in manifest["shards"]),
    )
    parts = [part for marker in markers for part in marker["parts"]]
    if found is None or not found.num_rows:
        return sorted(parts), {}
    ranks, rows = found.column("rank").to_numpy(), found.column("row").to_numpy()
    dropped = {parts[rank]: np.sort(rows[ranks == rank]) for rank in np.unique(ranks)}
    return sorted(parts), dropped


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
    found = _parallel(
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


# ---------------------------------------------------------------------------------------------
# Group shares, in the budget's unit


def group_shares(manifest: dict[str, Any], gathered: Gathered) -> dict[str, Any] | None:
    """Each group's share of the pool and of the selection in the budget's unit: documents, or
    tokens (tokens_approx) under a token budget. None without a group field."""
    if not gathered.groups:
        return None
    unit = budget_unit(manifest)
    names = list(gathered.groups)
    sums = np.array([gathered.groups[n] for n in names])
    pool, chosen = (sums[:, 1], sums[:, 3]) if unit == "tokens" else (sums[:, 0], sums[:, 2])
    field = (manifest.get("by_group") or {}).get("field") or manifest["config"]["input"][
        "group_field"
    ]
    return {
        "field": field,
        "unit": unit,
        "groups": names,
        "pool": pool / pool.sum() if pool.sum() else pool,
        "selected": chosen / chosen.sum() if chosen.sum() else chosen,
    }


def group_share_plot(shares: dict[str, Any]) -> Figures:
    plt = _pyplot()
    names = shares["groups"]
    figure, axis = plt.subplots(figsize=(max(5, len(names) * 0.8), 3.2))
    x = np.arange(len(names))
    axis.bar(x - 0.2, shares["pool"], 0.4, label="pool")
    axis.bar(x + 0.2, shares["selected"], 0.4, label="selected")
    axis.set_xticks(x, names, rotation=30, ha="right")
    axis.set_xlabel(shares["field"])
    unit = "tokens (≈ characters / 4)" if shares["unit"] == "tokens" else "documents"
    axis.set_ylabel(f"share of {unit}")
    axis.set_title(f"share of {shares['unit']} per {shares['field']}")
    axis.legend()
    return [_finish(plt, figure, f"share of {shares['unit']} per {shares['field']}")]


def _shares_table(shares: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{pool:.4f}</td><td>{chosen:.4f}</td></tr>"
        for name, pool, chosen in zip(
            shares["groups"], shares["pool"], shares["selected"], strict=True
        )
    )
    head = f"<tr><th>{html.escape(shares['field'])}</th><th>pool</th><th>selected</th></tr>"
    return f'<table class="shares" data-unit="{shares["unit"]}">{head}{rows}</table>'


# ---------------------------------------------------------------------------------------------
# Example documents


def example_positions(
    gathered: Gathered, descending: bool = True
) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """Every scored document's position in `gathered`, best first; k, the documents selected
    with a score; and the positions of the top (the best-scored selected), borderline (around
    rank k) and bottom (the worst-scored of the pool) examples, each in rank order. With
    `descending` false a low score ranks first (topk with descending: false)."""
    score = gathered.score if descending else -gathered.score
    scored = np.flatnonzero(np.isfinite(score))
    order = scored[np.argsort(-score[scored], kind="stable")]
    chosen = order[gathered.selected[order]]
    k = len(chosen)
    return (
        order,
        k,
        {
            "top": chosen[:EXAMPLES],
            "borderline": order[max(0, k - BORDERLINE) : k + BORDERLINE] if k else order[:0],
            "bottom": order[max(0, len(order) - EXAMPLES) :],
        },
    )


def _example_rows(
    store: Store, gathered: Gathered, positions: np.ndarray, group_field: str | None
) -> list[dict[str, Any]]:
    """The id, text, tokens and group of the documents at `positions`, read part by part."""
    parts = gathered.part_index[positions]
    calls = [
        (store, gathered.parts[part], gathered.row_index[positions[parts == part]], group_field)
        for part in np.unique(parts)
    ]
    found = {}
    for call, records in zip(calls, _parallel(_read_rows, calls), strict=True):
        for row, record in zip(call[2].tolist(), records, strict=True):
            found[(call[1], row)] = record
    return [
        found[(gathered.parts[gathered.part_index[p]], int(gathered.row_index[p]))]
        for p in positions
    ]


def _read_rows(
    store: Store, part: str, rows: np.ndarray, group_field: str | None
) -> list[dict[str, Any]]:
    names = store.read_schema(layout.docs(part)).names
    columns = ["id", "text", "tokens_approx"]
    if group_field and group_field in names:
        columns.append(group_field)
    table = store.read_table(layout.docs(part), columns=columns).take(rows)
    records = table.to_pylist()
    for record in records:
        value = record.pop(group_field, None) if group_field else None
        record["group"] = MISSING_GROUP if value is None else str(value)
    return records


def _text_cell(text: str) -> str:
    shown = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " …"
    more = f" <em>({len(text):,} characters)</em>" if len(text) > MAX_TEXT_CHARS else ""
    return f'<td class="text">{html.escape(shown)}{more}</td>'


def _examples_table(
    kind: str,
    records: list[dict[str, Any]],
    scores: np.ndarray | None,
    ranks: np.ndarray | None,
    selected: np.ndarray,
    group_field: str | None,
) -> str:
    head = ["rank", "score"] if scores is not None else []
    head += ["selected", "tokens"] + ([group_field] if group_field else []) + ["id", "text"]
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, record in enumerate(records):
        cells = []
        if scores is not None:
            cells += [f"<td>{ranks[i] + 1:,}</td>", f'<td class="score">{scores[i]:.6g}</td>']
        cells.append(f"<td>{'yes' if selected[i] else 'no'}</td>")
        cells.append(f"<td>{record['tokens_approx']:,}</td>")
        if group_field:
            cells.append(f"<td>{html.escape(record['group'])}</td>")
        cells.append(f'<td class="id">{html.escape(str(record["id"]))}</td>')
        cells.append(_text_cell(record["text"]))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="examples" id="examples-{kind}">{"".join(lines)}</table>'


def examples_html(
    store: Store,
    manifest: dict[str, Any],
    gathered: Gathered,
    columns: list[str],
    score_stage: str | None,
) -> str:
    """The example documents as HTML: by score when the selector ranks by a stored score
    column, else a note that says why not and a few selected documents."""
    method = manifest["config"]["select"]["method"]
    group_field = manifest["config"]["input"].get("group_field")
    if gathered.score is not None and len(gathered.score):
        section = manifest.get(method) or {}
        descending = section.get("descending", True) is not False
        order, k, found = example_positions(gathered, descending)
        rank = np.empty(len(gathered.score), dtype=np.int64)
        rank[order] = np.arange(len(order))
        named = columns[0] if len(columns) == 1 else f"max of {', '.join(columns)}"
        cut = (
            f"cut-off {gathered.score[order[k - 1]]:.6g}: the score ranked {k:,} in the pool, "
            f"as {k:,} documents with a score were selected (under a document budget, a top-k "
            "selector's lowest selected score)"
            if k
            else "no document with a score was selected"
        )
        parts = [
            f"<p>score: <code>{html.escape(named)}</code> "
            f"({html.escape(layout.scores(score_stage))}); "
            f"rank 1 = {'highest' if descending else 'lowest'}; {html.escape(cut)}.</p>"
        ]
        titles = {
            "top": "top: the best-scored selected documents",
            "borderline": "borderline: around the cut-off",
            "bottom": "bottom: the worst-scored documents of the pool",
        }
        everything = np.concatenate([found[kind] for kind in titles])
        records = _example_rows(store, gathered, everything, group_field)
        start = 0
        for kind, title in titles.items():
            positions = found[kind]
            chunk = records[start : start + len(positions)]
            start += len(positions)
            parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append(
                _examples_table(
                    kind,
                    chunk,
                    gathered.score[positions],
                    rank[positions],
                    gathered.selected[positions],
                    group_field,
                )
            )
        return "".join(parts)

    if columns:
        why = (
            f"{html.escape(method)} scores by <code>{html.escape(', '.join(columns))}</code>, "
            "which no stage "
            "stored for the whole pool"
        )
        if method == "quad":
            evaluated = (manifest.get("quad") or {}).get("influence_evaluated_docs")
            why += f" (Quad computes it only on the {evaluated} documents it draws)"
    else:
        why = f"{html.escape(method)} has no score column (it ranks the pool by none)"
    note = f'<p class="note">{why}: no top, borderline or bottom examples.</p>'
    chosen = np.flatnonzero(gathered.selected)
    if not len(chosen):
        return note
    positions = chosen[_spread(len(chosen), EXAMPLES)]
    records = _example_rows(store, gathered, positions, group_field)
    table = _examples_table(
        "selected", records, None, None, gathered.selected[positions], group_field
    )
    return f"{note}<h3>a few selected documents</h3>{table}"


# ---------------------------------------------------------------------------------------------
# The embedding map


def _has_redacted(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_redacted(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_redacted(v) for v in value)
    return value == REDACTED


def target_embeddings(
    manifest: dict[str, Any], storage_options: dict[str, Any] | None
) -> tuple[dict[str, np.ndarray], str | None]:
    """The run's target examples (at most MAX_TARGET_POINTS, spread over them), embedded with
    the run's embedding model, by target file; and a note when they cannot be shown. The
    target's storage options are the run's, or `storage_options` where the manifest hides
    credentials."""
    config = manifest["config"]
    target = config.get("target") or {}
    if not target.get("paths"):
        return {}, None
    options = target.get("storage_options") or {}
    if _has_redacted(options):
        options = storage_options or {}
    from distsel.corpus import read_target_tasks

    try:
        tasks = read_target_tasks(target["paths"], target.get("text_field", "text"), options)
    except Exception as exc:
        return {}, f"target examples not shown: cannot read them ({short(exc)})"
    names = [name for name, texts in tasks.items() for _ in texts]
    texts = [text for texts in tasks.values() for text in texts]
    if not texts:
        return {}, "target examples not shown: the target files hold none"
    keep = _spread(len(texts), MAX_TARGET_POINTS)
    texts, names = [texts[i] for i in keep], [names[i] for i in keep]
    embed = config.get("embed") or {}
    try:
        from distsel.scoring.embed import Embedder

        embedder = Embedder(
            embed.get("model"),
            max_length=embed.get("max_length", 256),
            dtype=embed.get("dtype", "bfloat16"),
            batch_size=32,
        )
        vectors = embedder.embed(texts)
    except Exception as exc:
        return {}, f"target examples not shown: cannot embed them ({short(exc)})"
    labels = np.array(names, dtype=object)
    found = {name: vectors[labels == name] for name in tasks if (labels == name).any()}
    total = sum(len(t) for t in tasks.values())
    note = f"{len(texts)} of the {total:,} target examples shown" if len(texts) < total else None
    return found, note


def embedding_projection(
    gathered: Gathered, targets: dict[str, np.ndarray] | None = None
) -> Figures:
    """The first two principal components of a sample of the pool's embeddings, the selection
    in colour, and the target examples projected on the same components."""
    vectors = gathered.embeddings
    if vectors is None or len(vectors) < 3:
        return []
    vectors = vectors.astype(np.float64)
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    # The principal axes: the top eigenvectors of the scatter matrix Xᵀ X of the centred sample.
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    if len(eigenvalues) < 2:
        return []
    components = eigenvectors[:, ::-1][:, :2].T
    explained = eigenvalues[::-1] / max(float(eigenvalues.sum()), 1e-30)
    points = centred @ components.T
    chosen = gathered.embedding_selected
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5.5))
    axis.scatter(*points[~chosen].T, s=4, alpha=0.35, label="not selected", color="#999999")
    axis.scatter(*points[chosen].T, s=5, alpha=0.7, label="selected", color="#d62728")
    markers = "*^sPDv<>"
    for i, (name, target) in enumerate((targets or {}).items()):
        projected = (target.astype(np.float64) - mean) @ components.T
        axis.scatter(
            *projected.T,
            s=40,
            marker=markers[i % len(markers)],
            edgecolors="black",
            linewidths=0.5,
            color=plt.cm.tab10(i % 10),
            label=f"target: {name} ({len(target)})",
        )
    axis.set_xlabel(f"principal component 1 ({explained[0]:.0%} of variance)")
    axis.set_ylabel(f"principal component 2 ({explained[1]:.0%} of variance)")
    axis.set_title(f"embedding map: {len(vectors):,} pool documents")
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return [_finish(plt, figure, "embeddings (PCA)")]


# ---------------------------------------------------------------------------------------------
# Score histograms and the selectors' plots


def score_histograms(gathered: Gathered) -> Figures:
    plt = _pyplot()
    figures = []
    chosen = gathered.histogram_selected
    for name, values in gathered.histogram_values.items():
        finite = values[np.isfinite(values)]
        if not len(finite):
            continue
        figure, axis = plt.subplots(figsize=(6, 3.2))
        bins = np.histogram_bin_edges(finite, bins=50)
        axis.hist(finite, bins=bins, alpha=0.6, label="pool", density=True)
        picked = values[chosen & np.isfinite(values)]
        if len(picked):
            axis.hist(picked, bins=bins, alpha=0.6, label="selected", density=True)
        axis.set_xlabel(name.split(": ", 1)[1])
        axis.set_ylabel("density")
        axis.set_title(name)
        axis.legend(loc="upper right")
        figures.append(_finish(plt, figure, name))
    return figures


def quad_plots(manifest: dict[str, Any]) -> Figures:
    """Reward of each pulled arm per round (accepted ones marked) and documents per cluster."""
    quad = manifest.get("quad")
    if not quad or not quad.get("history"):
        return []
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    for entry in quad["history"]:
        for arm, reward in zip(entry["arms"], entry["rewards"], strict=True):
            accepted = arm in entry["accepted"]
            axis.scatter(
                entry["round"],
                reward,
                s=10,
                c=[plt.cm.tab20(arm % 20)],
                marker="o" if accepted else "x",
            )
    axis.axhline(0, color="#444444", linewidth=0.8)
    axis.set_xlabel("round")
    axis.set_ylabel("reward (o accepted, x rejected)")
    axis.set_title("Quad: reward per pulled arm")
    figures = [_finish(plt, figure, "Quad: reward per arm over rounds")]
    counts = {int(k): v for k, v in quad["selected_per_cluster"].items()}
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    clusters = sorted(counts, key=counts.get, reverse=True)
    axis.bar(range(len(clusters)), [counts[c] for c in clusters])
    axis.set_xlabel(f"cluster (of {quad['clusters']}), most selected first")
    axis.set_ylabel("selected documents")
    axis.set_title("Quad: selected documents per cluster")
    figures.append(_finish(plt, figure, "Quad: selected documents per cluster"))
    return figures


def mixture_plots(manifest: dict[str, Any]) -> Figures:
    """Target loss of each full-budget trial against each group's weight, and the best loss
    found so far over the trials (the uniform and natural mixtures as reference lines)."""
    mixture = manifest.get("mixture")
    done = [
        row
        for row in (mixture or {}).get("trials", [])
        if row["status"] == "completed" and row["target_loss"] is not None
    ]
    if not done:
        return []
    plt = _pyplot()
    groups = list(mixture["best_weights"])
    columns = min(len(groups), 4)
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns + 1, 2.2 * rows + 0.6), squeeze=False, sharey=True
    )
    losses = [row["target_loss"] for row in done]
    for axis, group in zip(axes.flat, groups, strict=False):
        axis.scatter([row["weights"][group] for row in done], losses, s=12)
        axis.scatter(mixture["best_weights"][group], mixture["best_loss"], marker="*", s=80)
        axis.set_xlabel(f"weight of {group}")
        axis.set_ylabel("target loss")
    for axis in axes.flat[len(groups) :]:
        axis.set_visible(False)
    figure.suptitle("mixture: target loss of each trial (* best)")
    figure.tight_layout()
    figures = [_finish(plt, figure, "mixture: target loss vs each group's weight")]

    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    order = [row["trial"] for row in done]
    axis.scatter(order, losses, s=12, color="#999999", label="trial")
    axis.step(order, np.minimum.accumulate(losses), where="post", label="best so far")
    for name, baseline in mixture["baseline_losses"].items():
        if baseline["target_loss"] is not None:
            axis.axhline(
                baseline["target_loss"], linestyle="--", label=name, color=_BASELINE.get(name)
            )
    axis.set_xlabel("trial")
    axis.set_ylabel("target loss")
    axis.legend()
    figures.append(_finish(plt, figure, "mixture: best target loss so far"))
    return figures


# ---------------------------------------------------------------------------------------------
# The page


def _figures_html(figures: Figures) -> str:
    return "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{p}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, p in figures
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def write_report(output: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write OUTPUT/report.html from a finished run; returns its path. `storage_options` open
    the output (and the target files, where the manifest hides their credentials)."""
    import matplotlib

    store = Store(output, storage_options)
    manifest = store.read_json(layout.MANIFEST)
    gathered, columns, score_stage = gather(store, manifest)
    with matplotlib.rc_context({"text.parse_math": False}):  # '$' in a group name is text
        shares = group_shares(manifest, gathered)
        if shares:
            shares_html = _shares_table(shares) + _figures_html(group_share_plot(shares))
        else:
            shares_html = _note("no groups: the run has no input.group_field")
        if gathered.embeddings is None:
            map_html = _note("no embedding map: the run has no embed stage output")
        else:
            targets, target_note = target_embeddings(manifest, storage_options)
            map_html = _figures_html(embedding_projection(gathered, targets))
            map_html += _note(target_note) if target_note else ""
        plots = quad_plots(manifest) + mixture_plots(manifest) + score_histograms(gathered)
    examples = examples_html(store, manifest, gathered, columns, score_stage)
    section = manifest.get(manifest["config"]["select"]["method"]) or {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>distsel report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:6px 0}}th,td{{padding:2px 10px;text-align:left;
vertical-align:top}}table.examples td{{border-top:1px solid #ddd}}
td.text{{white-space:pre-wrap;font-size:90%;max-width:640px}}.note{{color:#555}}
figure{{display:inline-block;margin:8px}}pre{{background:#f4f4f4;padding:8px}}</style>
</head><body><h1>distsel report</h1><p>{html.escape(output)}</p>
<table>{_summary_rows(manifest)}</table>
<h2>group shares</h2>{shares_html}
<h2>examples</h2>{examples}
<h2>embedding map</h2>{map_html}
<h2>scores</h2>{_figures_html(plots)}
<h2>selector</h2><pre>{html.escape(json.dumps(section, indent=2, default=str))}</pre>
<h2>stages</h2><pre>{html.escape(json.dumps(manifest["stages"], indent=2))}</pre>
</body></html>"""
    store.write_bytes(layout.REPORT, page.encode())
    return store.path(layout.REPORT)
