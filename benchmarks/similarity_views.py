"""Similarity's ranking through two views of a document, on the task suite's pool and tasks, at
the suite's held-out loss under its token budget: what the embedding can and cannot see.

Views of a document (and of each target example):
  minilm   the embed stage's all-MiniLM-L6-v2 (what the similarity stage uses)
  proxy    the pool proxy's last hidden state, position-weighted: RDS+'s own embedding, taken
           from the model to be trained rather than from a sentence encoder
  both     the two concatenated, each scaled by 1/√2 (its cosine is the mean of the two)
Scores: share (the stage's default neighbour share, k = 20, the pool as the reference), cosine
(RDS+'s max cosine over the examples), and rr: a round-robin of minilm-share and proxy-cosine.

Each row walks its order and fills the suite's token budget; the loss (mean ± sd over the
eval seeds) comes from the suite's Evaluator and its cache. Takes the suite's flags and reads
its finished runs, so run benchmarks/suite.py first:

    python benchmarks/similarity_views.py --workdir /tmp/suite --corpus ../shared/data/corpus
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
import suite

from distsel.algorithms.similarity import cosine_scores, neighbour_target_share, round_robin
from distsel.core.samplers import fill_limit
from distsel.methods.embed import Embedder

Views = dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (pool rows, target rows)


def share(pool: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return neighbour_target_share(pool, targets, pool, 20, np.arange(len(pool)))


def cosine(pool: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return cosine_scores(pool, targets, "max")


def interleaved(*scores: np.ndarray) -> np.ndarray:
    """A score whose order is the round-robin over the given scores' orders."""
    order = round_robin(np.stack(scores), len(scores[0]))
    position = np.empty(len(order))
    position[order] = -np.arange(len(order))
    return position


ROWS: dict[str, Callable[[Views], np.ndarray]] = {
    "minilm-share (default)": lambda v: share(*v["minilm"]),
    "minilm-cosine": lambda v: cosine(*v["minilm"]),
    "proxy-share": lambda v: share(*v["proxy"]),
    "proxy-cosine": lambda v: cosine(*v["proxy"]),
    "both-share": lambda v: share(*v["both"]),
    "both-cosine": lambda v: cosine(*v["both"]),
    "rr minilm-share, proxy-cosine": lambda v: interleaved(
        share(*v["minilm"]), cosine(*v["proxy"])
    ),
}


def views(root: Path, task: suite.Task, proxy: Embedder, minilm: Embedder) -> Views:
    scored = suite.scored_folder(root, task, "")
    pool = harness.read_parts(scored / "scores" / "embed", ["embedding"])["embedding"]
    texts = harness.read_parts(scored / "docs", ["text"])["text"]
    targets = [r["text"] for r in task.target]
    found = {
        "minilm": (np.asarray(pool, dtype=np.float32), minilm.embed(targets)),
        "proxy": (proxy.embed(texts), proxy.embed(targets)),
    }
    (pool_a, targets_a), (pool_b, targets_b) = found["minilm"], found["proxy"]
    half = np.float32(np.sqrt(0.5))
    found["both"] = (
        half * np.concatenate([pool_a, pool_b], axis=1),
        half * np.concatenate([targets_a, targets_b], axis=1),
    )
    return found


def measure(
    evaluator: suite.Evaluator, task: suite.Task, chosen: dict[str, list[Any]], seeds: int
) -> dict[str, Any]:
    """Held-out loss of proxies trained on the chosen documents (ids, texts, domains)."""
    heldout = [r["text"] for r in task.heldout]
    losses = [evaluator.loss(chosen["id"], chosen["text"], heldout, s) for s in range(seeds)]
    domains = Counter(chosen["domain"]).most_common(3)
    return {
        "loss": float(np.mean(losses)),
        "loss_sd": float(np.std(losses)),
        "docs": len(chosen["id"]),
        "median_tokens": float(np.median([math.ceil(len(t) / 4) for t in chosen["text"]])),
        "domains": ", ".join(f"{name} {n}" for name, n in domains),
    }


def table_line(name: str, r: dict[str, Any], random: dict[str, Any]) -> list[str]:
    verdict = "" if r is random else "+=-"[1 - suite.beats(r, random)]
    loss = f"{r['loss']:.4f} ± {r['loss_sd']:.3f}"
    return [name, loss, verdict, str(r["docs"]), f"{r['median_tokens']:.0f}", r["domains"]]


def main() -> None:
    args = suite.parse_args()
    root = args.workdir.resolve()
    tasks, pool = suite.build(args)
    budget = suite.budgets(args, pool)["tokens"]["tokens"]
    evaluator = suite.Evaluator(args, root, [r["text"] for _, rs in pool for r in rs])
    proxy = Embedder(str(root / "runs" / "base" / "proxy"), pooling="position_weighted")
    minilm = Embedder()
    losses: dict[str, list[float]] = {}
    for task in tasks:
        found = views(root, task, proxy, minilm)
        columns = ["id", "text", "tokens_approx", "domain"]
        docs = harness.read_parts(suite.scored_folder(root, task, "") / "docs", columns)
        tokens = np.asarray(docs["tokens_approx"])
        random = harness.read_selection(root / "runs" / task.name / "random.tokens")
        table = {"random": measure(evaluator, task, random, args.eval_seeds)}
        for name, score in ROWS.items():
            values = score(found)
            order = np.lexsort((np.arange(len(values)), -values))
            rows = fill_limit(order, tokens, budget, by_tokens=True).tolist()
            chosen = {c: [docs[c][i] for i in rows] for c in ("id", "text", "domain")}
            table[name] = measure(evaluator, task, chosen, args.eval_seeds)
        for name, r in table.items():
            losses.setdefault(name, []).append(r["loss"])
        harness.print_table(
            ["row", "loss", "vs random", "docs", "median tok", "top domains"],
            [table_line(name, r, table["random"]) for name, r in table.items()],
            title=f"{task.name} / tokens ({budget:,})",
        )
    harness.print_table(
        ["row", "mean loss"],
        [[name, f"{np.mean(v):.4f}"] for name, v in losses.items()],
        title="mean loss over the tasks",
    )


if __name__ == "__main__":
    sys.exit(main())
