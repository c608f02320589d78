"""Quad's sensitivity to the number of clusters k and to τ, replayed on a finished quad.py run.

Reads a `benchmarks/quad.py --workdir W` folder: every pool document's influence from
W/runs/influence-topk/scores/influence (the same proxy and target iHVP quad's actors use), the
MiniLM embeddings from W/runs/quad/scores/embed, and the budget and cluster ids of the default
quad run. For each k it clusters the embeddings with distsel's own k-means (`fit_kmeans`, on a
local Ray), then plays `QuadBandit` with every option at its default except k and τ, its
influence callable looking the values up instead of recomputing them. A replay of the default
run's own clusters checks the lookup: it must reproduce that run's selection.

Columns: selected (documents; fewer than the budget when every arm is spent first), evaluated
(share of the pool whose influence the bandit asked for), ratio (mean influence of the
selection / influence top-k's), clusters and entropy (nats) of the selection over the default
run's clusters, precision (share of the held-out domain), and `ceiling`: the ratio of an oracle
that takes whole clusters in order of their true mean influence.

    python benchmarks/quad_sensitivity.py --workdir /tmp/quad_bench
    python benchmarks/quad_sensitivity.py --workdir W --clusters 53 100 200 --taus 0 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import read_parts

from distsel.core.config import Budget
from distsel.core.pool import random_keys
from distsel.core.storage import Store
from distsel.methods.cluster import assign, centroid_distances, fit_kmeans, load_centroid_distances
from distsel.methods.quad import QuadBandit
from distsel.methods.quad.documents import QuadDocuments
from distsel.methods.quad.options import QuadOptions

COLUMNS = [
    "k",
    "tau",
    "ceiling",
    "selected",
    "evaluated",
    "ratio",
    "clusters",
    "entropy",
    "precision",
]


class Replay:
    """The pool of a finished quad run, with every document's influence."""

    def __init__(self, workdir: Path) -> None:
        quad, topk = workdir / "runs" / "quad", workdir / "runs" / "influence-topk"
        manifest = json.loads((quad / "manifest.json").read_text())
        self.manifest, self.store = manifest, Store(str(quad))
        self.parts = sorted(p.name for p in (quad / "docs").glob("*.parquet"))
        docs = read_parts(quad / "docs", ["id", "tokens_approx", "domain"])
        scored = read_parts(quad / "scores" / "cluster", ["id", "cluster"])
        embedded = read_parts(quad / "scores" / "embed", ["id", "embedding"])
        values = read_parts(topk / "scores" / "influence", ["id", "influence"])
        influence = dict(zip(values["id"], values["influence"], strict=True))
        assert scored["id"] == docs["id"] == embedded["id"], "parts in the same order"
        self.ids = docs["id"]
        self.tokens = np.asarray(docs["tokens_approx"], dtype=np.int64)
        self.domain = np.asarray(docs["domain"])
        self.clusters = np.asarray(scored["cluster"], dtype=np.int64)
        self.embeddings = np.asarray(embedded["embedding"], dtype=np.float32)
        self.influence = np.array([influence[i] for i in self.ids])
        self.seed = manifest["config"]["seed"]
        self.keys = random_keys(self.ids, self.seed)
        self.budget = Budget(**manifest["config"]["select"]["budget"])
        self.held_out = manifest["config"]["target"]["paths"]
        topk = np.sort(self.influence)[::-1][: self.budget.docs]
        self.topk_mean = float(topk.mean())

    def cluster(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        result = fit_kmeans(self.store, self.parts, k, seed=self.seed)
        labels, _ = assign(self.embeddings, result.centroids)
        return labels.astype(np.int64), centroid_distances(result.centroids)

    def play(self, labels: np.ndarray, distances: np.ndarray, options: QuadOptions) -> np.ndarray:
        arms = int(distances.shape[0])
        documents = QuadDocuments.from_arrays(labels, self.keys, self.tokens, arms)
        bandit = QuadBandit(documents, distances, options, self.budget, self.seed)
        chosen = bandit.run(lambda groups: [self.influence[g] for g in groups])
        self.evaluated = bandit.state.evaluated
        return chosen

    def ceiling(self, labels: np.ndarray) -> float:
        k = int(labels.max()) + 1
        means = np.bincount(labels, self.influence, k) / np.maximum(np.bincount(labels, None, k), 1)
        taken: list[int] = []
        for cluster in np.argsort(-means):
            taken += np.flatnonzero(labels == cluster).tolist()
            if len(taken) >= self.budget.docs:
                break
        return float(self.influence[taken[: self.budget.docs]].mean() / self.topk_mean)

    def row(self, chosen: np.ndarray, domain: str) -> dict[str, Any]:
        _, counts = np.unique(self.clusters[chosen], return_counts=True)
        shares = counts / counts.sum()
        return {
            "selected": int(len(chosen)),
            "evaluated": self.evaluated / len(self.ids),
            "ratio": float(self.influence[chosen].mean() / self.topk_mean),
            "clusters": int(len(counts)),
            "entropy": float(-(shares * np.log(shares)).sum()),
            "precision": float(np.mean(self.domain[chosen] == domain)),
        }


def table_row(row: dict[str, Any]) -> list[str]:
    return [
        str(row["k"]),
        f"{row['tau']:.2f}",
        f"{row['ceiling']:.3f}",
        str(row["selected"]),
        f"{row['evaluated']:.3f}",
        f"{row['ratio']:.3f}",
        str(row["clusters"]),
        f"{row['entropy']:.3f}",
        f"{row['precision']:.3f}",
    ]


def sweep(replay: Replay, options: QuadOptions, args: argparse.Namespace) -> list[dict]:
    """Every (k, tau) of --clusters and --taus, played on k-means clusters of the pool."""
    rows = []
    for k in args.clusters:
        labels, distances = replay.cluster(k)
        ceiling = replay.ceiling(labels)
        for tau in args.taus:
            chosen = replay.play(labels, distances, options.model_copy(update={"tau": tau}))
            rows.append({"k": k, "tau": tau, "ceiling": ceiling, **replay.row(chosen, args.domain)})
            print(" | ".join(table_row(rows[-1])), file=sys.stderr, flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    helps = {"workdir": "benchmarks/quad.py's", "domain": "the held-out domain"}
    harness.add_common_flags(parser, helps, workdir=harness.REQUIRED, domain="scientific")
    parser.add_argument("--clusters", type=int, nargs="+", default=[25, 53, 100, 200, 400])
    parser.add_argument("--taus", type=float, nargs="+", default=[-0.5, 0.0, 0.5, 1.0])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="other select.quad options"
    )
    harness.add_common_flags(parser, json=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with harness.local_ray(2):
        replay = Replay(args.workdir)
        options = QuadOptions(**replay.manifest["config"]["select"]["quad"])
        chosen = replay.play(replay.clusters, load_centroid_distances(replay.store), options)
        real = read_parts(args.workdir / "runs" / "quad" / "selected", ["id"])["id"]
        same = sorted(real) == sorted(replay.ids[i] for i in chosen)
        print(f"replay of the default run's clusters reproduces its selection: {same}")
        changes = dict(item.split("=", 1) for item in args.set)
        options = QuadOptions(**{**options.model_dump(), **changes})
        print(f"options: {options.model_dump(exclude={'clusters', 'tau'})}")
        rows = sweep(replay, options, args)
    harness.print_table(COLUMNS, [table_row(r) for r in rows], left=0)
    harness.write_json(args.json, {"reproduced": same, "rows": rows})


if __name__ == "__main__":
    main()
