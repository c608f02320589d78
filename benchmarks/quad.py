"""Quad vs influence top-k, DSIR and random on a held-out domain, at one docs budget.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place, split
as in heldout_precision.py: `--target-size` documents of `--domain` (seeded draw) are the target
set, the pool is every other document (at most `--limit-per-domain` per file, seeded), one
jsonl.gz shard per file under the work folder. Budget k = the `--domain` documents left in the
pool (a docs budget), the same for every method.

Runs (`distsel.app.pipeline.run`, one local Ray, `input.group_field: domain`), in this order:
  influence-topk  select.method influence: trains the proxy LM (OUTPUT/proxy), fits EK-FAC on the
                  target and computes the influence of EVERY pool document; keeps the top k
  quad            select.method quad, default options (unless --quad-* flags; then the defaults
                  run as `quad` and the flags as `quad-tuned`); `proxy.path` = influence-topk's
                  OUTPUT/proxy, so both use the identical proxy and target iHVP settings; embeds
                  the pool with MiniLM (`embed.max_length` --embed-max-length, default 128; the
                  embed stage's default resources) and clusters it (default k)
  dsir            select.method dsir (Gumbel top-k)
  random          select.method random (seeded)

Columns:
  evaluated    share of the pool whose influence was computed: quad: manifest
               quad.influence_evaluated_docs / pool; influence-topk 1; dsir, random 0
  mean infl    mean influence of the selection, every selected document's value looked up by id
               in influence-topk's scores/influence/*.parquet (ids are `<shard>:<line>` of the
               same pool files); `/ topk` its ratio to influence-topk's mean
  clusters     clusters covered by the selection and the entropy (nats) of its cluster shares,
               cluster ids from the (default) quad run's scores/cluster/*.parquet, by id
  precision    share of the selection in `--domain` (manifest by_group)
  target loss  a fresh proxy trained in this process on the selection's texts by
               evaluate_selection of influence_selection.py (the pipeline proxy's architecture,
               `--eval-train-tokens` tokens, the shared MiniLM WordPiece tokenizer), mean
               nats/token over the held-out target texts
  wall s       manifest wall_seconds (quad's excludes proxy training: the proxy is reused)

Goals: Quad evaluates <= 15% of the pool; its mean influence >= 90% of the full top-k's; its
cluster entropy is above top-k's.

With --workdir and --resume, a killed benchmark picks up where it stopped: finished runs are read
back from their manifests (their wall s kept), an interrupted one resumes from its done markers
(its wall s then counts only the resumed part, marked *).

    python benchmarks/quad.py
    python benchmarks/quad.py --json out/quad.json --workdir /tmp/quad_bench
    python benchmarks/quad.py --quad-draws 5 --quad-arms 3 --workdir /tmp/quad_bench --resume
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import fmt, positive

GOAL_EVALUATED = 0.15  # quad's evaluated share of the pool, at most
GOAL_INFLUENCE_RATIO = 0.90  # quad's mean influence / influence top-k's, at least
# --quad-* flag -> select.quad.<key> (clusters: stages.cluster.clusters)
QUAD_FLAGS = {
    "quad_arms": "arms_per_round",
    "quad_draws": "draws_per_arm",
    "quad_accept": "docs_per_accept",
    "quad_clusters": "clusters",
}
COLUMNS = [
    "method",
    "docs",
    "evaluated",
    "mean infl",
    "/ topk",
    "clusters",
    "entropy",
    "precision",
    "target loss",
    "wall s",
]


# --- selection runs ---------------------------------------------------------------------------


def run_config(
    method: str,
    args: argparse.Namespace,
    work: harness.Workspace,
    k: int,
    quad: dict[str, Any] | None = None,
) -> dict[str, Any]:
    select: dict[str, Any] = {"method": method, "budget": {"docs": k}}
    if method == "influence-topk":
        select["method"] = "influence"
    elif method.startswith("quad"):
        select["method"] = "quad"
        if quad:
            select["quad"] = {key: value for key, value in quad.items() if key != "clusters"}
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(work.pool)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(work.target)]},
        "output": {"path": str(work.runs / method)},
        "select": select,
        "seed": args.seed,
    }
    proxy: dict[str, Any] = {}
    if args.proxy_train_tokens is not None:
        proxy["train_tokens"] = args.proxy_train_tokens
    if method.startswith("quad"):
        proxy["path"] = str(work.runs / "influence-topk" / "proxy")
        raw["embed"] = {"max_length": args.embed_max_length}
        # No stages.influence here: naming it would add a full influence pass to the run.
    if method == "influence-topk":
        raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": args.influence_pool_size}}
    if proxy:
        raw["proxy"] = proxy
    if (quad or {}).get("clusters") is not None:
        raw["stages"] = {"cluster": {"clusters": quad["clusters"]}}
    return raw


def run_one(
    method: str,
    quad: dict[str, Any] | None,
    args: argparse.Namespace,
    work: harness.Workspace,
    pool_size: int,
    k: int,
) -> dict[str, Any]:
    """One method's run; quad-tuned starts from a copy of quad's scored folder."""
    proxy = work.runs / "influence-topk" / "proxy"
    if method.startswith("quad") and not any(proxy.glob("*.safetensors")):
        return {"method": method, "error": "no influence-topk proxy"}
    resuming = args.resume and (work.runs / method).exists()
    quad_done = (work.runs / "quad" / "manifest.json").exists()
    if method == "quad-tuned" and not resuming and quad_done:
        harness.copy_scored(work.runs / "quad", work.runs / method)
    raw = run_config(method, args, work, k, quad)
    harness.progress(method, "selecting ...")
    result = harness.run_method(method, raw, args.domain, pool_size, args.resume, resuming)
    harness.progress(
        method,
        f"precision {fmt(result.get('precision'), '.3f')}, "
        f"evaluated {fmt(result.get('evaluated_share'), '.3f')}, "
        f"{fmt(result.get('wall_seconds'), '.1f')} s",
    )
    return result


def select_all(
    args: argparse.Namespace, held: harness.HeldOut, work: harness.Workspace, tuned: dict
) -> list[dict[str, Any]]:
    plan: list[tuple[str, dict[str, Any] | None]] = [("influence-topk", None), ("quad", None)]
    if tuned:
        plan.append(("quad-tuned", tuned))
    plan += [("dsir", None), ("random", None)]
    with harness.local_ray(args.num_cpus):
        return [
            run_one(method, quad, args, work, len(held.records), held.k) for method, quad in plan
        ]


# --- measurements -----------------------------------------------------------------------------


def cluster_entropy(clusters: list[int]) -> tuple[int, float]:
    """Clusters covered and the entropy (nats) of the cluster shares."""
    _, counts = np.unique(np.asarray(clusters), return_counts=True)
    shares = counts / counts.sum()
    return int(len(counts)), float(-(shares * np.log(shares)).sum())


def measure(
    result: dict[str, Any], influence: dict[str, float], clusters: dict[str, int]
) -> dict[str, Any]:
    selection = harness.read_selection(Path(result["output"]))
    ids = selection["id"]
    values = [influence[i] for i in ids if i in influence]
    labels = [clusters[i] for i in ids if i in clusters]
    covered, entropy = cluster_entropy(labels) if labels else (0, float("nan"))
    return {
        "texts": selection["text"],
        "metrics": {
            "docs": len(ids),
            "mean_influence": float(np.mean(values)) if values else None,
            "influence_missing": len(ids) - len(values),
            "clusters_covered": covered,
            "cluster_entropy": entropy,
            "cluster_missing": len(ids) - len(labels),
        },
    }


def measure_all(
    results: list[dict[str, Any]], runs: Path
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Each selection's texts (by method), with its metrics added to its result; and every
    pool document's influence."""
    influence = harness.read_column(runs / "influence-topk" / "scores" / "influence", "influence")
    quad = next(r for r in results if r["method"] == "quad")
    clusters: dict[str, int] = {}
    if "error" not in quad:
        clusters = harness.read_column(runs / "quad" / "scores" / "cluster", "cluster")
    selections: dict[str, list[str]] = {}
    for result in results:
        if "error" not in result:
            measured = measure(result, influence, clusters)
            selections[result["method"]] = measured["texts"]
            result["metrics"] = measured["metrics"]
    return selections, influence


