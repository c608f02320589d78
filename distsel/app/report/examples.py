"""The report's example documents: the top, the borderline and the bottom by the selector's
score, with their rank in the pool and whether they were selected."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from distsel.app.report.gather import MISSING_GROUP, Gathered, parallel_map, spread
from distsel.core import layout
from distsel.core.storage import Store

EXAMPLES = 5  # top and bottom examples
BORDERLINE = 3  # borderline examples on each side of the cut-off
MAX_TEXT_CHARS = 600  # of each example's text


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
    for call, records in zip(calls, parallel_map(_read_rows, calls), strict=True):
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
    positions = chosen[spread(len(chosen), EXAMPLES)]
    records = _example_rows(store, gathered, positions, group_field)
    table = _examples_table(
        "selected", records, None, None, gathered.selected[positions], group_field
    )
    return f"{note}<h3>a few selected documents</h3>{table}"
