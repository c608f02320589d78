"""Quad vs influence top-k, DSIR and random on a held-out domain, at one docs budget.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place, split
as in heldout_precision.py: `--target-size` documents of `--domain` (seeded draw) are the target
set, the pool is every other document (at most `--limit-per-domain` per file, seeded), one
jsonl.gz shard per file under the work folder. Budget k = the `--domain` documents left in the
pool (a docs budget), the same for every method.

Runs (`distsel.pipeline.run`, one local Ray, `input.group_field: domain`), in this order:
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

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import json
import logging
import math
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARKS))

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

GOAL_EVALUATED = 0.15  # quad's evaluated share of the pool, at most
GOAL_INFLUENCE_RATIO = 0.90  # quad's mean influence / influence top-k's, at least
# --quad-* flag -> select.quad.<key>
QUAD_FLAGS = {
    "quad_arms": "arms_per_round",
    "quad_draws": "draws_per_arm",
    "quad_accept": "docs_per_accept",
    "quad_clusters": "clusters",
}


# --- selection runs ---------------------------------------------------------------------------


def run_config(
    method: str,
    args: argparse.Namespace,
    pool_dir: Path,
    target: Path,
    output: Path,
    k: int,
    proxy_path: Path | None = None,
    quad: dict[str, Any] | None = None,
) -> dict[str, Any]:
    select: dict[str, Any] = {"budget": {"docs": k}}
    if method == "influence-topk":
        select["method"] = "influence"
    elif method.startswith("quad"):
        select["method"] = "quad"
        if quad:
            select["quad"] = dict(quad)
    else:
        select["method"] = method
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(pool_dir)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(target)]},
        "output": {"path": str(output)},
        "select": select,
        "seed": args.seed,
    }
    proxy: dict[str, Any] = {}
    if args.proxy_train_tokens is not None:
        proxy["train_tokens"] = args.proxy_train_tokens
    if method.startswith("quad"):
        proxy["path"] = str(proxy_path)
        raw["embed"] = {"max_length": args.embed_max_length}
        # No stages.influence here: naming it would add a full influence pass to the run.
    if method == "influence-topk":
        raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": args.influence_pool_size}}
    if proxy:
        raw["proxy"] = proxy
    return raw


def contains(whole: Any, part: Any) -> bool:
    """Every key of `part` is in `whole` with the same value (recursively into mappings)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and contains(whole[key], value) for key, value in part.items()
        )
    return whole == part


def finished_manifest(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished run in raw's output whose configuration has every setting
    of `raw` (keys distsel added since then, with their defaults, do not matter)."""
    path = Path(raw["output"]["path"]) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if contains(manifest.get("config"), raw) else None


def run_method(
    method: str,
    raw: dict[str, Any],
    domain: str,
    pool_size: int,
    resume: bool = False,
    interrupted: bool = False,
) -> dict[str, Any]:
    """One pipeline run (or, with `resume`, its finished manifest read back); `interrupted`:
    its output already held an unfinished run, which this one resumes."""
    from distsel import pipeline
    from distsel.config import parse_config

    began = time.perf_counter()
    manifest = finished_manifest(raw) if resume else None
    reused = manifest is not None
    partial = not reused and interrupted
    try:
        if manifest is None:
            manifest = pipeline.run(parse_config(raw, f"{method} configuration"))
    except Exception as error:  # report it in the table, keep the other methods
        traceback.print_exc()
        return {
            "method": method,
            "config": raw,
            "error": f"{type(error).__name__}: {error}",
            "seconds": round(time.perf_counter() - began, 3),
        }
    selected = manifest["selected_docs"]
    hits = (manifest["by_group"] or {}).get("selected", {}).get(domain, 0)
    result: dict[str, Any] = {
        "method": method,
        "output": raw["output"]["path"],
        "config": raw,
        "selected_docs": selected,
        "hits": hits,
        "precision": hits / selected if selected else None,
        "wall_seconds": manifest["wall_seconds"],
        "stages": manifest["stages"],
        "selected_by_group": manifest["by_group"]["selected"],
        "kl_reduction": ((manifest.get("evaluation") or {}).get("kl") or {}).get("kl_reduction"),
        # --resume: the finished run's manifest was read back (its wall s is that run's), or an
        # interrupted run was resumed (its wall s counts only the resumed part)
        "reused_manifest": reused,
        "resumed_partial_run": partial,
    }
    if method == "influence-topk":
        result["evaluated_share"] = 1.0
        summary = manifest["stages"]["influence"].get("summary") or {}
        result["proxy"] = summary.get("proxy")
    elif method.startswith("quad"):
        section = manifest["quad"]
        result["quad"] = section
        result["evaluated_share"] = section["influence_evaluated_docs"] / pool_size
    else:
        result["evaluated_share"] = 0.0
    return result


def copy_scored(source: Path, destination: Path) -> None:
    """A run folder with `source`'s ingest and stage outputs but no selection or bandit state,
    so a second quad run skips embedding and clustering (their done markers travel along)."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(
        source,
        destination,
        ignore=lambda folder, names: [
            n
            for n in names
            if (Path(folder) == source and n in ("selected", "manifest.json", "report.html"))
            or (Path(folder) == source / "_state" and n == "quad")
        ],
    )