def evaluate_all(
    args: argparse.Namespace,
    held: harness.HeldOut,
    results: list[dict[str, Any]],
    selections: dict[str, list[str]],
    config: Any,
) -> list[str]:
    """An evaluation proxy per selection; returns the control texts."""
    chosen = {text for texts in selections.values() for text in texts}
    control = harness.control_slice(held.records, chosen, args.control_size, args.seed + 1)
    control_texts = [r["text"] for r in control]
    for result in results:
        texts = selections.get(result["method"])
        if texts is not None:
            result["eval"] = harness.try_evaluate(
                result["method"], texts, config, args.seed, held.target_texts, control_texts
            )
    return control_texts


# --- report -----------------------------------------------------------------------------------


def table_row(result: dict[str, Any], topk_mean: float | None) -> list[str]:
    if "error" in result:
        return harness.failed_row(result, len(COLUMNS))
    metrics = result.get("metrics") or {}
    mean = metrics.get("mean_influence")
    ratio = mean / topk_mean if mean is not None and topk_mean else None
    return [
        result["method"],
        str(result["selected_docs"]),
        fmt(result["evaluated_share"], ".3f"),
        fmt(mean, ".4g"),
        fmt(ratio, ".3f"),
        str(metrics.get("clusters_covered", "-")),
        fmt(metrics.get("cluster_entropy"), ".3f"),
        fmt(result["precision"], ".3f"),
        fmt((result.get("eval") or {}).get("target_loss"), ".4f"),
        f"{result['wall_seconds']:.1f}" + ("*" if result.get("resumed_partial_run") else ""),
    ]


