"""Similarity's ranking through two views of a document, on the task suite's pool and tasks, at
the suite's held-out loss under its token budget: what the embedding can and cannot see.

Views of a document (and of each target example):
  minilm   the embed stage's all-MiniLM-L6-v2 (what the similarity stage uses)
  proxy    the pool proxy's last hidden state, position-weighted: RDS+'s own embedding, taken
           from the model to be trained rather than from a sentence encoder
  both     the two concatenated, each scaled by 1/√2 (its cosine is the mean of the two)
  lexical  minilm and its first layer's mean state concatenated (each scaled by 1/√2): the
           semantic view with a near-lexical one from the same forward pass
  ngram    TF-IDF over DSIR's hashed word uni- and bigrams (10,000 buckets, log counts, the
           pool's IDF), L2-normalised: a sparse lexical view of register as much as of topic
  hybrid   minilm and ngram concatenated (each scaled by 1/√2), as hybrid retrieval does
Scores: share (the stage's earlier default: the share of targets among a document's k = 20
nearest rows of the targets and the pool, with a tie-break), cosine (RDS+'s max cosine over the
examples), rr: a round-robin of two rows' orders, and adaptive: the stage's
`nearest_target_share`, the share in the smallest neighbourhood that holds one target example,
1 / (1 + the pool documents closer than the nearest example), which is never zero (the fixed-k
share is zero for most of a task-style target's budget, where its tie-break ranks); the
stage's default is hybrid-adaptive. logistic: the
density ratio p_T / p_pool estimated by a logistic regression of target examples against the
pool (log-linear, so it extrapolates where the share has no target neighbour to count),
cross-fitted in two halves so that no document is scored by a model that saw it. `--view-rows`
runs some of the rows (random and the default always run). Random's and the
default's selections are measured again at the next eval seeds (the evaluation's own noise),
and at both sets of seeds together. `paired Δ`: the row's loss minus random's at the same seed
(mean ± sd over the seeds), which leaves out what a seed does to every selection alike;
`vs random` is the suite's verdict (by more than twice the larger sd). `near tok`: the share of
a share or adaptive row's selected tokens that have a target example among their 20 nearest
documents (the similarity selector warns below a quarter).

Each row walks its order and fills the suite's token budget; the loss (mean ± sd over the
eval seeds) comes from the suite's Evaluator and its cache. Takes the suite's flags and reads
its finished runs, so run benchmarks/suite.py first:

    python benchmarks/similarity_views.py --workdir /tmp/suite --corpus ../shared/data/corpus
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import harness
import numpy as np
import suite
import torch

from distsel.algorithms.similarity import (
    cosine_scores,
    fit_betr_classifier,
    has_target_neighbour,
    nearest_target_share,
    predict_scores,
    round_robin,
)
from distsel.core.samplers import fill_limit
from distsel.methods.embed import Embedder
from distsel.methods.similarity import ngram_features

Views = dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (pool rows, target rows)
NEIGHBOURS = 20  # the stage's default


def share(pool: np.ndarray, targets: np.ndarray, block: int = 1024) -> np.ndarray:
    """The earlier default: of each document's k nearest rows among the targets and the other
    pool documents, the share of targets, plus (c_T − c_R) / (4k) from the mean cosine of its k
    best on each side, which only breaks ties."""
    k, scores = NEIGHBOURS, np.empty(len(pool))
    for start in range(0, len(pool), block):
        rows = pool[start : start + block]
        to_target, to_pool = rows @ targets.T, rows @ pool.T
        to_pool[np.arange(len(rows)), np.arange(start, start + len(rows))] = -np.inf
        nearest = np.argpartition(-np.concatenate([to_target, to_pool], axis=1), k - 1, axis=1)
        counted = (nearest[:, :k] < len(targets)).mean(axis=1)
        best = [
            -np.partition(-side, k - 1, axis=1)[:, :k].mean(axis=1) for side in (to_target, to_pool)
        ]
        scores[start : start + block] = counted + (best[0] - best[1]) / (4 * k)
    return scores


def cosine(pool: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return cosine_scores(pool, targets, "max")


def adaptive(pool: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The stage's `nearest_target_share`, the pool itself as the reference."""
    return nearest_target_share([pool], [targets], [pool], np.arange(len(pool)))


def near_target(row: str, scores: np.ndarray) -> np.ndarray:
    """Which scores have a target example among their k nearest rows."""
    if "share" in row:
        return scores > 1 / (2 * NEIGHBOURS)  # a share is 0 or ≥ 1/k; its tie-break < 1/(2k)
    return has_target_neighbour(scores, NEIGHBOURS)


