"""The report's plots: matplotlib figures, embedded in the page as base64 PNG."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from distsel.app.report.gather import Gathered

Figures = list[tuple[str, str]]  # (caption, base64 PNG)
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


def _finish(plt: Any, figure: Any, caption: str) -> tuple[str, str]:
    picture = (caption, _png(figure))
    plt.close(figure)
    return picture


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