# --- measurements -----------------------------------------------------------------------------


def read_column(folder: Path, column: str) -> dict[str, Any]:
    """id -> `column` over the parquet parts of a scores folder."""
    import pyarrow.parquet as pq

    values: dict[str, Any] = {}
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", column])
        ids, found = table.column("id").to_pylist(), table.column(column).to_pylist()
        values.update(zip(ids, found, strict=True))
    return values


def read_selection(output: Path) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {"id": [], "text": [], "domain": []}
    for path in sorted((output / "selected").glob("*.parquet")):
        table = pq.read_table(path, columns=list(columns))
        for name in columns:
            columns[name] += table.column(name).to_pylist()
    return columns


def cluster_entropy(clusters: list[int]) -> tuple[int, float]:
    """Clusters covered and the entropy (nats) of the cluster shares."""
    _, counts = np.unique(np.asarray(clusters), return_counts=True)
    shares = counts / counts.sum()
    return int(len(counts)), float(-(shares * np.log(shares)).sum())


def measure(
    result: dict[str, Any], influence: dict[str, float], clusters: dict[str, int]
) -> dict[str, Any]:
    selection = read_selection(Path(result["output"]))
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


# --- report -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table_row(result: dict[str, Any], topk_mean: float | None) -> list[str]:
    if "error" in result:
        return [result["method"], f"failed: {result['error'][:60]}"] + ["-"] * 8
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="scientific", help="domain held out as the target")
    parser.add_argument("--target-size", type=positive, default=300)
    parser.add_argument("--seed", type=int, default=0, help="split, random keys, proxies")
    parser.add_argument(
        "--limit-per-domain",
        type=int,
        default=800,
        help="keep at most N pool docs per domain file (seeded sample); 0: no limit",
    )
    parser.add_argument("--rows-per-part", type=positive, default=500)
    parser.add_argument("--num-cpus", type=positive, default=2, help="CPUs of the local Ray")
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
    group = parser.add_argument_group("evaluation proxies (one per selection)")
    group.add_argument("--eval-train-tokens", type=positive, default=300_000)
    group.add_argument("--eval-tokenizer", choices=("minilm", "bpe"), default="minilm")
    group.add_argument("--control-size", type=positive, default=300, help="pool-slice docs")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep pool, target and run outputs here (its pool/, runs/ and target.jsonl are "
        "replaced); default: a temporary folder, removed at the end",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --workdir: keep its pool and runs; a finished run (same configuration) is "
        "read back, not rerun; an interrupted one resumes from its done markers",
    )
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    parser.add_argument("--verbose", action="store_true", help="distsel's progress log")
    args = parser.parse_args()
    limit_per_domain = args.limit_per_domain if args.limit_per_domain > 0 else None
    if args.resume and args.workdir is None:
        parser.error("--resume needs --workdir")
    tuned = {key: getattr(args, flag) for flag, key in QUAD_FLAGS.items() if getattr(args, flag)}

    if not args.verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    began = time.perf_counter()
    shards = load_corpus(args.corpus)
    target, pool = split(shards, args.domain, args.target_size, args.seed, limit_per_domain)
    pool_records = [r for _, records in pool for r in records]
    pool_size = len(pool_records)
    k = sum(r.get("domain") == args.domain for r in pool_records)
    if k == 0:
        raise SystemExit(f"no '{args.domain}' docs left in the pool; lower --target-size")
    target_texts = [r["text"] for r in target]

    temporary, workdir = work_folder(args.workdir, "quad_bench_")
    pool_dir, runs, target_path = workdir / "pool", workdir / "runs", workdir / "target.jsonl"
    split_settings = {
        "corpus": str(args.corpus.resolve()),
        "domain": args.domain,
        "target_size": args.target_size,
        "seed": args.seed,
        "limit_per_domain": limit_per_domain,
    }
    settings_path = workdir / "split.json"
    if args.resume and pool_dir.exists():
        previous = json.loads(settings_path.read_text()) if settings_path.exists() else None
        if previous != split_settings:
            raise SystemExit(f"--resume: {workdir} holds another split ({previous}); drop --resume")
    else:
        for stale in (pool_dir, runs):
            shutil.rmtree(stale, ignore_errors=True)
        for name, records in pool:
            if records:
                write_jsonl(pool_dir / f"{name}.jsonl.gz", records)
        settings_path.write_text(json.dumps(split_settings) + "\n", encoding="utf-8")
    write_jsonl(target_path, target)

    limit = f", at most {limit_per_domain} per domain" if limit_per_domain else ""
    header = (
        f"domain {args.domain} | target {len(target)} docs | pool {pool_size} docs{limit} | "
        f"k = {k} docs | random expected precision {k / pool_size:.3f} | seed {args.seed} | "
        f"{args.num_cpus} Ray CPUs, {os.cpu_count()}-core machine (CPU only)"
    )
    print(header, file=sys.stderr, flush=True)

    import ray
    import torch

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    plan: list[tuple[str, dict[str, Any] | None]] = [("influence-topk", None), ("quad", None)]
    if tuned:
        plan.append(("quad-tuned", tuned))
    plan += [("dsir", None), ("random", None)]
    results: list[dict[str, Any]] = []
    try:
        try:
            proxy_path = runs / "influence-topk" / "proxy"
            for method, quad in plan:
                if method.startswith("quad") and not any(proxy_path.glob("*.safetensors")):
                    results.append({"method": method, "error": "no influence-topk proxy"})
                    continue
                output = runs / method
                resuming = args.resume and output.exists()
                quad_done = (runs / "quad" / "manifest.json").exists()
                if method == "quad-tuned" and not resuming and quad_done:
                    copy_scored(runs / "quad", output)
                raw = run_config(method, args, pool_dir, target_path, output, k, proxy_path, quad)
                print(f"[{method}] selecting ...", file=sys.stderr, flush=True)
                result = run_method(method, raw, args.domain, pool_size, args.resume, resuming)
                results.append(result)
                print(
                    f"[{method}] precision {fmt(result.get('precision'), '.3f')}, "
                    f"evaluated {fmt(result.get('evaluated_share'), '.3f')}, "
                    f"{fmt(result.get('wall_seconds'), '.1f')} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            ray.shutdown()

        by_method = {r["method"]: r for r in results}
        topk = by_method["influence-topk"]
        if "error" in topk:
            raise SystemExit(f"influence-topk failed ({topk['error']}); nothing to compare")
        influence = read_column(runs / "influence-topk" / "scores" / "influence", "influence")
        quad_default = by_method.get("quad", {})
        clusters: dict[str, int] = {}
        if "error" not in quad_default:
            clusters = read_column(runs / "quad" / "scores" / "cluster", "cluster")
        selections: dict[str, list[str]] = {}
        for result in results:
            if "error" not in result:
                measured = measure(result, influence, clusters)
                selections[result["method"]] = measured["texts"]
                result["metrics"] = measured["metrics"]
        pool_mean = float(np.mean(list(influence.values())))
        topk_mean = topk["metrics"]["mean_influence"]

        torch.set_num_threads(args.num_cpus)
        eval_config = eval_proxy_config(
            args, run_config("influence-topk", args, pool_dir, target_path, runs / "x", k)
        )
        chosen = {text for texts in selections.values() for text in texts}
        rest = [i for i, r in enumerate(pool_records) if r["text"] not in chosen]
        rng = np.random.default_rng(args.seed + 1)
        pick = np.sort(rng.choice(len(rest), min(args.control_size, len(rest)), replace=False))
        control_texts = [pool_records[rest[i]]["text"] for i in pick]
        for result in results:
            texts = selections.get(result["method"])
            if texts is None:
                continue
            print(f"[{result['method']}] training the evaluation proxy ...", file=sys.stderr)
            try:
                result["eval"] = evaluate_selection(
                    texts, eval_config, args.seed, target_texts, control_texts
                )
            except Exception as error:
                traceback.print_exc()
                result["eval"] = {"error": f"{type(error).__name__}: {error}"}
    finally:
        if temporary is not None:
            temporary.cleanup()

    total = time.perf_counter() - began
    print(header)
    print(
        f"goals: Quad evaluates <= {GOAL_EVALUATED:.0%} of the pool; Quad's mean influence >= "
        f"{GOAL_INFLUENCE_RATIO:.0%} of the full top-k's; Quad's cluster entropy above top-k's"
    )
    print_table(
        [
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
        ],
        [table_row(r, topk_mean) for r in results],
    )
    print(
        f"pool mean influence {pool_mean:.4g} ({len(influence)} docs); clusters and entropy by "
        "the quad run's cluster ids; entropy in nats"
    )
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
    proxy = topk.get("proxy") or {}
    proxy_seconds = fmt(proxy.get("seconds"), ".1f")
    print(
        f"shared proxy: {proxy.get('params')} params, {proxy.get('train_tokens')} train tokens, "
        f"final loss {fmt(proxy.get('final_loss'), '.4f')}, trained in {proxy_seconds} s by "
        "influence-topk (quad reuses it via proxy.path; its wall excludes the training)"
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
    trained = next((r["eval"]["train"] for r in results if "train" in r.get("eval", {})), None)
    if trained:
        print(
            f"evaluation proxies: {trained['params']} params, {trained['train_tokens']} train "
            f"tokens each, {eval_config.tokenizer} tokenizer, seed {args.seed}; target loss in "
            f"nats/token over {len(target_texts)} target docs"
        )
    print(f"total {total:.1f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "domain": args.domain,
            "target_docs": len(target),
            "pool_docs": pool_size,
            "k": k,
            "random_expected_precision": k / pool_size,
            "limit_per_domain": limit_per_domain,
            "rows_per_part": args.rows_per_part,
            "num_cpus": args.num_cpus,
            "embed_max_length": args.embed_max_length,
            "seed": args.seed,
            "corpus": str(args.corpus),
            "quad_tuned": tuned or None,
            "goals": {
                "evaluated_share_max": GOAL_EVALUATED,
                "influence_ratio_min": GOAL_INFLUENCE_RATIO,
                "entropy_above_topk": True,
                "by_run": {
                    r["method"]: [{"goal": g, "met": m, "values": v} for g, m, v in goals(r, topk)]
                    for r in results
                    if r["method"].startswith("quad")
                },
            },
            "pool_mean_influence": pool_mean,
            "eval_proxy": eval_config.model_dump(),
            "control_docs": len(control_texts),
            "total_seconds": round(total, 3),
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
