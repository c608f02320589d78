"""A self-contained HTML report of a finished run, with PNG plots embedded in the page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from distsel.storage import Store

MAX_ROWS = 200_000
MAX_POINTS = 5_000
_BASELINE = {"uniform": "#2ca02c", "natural": "#d62728"}


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sampled_scores(store: Store, stage: str, limit: int) -> pa.Table:
    """Rows of `scores/<stage>`, spread over its parts, at most about `limit`."""
    parts = store.list(f"scores/{stage}", ".parquet")
    if not parts:
        return pa.table({})
    per_part = max(1, limit // len(parts))
    tables = []
    for part in parts:
        table = store.read_table(f"scores/{stage}/{part}")
        if table.num_rows > per_part:
            step = table.num_rows / per_part
            table = table.take(np.floor(np.arange(per_part) * step).astype(np.int64))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def _selected_ids(store: Store) -> set[str]:
    ids: set[str] = set()
    for part in store.list("selected", ".parquet"):
        ids.update(store.read_table(f"selected/{part}", columns=["id"]).column("id").to_pylist())
    return ids


def score_histograms(store: Store, selected: set[str]) -> list[tuple[str, str]]:
    plt = _pyplot()
    figures = []
    for stage in store.list("scores"):
        table = _sampled_scores(store, stage, MAX_ROWS)
        if not table.num_rows:
            continue
        chosen = np.array([i in selected for i in table.column("id").to_pylist()])
        for name in table.column_names:
            kind = table.schema.field(name).type
            if name == "id" or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                continue
            values = table.column(name).to_numpy(zero_copy_only=False).astype(float)
            figure, axis = plt.subplots(figsize=(6, 3.2))
            bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=50)
            axis.hist(values, bins=bins, alpha=0.6, label="pool", density=True)
            if chosen.any():
                axis.hist(values[chosen], bins=bins, alpha=0.6, label="selected", density=True)
            axis.set_title(f"{stage}: {name}")
            axis.legend()
            figures.append((f"{stage}: {name}", _png(figure)))
            plt.close(figure)
    return figures


def group_shares(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    groups = manifest.get("by_group")
    if not groups or not manifest["selected_docs"]:
        return []
    plt = _pyplot()
    names = list(groups["pool"])
    pool = np.array([groups["pool"][n] for n in names]) / manifest["accepted_docs"]
    chosen = np.array([groups["selected"].get(n, 0) for n in names]) / manifest["selected_docs"]
    figure, axis = plt.subplots(figsize=(max(5, len(names) * 0.8), 3.2))
    x = np.arange(len(names))
    axis.bar(x - 0.2, pool, 0.4, label="pool")
    axis.bar(x + 0.2, chosen, 0.4, label="selected")
    axis.set_xticks(x, names, rotation=30, ha="right")
    axis.set_ylabel("share of documents")
    axis.set_title(f"share per {groups['field']}")
    axis.legend()
    result = [(f"share per {groups['field']}", _png(figure))]
    plt.close(figure)
    return result


def embedding_projection(store: Store, selected: set[str]) -> list[tuple[str, str]]:
    """The first two principal components of a sample of embeddings, selected in colour."""
    table = _sampled_scores(store, "embed", MAX_POINTS)
    if not table.num_rows or "embedding" not in table.column_names:
        return []
    from distsel.scoring.embed import embedding_matrix

    vectors = embedding_matrix(table.column("embedding"))
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    chosen = np.array([i in selected for i in table.column("id").to_pylist()])
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.scatter(*points[~chosen].T, s=4, alpha=0.35, label="not selected", color="#999999")
    axis.scatter(*points[chosen].T, s=5, alpha=0.7, label="selected", color="#d62728")
    axis.set_title("embeddings, first two principal components")
    axis.legend()
    result = [("embeddings (PCA)", _png(figure))]
    plt.close(figure)
    return result


def quad_plots(manifest: dict[str, Any]) -> list[tuple[str, str]]:
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
    figures = [("Quad: reward per arm over rounds", _png(figure))]
    plt.close(figure)
    counts = {int(k): v for k, v in quad["selected_per_cluster"].items()}
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    clusters = sorted(counts, key=counts.get, reverse=True)
    axis.bar(range(len(clusters)), [counts[c] for c in clusters])
    axis.set_xlabel(f"cluster (of {quad['clusters']}), most selected first")
    axis.set_ylabel("selected documents")
    axis.set_title("Quad: selected documents per cluster")
    figures.append(("Quad: selected documents per cluster", _png(figure)))
    plt.close(figure)
    return figures


def mixture_plots(manifest: dict[str, Any]) -> list[tuple[str, str]]:
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
    for axis in axes.flat[len(groups) :]:
        axis.set_visible(False)
    axes[0][0].set_ylabel("target loss")
    figure.suptitle("mixture: target loss of each trial (* best)")
    figure.tight_layout()
    figures = [("mixture: target loss vs each group's weight", _png(figure))]
    plt.close(figure)

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
    figures.append(("mixture: best target loss so far", _png(figure)))
    plt.close(figure)
    return figures


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
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


def write_report(output: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write OUTPUT/report.html from a finished run; returns its path."""
    store = Store(output, storage_options)
    manifest = store.read_json("manifest.json")
    selected = _selected_ids(store)
    figures = (
        group_shares(manifest)
        + quad_plots(manifest)
        + mixture_plots(manifest)
        + score_histograms(store, selected)
        + embedding_projection(store, selected)
    )
    images = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{p}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, p in figures
    )
    section = manifest.get(manifest["config"]["select"]["method"]) or {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>distsel report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}th,td{{padding:2px 10px;text-align:left}}
figure{{display:inline-block;margin:8px}}pre{{background:#f4f4f4;padding:8px}}</style>
</head><body><h1>distsel report</h1><p>{html.escape(output)}</p>
<table>{_summary_rows(manifest)}</table>{images}
<h2>selector</h2><pre>{html.escape(json.dumps(section, indent=2, default=str))}</pre>
<h2>stages</h2><pre>{html.escape(json.dumps(manifest["stages"], indent=2))}</pre>
</body></html>"""
    store.write_bytes("report.html", page.encode())
    return store.path("report.html")