def logistic(pool: np.ndarray, targets: np.ndarray, halves: int = 2) -> np.ndarray:
    """The decision value of a logistic regression of targets (1) against pool documents (0),
    log p_T / p_pool up to a constant; each pool document scored by the model fitted without it."""
    half = np.random.default_rng(0).integers(0, halves, len(pool))
    scores = np.empty(len(pool))
    for h in range(halves):
        negatives = pool[half != h]
        features = np.concatenate([targets, negatives])
        labels = np.r_[np.ones(len(targets)), np.zeros(len(negatives))]
        scores[half == h] = predict_scores(fit_betr_classifier(features, labels), pool[half == h])
    return scores


def tfidf(pool_texts: list[str], target_texts: list[str], buckets: int = 10_000) -> Any:
    """L2-normalised TF-IDF rows (the classifier's log counts × the pool's IDF) of hashed uni- and
    bigrams."""
    import scipy.sparse as sp

    pool, targets = (ngram_features(texts, buckets, 2) for texts in (pool_texts, target_texts))
    idf = sp.diags(np.log((1 + pool.shape[0]) / (1 + pool.getnnz(axis=0))) + 1)

    def rows(matrix: Any) -> np.ndarray:
        dense = (matrix @ idf).toarray().astype(np.float32)
        return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)

    return rows(pool), rows(targets)


def interleaved(*scores: np.ndarray) -> np.ndarray:
    """A score whose order is the round-robin over the given scores' orders."""
    order = round_robin(np.stack(scores), len(scores[0]))
    position = np.empty(len(order))
    position[order] = -np.arange(len(order))
    return position


ROWS: dict[str, Callable[[Views], np.ndarray]] = {
    "hybrid-adaptive (default)": lambda v: adaptive(*v["hybrid"]),
    "minilm-share": lambda v: share(*v["minilm"]),
    "minilm-cosine": lambda v: cosine(*v["minilm"]),
    "proxy-share": lambda v: share(*v["proxy"]),
    "proxy-cosine": lambda v: cosine(*v["proxy"]),
    "both-share": lambda v: share(*v["both"]),
    "both-cosine": lambda v: cosine(*v["both"]),
    "rr minilm-share + proxy-cosine": lambda v: interleaved(
        share(*v["minilm"]), cosine(*v["proxy"])
    ),
    "lexical-share": lambda v: share(*v["lexical"]),
    "minilm-adaptive": lambda v: adaptive(*v["minilm"]),
    "minilm-logistic": lambda v: logistic(*v["minilm"]),
    "ngram-share": lambda v: share(*v["ngram"]),
    "ngram-cosine": lambda v: cosine(*v["ngram"]),
    "ngram-adaptive": lambda v: adaptive(*v["ngram"]),
    "hybrid-share": lambda v: share(*v["hybrid"]),
    "rr minilm-share + ngram-share": lambda v: interleaved(share(*v["minilm"]), share(*v["ngram"])),
    "rr minilm-share + ngram-cosine": lambda v: interleaved(
        share(*v["minilm"]), cosine(*v["ngram"])
    ),
}
DEFAULT_ROW = "hybrid-adaptive (default)"
SUFFIXES = (", next seeds", ", all seeds")  # the same selection measured again (again_rows)


class LayerOutput(torch.nn.Module):
    """A transformers encoder whose `last_hidden_state` is the output of layer `layer`."""

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        super().__init__()
        self.model, self.layer, self.config = model, layer, model.config

    def forward(self, **inputs: Any) -> SimpleNamespace:
        states = self.model(**inputs, output_hidden_states=True).hidden_states
        return SimpleNamespace(last_hidden_state=states[self.layer])


