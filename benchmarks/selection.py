"""Every target-aware selector on one held-out domain: share of the pool scored by influence,
mean true influence against influence top-k's, precision, target loss of an equal-token proxy,
wall seconds.

Split as in heldout_precision.py: `--target-size` documents of `--domain` are the target, the
pool is every other document (at most `--limit-per-domain` per file); budget k = the `--domain`
documents left in the pool. Rows, in run order (one local Ray):

  random, dsir (Gumbel top-k), classifier (target vs pool, hashed n-grams)
  similarity            RDS+ cosine on MiniLM embeddings (embed.max_length --embed-max-length)
  influence-topk        trains the proxy, influence of every pool document, top-k by I(z)
  influence-topk-norm   the same scores (its selection phase only), top-k by I(z)/‖∇L(z)‖
  influence-topk-max    its proxy, `target_aggregation: max` (best cosine over target examples)
  quad-paper            `within_cluster: random`, raw influence (Zhang et al.'s form)
  quad                  distsel's default Quad (influence model), raw influence
  quad-norm             the same with select.influence.normalize: true

The quad runs reuse influence-topk's proxy (proxy.path) and the similarity run's embeddings, and
the later ones the first's clusters (copied folders, so their wall s excludes embedding and, after
the first, clustering). `infl / topk`: mean raw influence of the selection over influence-topk's;
`norm / topk`: the same for normalised influence against influence-topk-norm. The true values come
from influence-topk's scores of every pool document. Target loss: a fresh proxy trained in this
process on `--eval-train-tokens` tokens of each selection (harness.evaluate_selection), mean
nats/token over the target texts, averaged over `--eval-seeds` training seeds (more for the rows
named in `--eval-seeds-for`, e.g. the ones that decide a goal; the count follows the loss in
brackets) ± their standard deviation (one seed's loss moves by a few hundredths); kept in
runs/<row>/eval.json (the first seed) and eval-seed<s>.json, and reused while the selection and
the evaluation settings stay the same.

    python benchmarks/selection.py --domain scientific \
        --json benchmarks/results/selection_scientific.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import fmt, positive

# row -> (select.method, select options, influence.normalize)
ROWS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "random": ("random", {}, False),
    "dsir": ("dsir", {}, False),
    "classifier": ("classifier", {}, False),
    "similarity": ("similarity", {}, False),
    "influence-topk": ("influence", {}, False),
    "influence-topk-norm": ("influence", {}, True),
    "influence-topk-max": ("influence", {"target_aggregation": "max"}, True),
    "quad-paper": ("quad", {"within_cluster": "random"}, False),
    "quad": ("quad", {}, False),
    "quad-norm": ("quad", {}, True),
}
GOAL_SCORED, GOAL_RATIO, GOAL_LOSS_GAP, GOAL_NORM_PRECISION = 0.10, 0.90, 0.03, 0.85


COLUMNS = ["method", "scored", "infl / topk", "norm / topk", "precision", "target loss", "wall s"]


def raw_config(row: str, args: argparse.Namespace, work: harness.Workspace, k: int) -> dict:
    method, options, normalize = ROWS[row]
    select: dict[str, Any] = {"method": method, "budget": {"docs": k}}
    if options:
        select[method] = dict(options)
    if method in ("influence", "quad"):
        select["influence"] = {**select.get("influence", {}), "normalize": normalize}
    raw: dict[str, Any] = {
        "input": {"paths": [str(work.pool)], "group_field": "domain", "rows_per_part": 500},
        "target": {"paths": [str(work.target)]},
        "output": {"path": str(work.runs / row)},
        "select": select,
        "embed": {"max_length": args.embed_max_length},
        "proxy": {"train_tokens": args.proxy_train_tokens},
        "seed": args.seed,
    }
    if method == "quad" or row == "influence-topk-max":
        raw["proxy"]["path"] = str(work.runs / "influence-topk" / "proxy")
    if method == "influence":
        raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": 2}}
    return raw


def workspace(root: Path) -> harness.Workspace:
    """The work folder's layout: pool/, t.jsonl (the target) and runs/<row>/."""
    return harness.Workspace(root, target_name="t.jsonl")


