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
  (distsel.methods.embed) and projected on the same components;
- the selector's own plots (Quad's rounds, the mixture search) and a histogram of every numeric
  score column, pool against selection.

Only small columns are read for every document (id, tokens, the group, the selector's score);
the histograms and the map read a sample of rows per part, and texts are read only for the
examples. Every text that comes from the run (documents, ids, groups, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from distsel.app.report.examples import examples_html
from distsel.app.report.gather import Gathered, budget_unit, gather, score_columns, spread
from distsel.app.report.plots import (
    Figures,
    embedding_projection,
    group_share_plot,
    mixture_plots,
    quad_plots,
    score_histograms,
)
from distsel.core import layout
from distsel.core.errors import short
from distsel.core.storage import Store

__all__ = ["budget_unit", "score_columns", "write_report"]

REDACTED = "***"  # how the manifest hides a credential (distsel.app.manifest.redact)
MAX_TARGET_POINTS = 300  # target examples embedded for the map, spread over the target files


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


def _shares_table(shares: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{pool:.4f}</td><td>{chosen:.4f}</td></tr>"
        for name, pool, chosen in zip(
            shares["groups"], shares["pool"], shares["selected"], strict=True
        )
    )
    head = f"<tr><th>{html.escape(shares['field'])}</th><th>pool</th><th>selected</th></tr>"
    return f'<table class="shares" data-unit="{shares["unit"]}">{head}{rows}</table>'


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
    from distsel.core.records import read_target_tasks

    try:
        tasks = read_target_tasks(target["paths"], target.get("text_field", "text"), options)
    except Exception as exc:
        return {}, f"target examples not shown: cannot read them ({short(exc)})"
    names = [name for name, texts in tasks.items() for _ in texts]
    texts = [text for texts in tasks.values() for text in texts]
    if not texts:
        return {}, "target examples not shown: the target files hold none"
    keep = spread(len(texts), MAX_TARGET_POINTS)
    texts, names = [texts[i] for i in keep], [names[i] for i in keep]
    embed = config.get("embed") or {}
    try:
        from distsel.methods.embed import Embedder

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