def goals(result: dict[str, Any], topk: dict[str, Any] | None) -> list[tuple[str, bool, str]]:
    """(goal, met, the values) for one quad row against influence-topk."""
    if "error" in result or topk is None or "error" in topk:
        return []
    mine, theirs = result["metrics"], topk["metrics"]
    share = result["evaluated_share"]
    ratio = None
    if mine["mean_influence"] is not None and theirs["mean_influence"]:
        ratio = mine["mean_influence"] / theirs["mean_influence"]
    return [
        (
            f"evaluates <= {GOAL_EVALUATED:.0%} of the pool",
            share <= GOAL_EVALUATED,
            f"{share:.3f}",
        ),
        (
            f"mean influence >= {GOAL_INFLUENCE_RATIO:.0%} of top-k's",
            ratio is not None and ratio >= GOAL_INFLUENCE_RATIO,
            f"ratio {fmt(ratio, '.3f')}",
        ),
        (
            "cluster entropy above top-k's",
            mine["cluster_entropy"] > theirs["cluster_entropy"],
            f"{mine['cluster_entropy']:.3f} vs {theirs['cluster_entropy']:.3f} nats",
        ),
    ]


def print_quad_runs(results: list[dict[str, Any]], topk: dict[str, Any], tuned: dict) -> None:
    """Each quad run's bandit figures and options, and its goals."""
    for result in results:
        if not result["method"].startswith("quad") or "error" in result:
            continue
        section = result["quad"]
        options = {key: section[key] for key in ("clusters", "draws_per_arm", "alpha", "gamma")}
        print(
            f"{result['method']}: rounds {section['rounds']} ({section['stopped']}), clusters "
            f"{section['clusters']}, clusters_accepted {section['clusters_accepted']}, "
            f"acceptances {section['acceptances']}, influence_evaluated_docs "
            f"{section['influence_evaluated_docs']}; arms_per_round "
            f"{section['arms_per_round']}, draws_per_arm {options['draws_per_arm']}, "
            f"docs_per_accept {section['docs_per_accept']}, alpha {options['alpha']}, "
            f"gamma {options['gamma']}, tau {section['tau']}, scale {section['scale']}"
            + (f" (set: {json.dumps(tuned)})" if result["method"] == "quad-tuned" else "")
        )
        for goal, met, values in goals(result, topk):
            print(f"  goal {goal}: {'met' if met else 'NOT met'} ({values})")


def print_notes(results: list[dict[str, Any]], topk: dict[str, Any], tuned: dict) -> None:
    """The shared proxy, and which runs were read back, resumed or copied."""
    proxy = topk.get("proxy") or {}
    print(
        f"shared proxy: {proxy.get('params')} params, {proxy.get('train_tokens')} train tokens, "
        f"final loss {fmt(proxy.get('final_loss'), '.4f')}, trained in "
        f"{fmt(proxy.get('seconds'), '.1f')} s by influence-topk (quad reuses it via "
        "proxy.path; its wall excludes the training)"
    )
    reused = [r["method"] for r in results if r.get("reused_manifest")]
    if reused:
        print(
            f"read back from finished runs in the work folder (--resume): {', '.join(reused)}; "
            "their wall s are those runs'"
        )
    if any(r.get("resumed_partial_run") for r in results):
        print("* resumed after an interruption (--resume): wall s counts only the resumed part")
    if tuned:
        print(
            "quad-tuned starts from a copy of quad's ingest, embed and cluster outputs (same "
            "clusters unless --quad-clusters), so its wall s excludes embedding and clustering"
        )


