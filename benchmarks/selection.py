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
process on `--eval-train-tokens` tokens of each selection (influence_selection.evaluate_selection),
mean nats/token over the target texts; kept in runs/<row>/eval.json and reused while the selection
and the evaluation settings stay the same.

    python benchmarks/selection.py --domain scientific \
        --json benchmarks/results/selection_scientific.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heldout_precision import (  # noqa: E402
    DEFAULT_CORPUS,
    load_corpus,
    positive,
    print_table,
    split,
    work_folder,
    write_jsonl,
)
from influence_selection import eval_proxy_config, evaluate_selection  # noqa: E402
from quad import copy_scored, fmt, read_column, read_selection, run_method  # noqa: E402

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


def raw_config(row: str, args: argparse.Namespace, paths: dict[str, Path], k: int) -> dict:
    method, options, normalize = ROWS[row]
    select: dict[str, Any] = {"method": method, "budget": {"docs": k}}
    if options:
        select[method] = dict(options)
    if method in ("influence", "quad"):
        select["influence"] = {**select.get("influence", {}), "normalize": normalize}
    raw: dict[str, Any] = {
        "input": {"paths": [str(paths["pool"])], "group_field": "domain", "rows_per_part": 500},
        "target": {"paths": [str(paths["target"])]},
        "output": {"path": str(paths["runs"] / row)},
        "select": select,
        "embed": {"max_length": args.embed_max_length},
        "proxy": {"train_tokens": args.proxy_train_tokens},
        "seed": args.seed,
    }
    if method == "quad" or row == "influence-topk-max":
        raw["proxy"]["path"] = str(paths["runs"] / "influence-topk" / "proxy")
    if method == "influence":
        raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": 2}}
    return raw


def prepare_folder(row: str, runs: Path) -> None:
    """Start a row from an earlier run's scored folder where it shares the work."""
    source = {
        "influence-topk-norm": "influence-topk",
        "quad-paper": "similarity",
        "quad": "quad-paper",
        "quad-norm": "quad-paper",
    }.get(row)
    if source and (runs / source / "manifest.json").exists():
        copy_scored(runs / source, runs / row)


def eval_key(ids: list[str], config: Any, seed: int) -> str:
    """What an evaluation proxy's loss depends on: the selection, its settings and the seed."""
    text = json.dumps([sorted(ids), config.model_dump(), seed], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def ratio(selection: list[str], values: dict[str, float], best: list[str]) -> float | None:
    mine = [values[i] for i in selection if i in values]
    top = [values[i] for i in best if i in values]
    return float(np.mean(mine) / np.mean(top)) if mine and top else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="scientific")
    parser.add_argument("--target-size", type=positive, default=300)
    parser.add_argument("--limit-per-domain", type=positive, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-max-length", type=positive, default=128)
    parser.add_argument("--proxy-train-tokens", type=positive, default=500_000)
    parser.add_argument("--eval-train-tokens", type=positive, default=200_000)
    parser.add_argument("--eval-tokenizer", choices=("minilm", "bpe"), default="minilm")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="read back finished runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [r for r in ROWS if r in args.rows.split(",")]
    logging.basicConfig(level=logging.WARNING)
    began = time.perf_counter()

    target, pool = split(
        load_corpus(args.corpus), args.domain, args.target_size, args.seed, args.limit_per_domain
    )
    records = [r for _, shard in pool for r in shard]
    k = sum(r.get("domain") == args.domain for r in records)
    temporary, workdir = work_folder(args.workdir, "selection_bench_")
    paths = {"pool": workdir / "pool", "runs": workdir / "runs", "target": workdir / "t.jsonl"}
    if not args.resume:
        for stale in (paths["pool"], paths["runs"]):
            shutil.rmtree(stale, ignore_errors=True)
        for name, shard in pool:
            write_jsonl(paths["pool"] / f"{name}.jsonl.gz", shard)
        write_jsonl(paths["target"], target)
    header = (
        f"domain {args.domain} | target {len(target)} docs | pool {len(records)} docs (at most "
        f"{args.limit_per_domain} per domain) | k = {k} | random expected precision "
        f"{k / len(records):.3f} | seed {args.seed} | {os.cpu_count()}-core machine, CPU only"
    )
    print(header, file=sys.stderr, flush=True)

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    results: dict[str, dict[str, Any]] = {}
    try:
        for row in rows:
            if not args.resume or not (paths["runs"] / row / "manifest.json").exists():
                prepare_folder(row, paths["runs"])
            raw = raw_config(row, args, paths, k)
            result = run_method(row, raw, args.domain, len(records), args.resume)
            if ROWS[row][0] == "influence" and "error" not in result:
                result["evaluated_share"] = 1.0  # the norm row selects from the raw row's pass
            results[row] = result
            print(
                f"[{row}] precision {fmt(result.get('precision'), '.3f')}, "
                f"{fmt(result.get('wall_seconds'), '.1f')} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        ray.shutdown()

    scores = paths["runs"] / "influence-topk" / "scores" / "influence"
    raw_values = read_column(scores, "influence")
    norm_values = read_column(scores, "influence_normalized")
    selections = {
        row: read_selection(Path(r["output"])) for row, r in results.items() if "error" not in r
    }
    best_raw = (selections.get("influence-topk") or {}).get("id", [])
    best_norm = (selections.get("influence-topk-norm") or {}).get("id", [])
    eval_config = eval_proxy_config(args, raw_config("random", args, paths, k))
    target_texts = [r["text"] for r in target]
    for row, selection in selections.items():
        cache = paths["runs"] / row / "eval.json"
        key = eval_key(selection["id"], eval_config, args.seed)
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        if cached.get("key") != key:
            print(f"[{row}] training the evaluation proxy ...", file=sys.stderr, flush=True)
            evaluation = evaluate_selection(
                selection["text"], eval_config, args.seed, target_texts, target_texts[:1]
            )
            cached = {"key": key, "target_loss": evaluation["target_loss"]}
            cache.write_text(json.dumps(cached) + "\n")
        results[row].update(
            target_loss=cached["target_loss"],
            influence_ratio=ratio(selection["id"], raw_values, best_raw),
            normalized_ratio=ratio(selection["id"], norm_values, best_norm),
        )
    if temporary is not None:
        temporary.cleanup()

    table = []
    for row, result in results.items():
        if "error" in result:
            table.append([row, f"failed: {result['error'][:60]}"] + ["-"] * 5)
            continue
        table.append(
            [
                row,
                fmt(result["evaluated_share"], ".3f"),
                fmt(result.get("influence_ratio"), ".3f"),
                fmt(result.get("normalized_ratio"), ".3f"),
                fmt(result["precision"], ".3f"),
                fmt(result.get("target_loss"), ".4f"),
                fmt(result["wall_seconds"], ".1f"),
            ]
        )
    print(header)
    columns = ["method", "scored", "infl / topk", "norm / topk", "precision", "target loss"]
    print_table([*columns, "wall s"], table)
    for line in goal_lines(results):
        print(line)
    print(
        f"evaluation proxies: {eval_config.train_tokens} train tokens each, "
        f"{eval_config.tokenizer} tokenizer; total {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"header": header, "k": k, "pool_docs": len(records), "results": results}
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")


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
