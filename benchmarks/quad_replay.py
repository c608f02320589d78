"""Quad replayed offline against stored scores: every bandit variant in seconds, no model run.

Reads a finished benchmarks/selection.py work folder: influence of every pool document
(runs/influence-topk/scores/influence), embeddings, clusters and centroid distances
(runs/quad-paper), each document's best cosine to the target (runs/similarity) and classifier
score (runs/classifier), the covariates the selector computes the same way, and its domain.
Each variant runs distsel's bandit with a scorer that looks the true values up, so its selection
is the one a pipeline run with the same settings would make. Columns: share of the pool
scored, mean score / top-k's, precision on the held-out domain, spread over seeds. The fill
variants set PredictedQuadBandit's audit_share (the allowance kept to audit the fill; default
0.25) and fill_confidence (κ of a fill ranked by ŷ − κ·sd(ŷ); default 0).

    python benchmarks/quad_replay.py --workdir /tmp/selbench_sci --domain scientific
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import read_parts

from distsel.algorithms.influence_model import pool_features
from distsel.core.config import Budget
from distsel.core.pool import random_keys
from distsel.methods.quad import make_bandit
from distsel.methods.quad.options import QuadOptions

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"within_cluster": "random"},
    "predicted": {},
    "predicted, 5% scored": {"max_evaluated": 0.05},
    "predicted, 2% scored": {"max_evaluated": 0.02},
    "fill by mean, no audit": {"fill_confidence": 0.0, "audit_share": 0.0},
    "fill by lcb (1 sd)": {"fill_confidence": 1.0, "audit_share": 0.0},
    "fill by lcb (2 sd)": {"fill_confidence": 2.0, "audit_share": 0.0},
    "audit 1/4": {"fill_confidence": 0.0, "audit_share": 0.25},
    "audit 1/2": {"fill_confidence": 0.0, "audit_share": 0.5},
    "audit 1/4, lcb (1 sd)": {"fill_confidence": 1.0, "audit_share": 0.25},
}
FILL_SETTINGS = ("fill_confidence", "audit_share")  # PredictedQuadBandit's, not QuadOptions


def load(runs: Path, column: str) -> dict[str, np.ndarray]:
    docs = read_parts(runs / "quad-paper" / "docs", ["id", "domain", "tokens_approx"])
    order = {doc: i for i, doc in enumerate(docs["id"])}

    def aligned(folder: Path, name: str) -> list[Any]:
        values = read_parts(folder, ["id", name])
        out: list[Any] = [None] * len(order)
        for doc, value in zip(values["id"], values[name], strict=True):
            out[order[doc]] = value
        return out

    scores = runs / "influence-topk" / "scores" / "influence"
    quad = runs / "quad-paper"
    return {
        "ids": np.array(docs["id"]),
        "domain": np.array(docs["domain"]),
        "tokens": np.array(docs["tokens_approx"]),
        "score": np.array(aligned(scores, column), dtype=np.float64),
        "cluster": np.array(aligned(quad / "scores" / "cluster", "cluster"), dtype=np.int64),
        "embedding": np.array(aligned(quad / "scores" / "embed", "embedding"), dtype=np.float32),
        "distances": np.load(quad / "clusters" / "centroid_distances.npy"),
        "target_cosine": np.array(
            aligned(runs / "similarity" / "scores" / "similarity", "similarity"), dtype=np.float64
        ),
        "classifier": np.array(
            aligned(runs / "classifier" / "scores" / "classifier", "classifier_score"),
            dtype=np.float64,
        ),
    }


def replay(pool: dict[str, np.ndarray], options: dict[str, Any], k: int, seed: int) -> tuple:
    settings = {key: options[key] for key in FILL_SETTINGS if key in options}
    options = {key: value for key, value in options.items() if key not in settings}
    keys = random_keys(list(pool["ids"]), seed)
    features = pool_features(
        pool["embedding"], pool["tokens"], pool["target_cosine"], pool["classifier"]
    )
    bandit = make_bandit(
        pool["cluster"],
        keys,
        pool["tokens"],
        pool["distances"],
        QuadOptions(**options),
        Budget(docs=k),
        seed,
        features,
        pool["classifier"],
    )
    for key, value in settings.items():
        setattr(bandit, key, value)
    chosen = bandit.run(lambda groups: [pool["score"][g] for g in groups])
    return chosen, bandit.state.evaluated


def variant_row(
    name: str, pool: dict[str, np.ndarray], k: int, seeds: int, domain: str
) -> list[str]:
    """One variant over `seeds` seeds: share scored, mean score / top-k's, precision."""
    is_target = pool["domain"] == domain
    top = np.sort(pool["score"])[-k:].mean()
    ratios, precisions, shares = [], [], []
    for seed in range(seeds):
        chosen, evaluated = replay(pool, VARIANTS[name], k, seed)
        ratios.append(pool["score"][chosen].mean() / top)
        precisions.append(is_target[chosen].mean())
        shares.append(evaluated / len(pool["ids"]))
    return [
        name,
        f"{np.mean(shares):.3f}",
        f"{np.mean(ratios):.3f} ± {np.std(ratios):.3f}",
        f"{np.mean(precisions):.3f} ± {np.std(precisions):.3f}",
    ]


def main() -> None:
    parser = harness.new_parser(__doc__)
    helps = {"workdir": "benchmarks/selection.py's", "domain": "the held-out domain"}
    harness.add_common_flags(parser, helps, workdir=harness.REQUIRED, domain="scientific")
    parser.add_argument("--column", default="influence", help="or influence_normalized")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    pool = load(args.workdir / "runs", args.column)
    is_target = pool["domain"] == args.domain
    k = int(is_target.sum())
    rows = [variant_row(name, pool, k, args.seeds, args.domain) for name in VARIANTS]
    top_precision = is_target[np.argsort(-pool["score"])[:k]].mean()
    print(
        f"{args.workdir}: pool {len(pool['ids'])}, k = {k}, column {args.column}, "
        f"{args.seeds} seeds; top-k precision {top_precision:.3f}"
    )
    harness.print_table(["variant", "scored", "mean / top-k", "precision"], rows)


if __name__ == "__main__":
    main()