def concatenated(*views: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each view side by side, scaled so that a cosine is the views' mean cosine."""
    scale = np.float32(1 / np.sqrt(len(views)))
    return tuple(scale * np.concatenate(sides, axis=1) for sides in zip(*views, strict=True))


def views(
    root: Path, task: suite.Task, encoders: dict[str, Embedder], pools: dict[Any, np.ndarray]
) -> Views:
    """Each view of the pool and of the task's targets; the pool's are kept in `pools`, since
    the suite's tasks share their pool."""
    scored = suite.scored_folder(root, task, "")
    pool = harness.read_parts(scored / "scores" / "embed", ["embedding"])["embedding"]
    texts = harness.read_parts(scored / "docs", ["text"])["text"]
    targets = [r["text"] for r in task.target]

    def embedded(name: str) -> np.ndarray:
        key = (name, hash(tuple(texts)))
        if key not in pools:
            pools[key] = encoders[name].embed(texts)
        return pools[key]

    found = {
        "minilm": (np.asarray(pool, dtype=np.float32), encoders["minilm"].embed(targets)),
        **{name: (embedded(name), encoders[name].embed(targets)) for name in ("proxy", "layer1")},
    }
    found["both"] = concatenated(found["minilm"], found["proxy"])
    found["lexical"] = concatenated(found["minilm"], found.pop("layer1"))
    found["ngram"] = tfidf(texts, targets)
    found["hybrid"] = concatenated(found["minilm"], found["ngram"])
    return found


def measure(
    evaluator: suite.Evaluator,
    task: suite.Task,
    chosen: dict[str, list[Any]],
    seeds: range,
) -> dict[str, Any]:
    """Held-out loss of proxies trained on the chosen documents (ids, texts, domains)."""
    heldout = [r["text"] for r in task.heldout]
    losses = [evaluator.loss(chosen["id"], chosen["text"], heldout, s) for s in seeds]
    domains = Counter(chosen["domain"]).most_common(3)
    return {
        "loss": float(np.mean(losses)),
        "loss_sd": float(np.std(losses)),
        "losses": losses,
        "docs": len(chosen["id"]),
        "median_tokens": float(np.median([math.ceil(len(t) / 4) for t in chosen["text"]])),
        "domains": ", ".join(f"{name} {n}" for name, n in domains),
    }


def again_rows(
    name: str,
    evaluator: suite.Evaluator,
    task: suite.Task,
    chosen: dict[str, list[Any]],
    seeds: range,
) -> dict[str, dict[str, Any]]:
    """The same selection at the next seeds, and at all of them."""
    after = range(seeds.stop, 2 * seeds.stop)
    return {
        f"{name}{SUFFIXES[0]}": measure(evaluator, task, chosen, after),
        f"{name}{SUFFIXES[1]}": measure(evaluator, task, chosen, range(after.stop)),
    }


def table_line(name: str, r: dict[str, Any], table: dict[str, dict[str, Any]]) -> list[str]:
    """A row of the task's table, judged against random at the same seeds."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), "")
    random = table[f"random{suffix}"]
    verdict = "" if r is random else "+=-"[1 - suite.beats(r, random)]
    loss = f"{r['loss']:.4f} ± {r['loss_sd']:.3f}"
    paired = np.subtract(r["losses"], random["losses"])
    difference = "" if r is random else f"{paired.mean():+.4f} ± {paired.std():.3f}"
    near = f"{r['near']:.2f}" if "near" in r else "-"
    counts = [str(r["docs"]), f"{r['median_tokens']:.0f}", r["domains"]]
    return [name, loss, verdict, difference, near, *counts]


def view_rows_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view-rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")


def main() -> None:
    args = suite.parse_args(view_rows_flag)
    wanted = {DEFAULT_ROW, *args.view_rows.split(",")}
    if unknown := wanted - ROWS.keys():
        raise SystemExit(f"--view-rows: no row named {', '.join(sorted(unknown))}")
    root = args.workdir.resolve()
    tasks, pool = suite.build(args)
    budget = suite.budgets(args, pool)["tokens"]["tokens"]
    evaluator = suite.Evaluator(args, root, [r["text"] for _, rs in pool for r in rs])
    encoders = {
        "minilm": Embedder(),
        "proxy": Embedder(str(root / "runs" / "base" / "proxy"), pooling="position_weighted"),
        "layer1": Embedder(dtype="float32"),
    }
    encoders["layer1"].model = LayerOutput(encoders["layer1"].model, 1)
    seeds = range(args.eval_seeds)
    losses: dict[str, list[float]] = {}
    pools: dict[Any, np.ndarray] = {}
    for task in tasks:
        found = views(root, task, encoders, pools)
        columns = ["id", "text", "tokens_approx", "domain"]
        docs = harness.read_parts(suite.scored_folder(root, task, "") / "docs", columns)
        tokens = np.asarray(docs["tokens_approx"])
        random = harness.read_selection(root / "runs" / task.name / "random.tokens")
        table = {"random": measure(evaluator, task, random, seeds)}
        table |= again_rows("random", evaluator, task, random, seeds)
        for name, score in ROWS.items():
            if name not in wanted:
                continue
            values = score(found)
            order = np.lexsort((np.arange(len(values)), -values))
            rows = fill_limit(order, tokens, budget, by_tokens=True).tolist()
            chosen = {c: [docs[c][i] for i in rows] for c in ("id", "text", "domain")}
            table[name] = measure(evaluator, task, chosen, seeds)
            if name.endswith(("share", "adaptive", "(default)")) and not name.startswith("rr "):
                near = near_target(name, values[rows])
                table[name]["near"] = float(tokens[rows][near].sum() / tokens[rows].sum())
            if name == DEFAULT_ROW:
                table |= again_rows(name, evaluator, task, chosen, seeds)
        for name, r in table.items():
            losses.setdefault(name, []).append(r["loss"])
        harness.print_table(
            [
                "row",
                "loss",
                "vs random",
                "paired Δ",
                "near tok",
                "docs",
                "median tok",
                "top domains",
            ],
            [table_line(name, r, table) for name, r in table.items()],
            title=f"{task.name} / tokens ({budget:,})",
        )
    harness.print_table(
        ["row", "mean loss"],
        [[name, f"{np.mean(v):.4f}"] for name, v in losses.items()],
        title="mean loss over the tasks",
    )


if __name__ == "__main__":
    sys.exit(main())