def report(
    header: str, results: list[dict[str, Any]], influence: dict[str, float], tuned: dict
) -> None:
    topk = results[0]
    pool_mean = float(np.mean(list(influence.values())))
    print(header)
    print(
        f"goals: Quad evaluates <= {GOAL_EVALUATED:.0%} of the pool; Quad's mean influence >= "
        f"{GOAL_INFLUENCE_RATIO:.0%} of the full top-k's; Quad's cluster entropy above top-k's"
    )
    topk_mean = topk["metrics"]["mean_influence"]
    harness.print_table(COLUMNS, [table_row(r, topk_mean) for r in results])
    print(
        f"pool mean influence {pool_mean:.4g} ({len(influence)} docs); clusters and entropy by "
        "the quad run's cluster ids; entropy in nats"
    )
    print_quad_runs(results, topk, tuned)
    print_notes(results, topk, tuned)


def summary(
    args: argparse.Namespace, held: harness.HeldOut, results: list[dict[str, Any]], tuned: dict
) -> dict[str, Any]:
    settings = ("rows_per_part", "num_cpus", "embed_max_length", "seed")
    return {
        **held.summary(),
        **{key: getattr(args, key) for key in settings},
        "corpus": str(args.corpus),
        "quad_tuned": tuned or None,
        "goals": {
            "evaluated_share_max": GOAL_EVALUATED,
            "influence_ratio_min": GOAL_INFLUENCE_RATIO,
            "entropy_above_topk": True,
            "by_run": {
                r["method"]: [
                    {"goal": g, "met": m, "values": v} for g, m, v in goals(r, results[0])
                ]
                for r in results
                if r["method"].startswith("quad")
            },
        },
        "results": results,
    }


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(
        parser,
        corpus=harness.DEFAULT_CORPUS,
        domain="scientific",
        target_size=300,
        seed=0,
        limit_per_domain=800,
        rows_per_part=500,
        num_cpus=2,
    )
    parser.add_argument(
        "--influence-pool-size", type=positive, default=2, help="influence-topk scoring actors"
    )
    parser.add_argument("--embed-max-length", type=positive, default=128, help="quad's embed")
    parser.add_argument(
        "--proxy-train-tokens", type=positive, default=None, help="proxy.train_tokens"
    )
    group = parser.add_argument_group(
        "quad options (default: distsel's; any given adds a `quad-tuned` run beside `quad`)"
    )
    group.add_argument("--quad-arms", type=positive, default=None, help="arms_per_round")
    group.add_argument("--quad-draws", type=positive, default=None, help="draws_per_arm")
    group.add_argument("--quad-accept", type=positive, default=None, help="docs_per_accept")
    group.add_argument("--quad-clusters", type=int, default=None, help="clusters (>= 2)")
    harness.add_eval_flags(parser, train_tokens=300_000)
    parser.add_argument("--control-size", type=positive, default=300, help="pool-slice docs")
    harness.add_common_flags(parser, workdir=None, resume=False, json=None, verbose=False)
    args = parser.parse_args()
    if args.resume and args.workdir is None:
        parser.error("--resume needs --workdir")
    return args


def main() -> None:
    args = parse_args()
    tuned = {key: getattr(args, flag) for flag, key in QUAD_FLAGS.items() if getattr(args, flag)}
    harness.setup_logging(args.verbose)
    began = time.perf_counter()
    held = harness.held_out(args)
    header = (
        f"{held.header()} | seed {args.seed} | {args.num_cpus} Ray CPUs, "
        f"{os.cpu_count()}-core machine (CPU only)"
    )
    harness.progress("split", header)
    with harness.work_folder(args.workdir, "quad_bench_") as root:
        work = harness.Workspace(root)
        work.prepare(held, args.resume)
        results = select_all(args, held, work, tuned)
        if "error" in results[0]:
            raise SystemExit(f"influence-topk failed ({results[0]['error']}); nothing to compare")
        selections, influence = measure_all(results, work.runs)
        import torch

        torch.set_num_threads(args.num_cpus)
        config = harness.eval_proxy_config(args, run_config("influence-topk", args, work, held.k))
        control = evaluate_all(args, held, results, selections, config)
    total = time.perf_counter() - began
    report(header, results, influence, tuned)
    trained = next((r["eval"]["train"] for r in results if "train" in r.get("eval", {})), None)
    if trained:
        print(
            f"evaluation proxies: {trained['params']} params, {trained['train_tokens']} train "
            f"tokens each, {config.tokenizer} tokenizer, seed {args.seed}; target loss in "
            f"nats/token over {len(held.target)} target docs"
        )
    print(f"total {total:.1f} s")
    extra = {
        "pool_mean_influence": float(np.mean(list(influence.values()))),
        "eval_proxy": config.model_dump(),
        "control_docs": len(control),
        "total_seconds": round(total, 3),
    }
    harness.write_json(args.json, {**summary(args, held, results, tuned), **extra})


if __name__ == "__main__":
    main()