def prepare_folder(row: str, runs: Path) -> None:
    """Start a row from an earlier run's scored folder where it shares the work."""
    source = {
        "influence-topk-norm": "influence-topk",
        "quad-paper": "similarity",
        "quad": "quad-paper",
        "quad-norm": "quad-paper",
    }.get(row)
    if source and (runs / source / "manifest.json").exists():
        harness.copy_scored(runs / source, runs / row)


def ratio(selection: list[str], values: dict[str, float], best: list[str]) -> float | None:
    mine = [values[i] for i in selection if i in values]
    top = [values[i] for i in best if i in values]
    return float(np.mean(mine) / np.mean(top)) if mine and top else None


def run_rows(
    rows: list[str], args: argparse.Namespace, work: harness.Workspace, held: harness.HeldOut
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with harness.local_ray():
        for row in rows:
            if not args.resume or not (work.runs / row / "manifest.json").exists():
                prepare_folder(row, work.runs)
            raw = raw_config(row, args, work, held.k)
            result = harness.run_method(row, raw, args.domain, len(held.records), args.resume)
            results[row] = result
            harness.progress(
                row,
                f"precision {fmt(result.get('precision'), '.3f')}, "
                f"{fmt(result.get('wall_seconds'), '.1f')} s",
            )
    return results


def evaluate_rows(
    results: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    work: harness.Workspace,
    held: harness.HeldOut,
) -> Any:
    """Each selection's target loss (cached in runs/<row>/eval.json) and mean influence
    against the top-k rows'; returns the evaluation proxies' settings."""
    scores = work.runs / "influence-topk" / "scores" / "influence"
    raw_values = harness.read_column(scores, "influence")
    norm_values = harness.read_column(scores, "influence_normalized")
    selections = {
        row: harness.read_selection(Path(r["output"]))
        for row, r in results.items()
        if "error" not in r
    }
    best_raw = (selections.get("influence-topk") or {}).get("id", [])
    best_norm = (selections.get("influence-topk-norm") or {}).get("id", [])
    config = harness.eval_proxy_config(args, raw_config("random", args, work, held.k))
    for row, selection in selections.items():
        seeds = range(args.seed, args.seed + row_seeds(args, row))
        losses = [
            harness.cached_target_loss(
                row,
                eval_cache(work, row, seed, args.seed),
                selection,
                config,
                seed,
                held.target_texts,
            )
            for seed in seeds
        ]
        results[row].update(
            target_loss=float(np.mean(losses)),
            target_loss_sd=float(np.std(losses)),
            target_losses=losses,
            eval_seeds=len(losses),
            influence_ratio=ratio(selection["id"], raw_values, best_raw),
            normalized_ratio=ratio(selection["id"], norm_values, best_norm),
        )
    return config


def row_seeds(args: argparse.Namespace, row: str) -> int:
    """The evaluation seeds of `row`: its `--eval-seeds-for` count, else `--eval-seeds`."""
    return args.eval_seeds_for.get(row, args.eval_seeds)


def seed_counts(text: str) -> dict[str, int]:
    """`row=n,row=n` → {row: n}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or pair[0] not in ROWS for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected row=n for rows of {', '.join(ROWS)}")
    return {row: positive(count) for row, count in pairs}


def eval_cache(work: harness.Workspace, row: str, seed: int, first: int) -> Path:
    return work.runs / row / ("eval.json" if seed == first else f"eval-seed{seed}.json")


def table_row(row: str, result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return harness.failed_row({**result, "method": row}, len(COLUMNS))
    return [
        row,
        fmt(result["evaluated_share"], ".3f"),
        fmt(result.get("influence_ratio"), ".3f"),
        fmt(result.get("normalized_ratio"), ".3f"),
        fmt(result["precision"], ".3f"),
        f"{fmt(result.get('target_loss'), '.4f')} ± {fmt(result.get('target_loss_sd'), '.3f')}"
        f" ({result.get('eval_seeds', '-')})",
        fmt(result["wall_seconds"], ".1f"),
    ]


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(
        parser,
        corpus=harness.DEFAULT_CORPUS,
        domain="scientific",
        target_size=300,
        limit_per_domain=250,
        seed=0,
    )
    parser.add_argument("--embed-max-length", type=positive, default=128)
    parser.add_argument("--proxy-train-tokens", type=positive, default=500_000)
    harness.add_eval_flags(parser, train_tokens=200_000)
    parser.add_argument("--eval-seeds", type=positive, default=3, help="evaluation proxies per row")
    parser.add_argument(
        "--eval-seeds-for", type=seed_counts, default={}, help="row=n,...: n proxies for those rows"
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset")
    helps = {"resume": "read back finished runs"}
    harness.add_common_flags(parser, helps, workdir=None, resume=False, json=None)
    return parser.parse_args()


def header(args: argparse.Namespace, held: harness.HeldOut) -> str:
    size = len(held.records)
    return (
        f"domain {args.domain} | target {len(held.target)} docs | pool {size} docs (at most "
        f"{args.limit_per_domain} per domain) | k = {held.k} | random expected precision "
        f"{held.k / size:.3f} | seed {args.seed} | {os.cpu_count()}-core machine, CPU only"
    )


def main() -> None:
    args = parse_args()
    rows = [r for r in ROWS if r in args.rows.split(",")]
    harness.setup_logging()
    began = time.perf_counter()
    held = harness.held_out(args)
    print(header(args, held), file=sys.stderr, flush=True)
    with harness.work_folder(args.workdir, "selection_bench_") as root:
        work = workspace(root)
        work.prepare(held, args.resume)
        results = run_rows(rows, args, work, held)
        config = evaluate_rows(results, args, work, held)
    print(header(args, held))
    harness.print_table(COLUMNS, [table_row(row, r) for row, r in results.items()])
    for line in goal_lines(results):
        print(line)
    print(
        f"evaluation proxies: {config.train_tokens} train tokens each, {args.eval_seeds} seeds "
        f"per row{more_seeds(args)}, {config.tokenizer} tokenizer; total "
        f"{time.perf_counter() - began:.0f} s"
    )
    summary = {"header": header(args, held), "k": held.k, "pool_docs": len(held.records)}
    harness.write_json(args.json, {**summary, "results": results})


def more_seeds(args: argparse.Namespace) -> str:
    counts = ", ".join(f"{row} {n}" for row, n in args.eval_seeds_for.items())
    return f" ({counts})" if counts else ""


def goal_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    def value(row: str, key: str) -> float | None:
        return (results.get(row) or {}).get(key)

    losses = [r["target_loss"] for r in results.values() if r.get("target_loss") is not None]
    best_loss = min(losses) if losses else None
    lines = []
    for row, key in (("quad", "influence_ratio"), ("quad-norm", "normalized_ratio")):
        if row not in results or "error" in results[row]:
            continue
        share, got, loss = value(row, "evaluated_share"), value(row, key), value(row, "target_loss")
        checks = [
            (
                f"scores <= {GOAL_SCORED:.0%} of the pool",
                share is not None and share <= GOAL_SCORED,
                fmt(share, ".3f"),
            ),
            (
                f">= {GOAL_RATIO} of top-k's mean influence",
                got is not None and got >= GOAL_RATIO,
                fmt(got, ".3f"),
            ),
            (
                f"target loss within {GOAL_LOSS_GAP} of the best row",
                None not in (loss, best_loss) and loss - best_loss <= GOAL_LOSS_GAP,
                f"{fmt(loss, '.4f')} vs {fmt(best_loss, '.4f')}",
            ),
        ]
        lines += [f"{row}: {goal}: {'met' if ok else 'NOT met'} ({v})" for goal, ok, v in checks]
    norm = value("influence-topk-norm", "precision")
    if norm is not None:
        met = "met" if norm >= GOAL_NORM_PRECISION else "NOT met"
        lines.append(f"influence-topk-norm precision >= {GOAL_NORM_PRECISION}: {met} ({norm:.3f})")
    mine, theirs = value("classifier", "precision"), value("similarity", "precision")
    if mine is not None and theirs is not None:
        met = "met" if mine >= theirs else "NOT met"
        lines.append(f"classifier precision >= similarity's: {met} ({mine:.3f} vs {theirs:.3f})")
    return lines


if __name__ == "__main__":
    main()
