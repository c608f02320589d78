"""Influence top-k vs random selection on a held-out domain, judged by a proxy trained on each.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place; the
split is heldout_precision.py's: `--target-size` documents of `--domain` (seeded draw) are held out
as the target set, the pool is every other document (at most `--limit-per-domain` per file, seeded),
written as one jsonl.gz shard per file under the work folder. Budget k = the number of `--domain`
documents left in the pool (a docs budget).

1. Two `distsel.pipeline.run`s on one local Ray, same budget, `input.group_field: domain`:
     influence  select.method influence: the pipeline trains the proxy LM on a pool sample
                (OUTPUT/proxy; default proxy settings unless --proxy-* options), fits EK-FAC on
                the target, scores every pool document and keeps the top k
     random     select.method random (seeded)
   precision = share of the selection in `--domain` (manifest by_group); wall s = manifest
   wall_seconds; influence docs/s = rows / seconds of manifest stages.influence (seconds include
   the stage's prepare: proxy training and the curvature fit; scoring-only docs/s is shown too).
2. For each selection, a fresh proxy is trained in this process on the selected texts
   (OUTPUT/selected/*.parquet) with `train_proxy(texts, ProxyConfig(...), seed)`: the pipeline
   proxy's size (layers, hidden, heads, intermediate, max_length, batch size, learning rate) and
   `--eval-train-tokens` training tokens for both, so both see the same number of tokens. Its
   mean `document_losses` (nats/token) over the held-out target texts is the target loss; over
   `--control-size` pool documents in neither selection (seeded), the pool-slice loss.
   The evaluation proxies share one tokenizer (`--eval-tokenizer minilm`, the bundled WordPiece,
   the default), so their per-token losses count the same tokens; with `bpe` each proxy trains
   its own BPE on its selection and the losses are per different tokens.

    python benchmarks/influence_selection.py
    python benchmarks/influence_selection.py --domain legal --limit-per-domain 800 --json out/i.json
    python benchmarks/influence_selection.py --proxy-train-tokens 300000 --proxy-hidden 64
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import json
import logging
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
    write_workdir,
)

METHODS = ("influence", "random")
# --proxy-* option -> proxy.<key> of the run configuration (only those given are set)
PROXY_OPTIONS = {
    "proxy_layers": "layers",
    "proxy_hidden": "hidden",
    "proxy_heads": "heads",
    "proxy_vocab_size": "vocab_size",
    "proxy_max_length": "max_length",
    "proxy_train_tokens": "train_tokens",
    "proxy_sample_docs": "sample_docs",
    "proxy_tokenizer": "tokenizer",
}


# --- selection runs ---------------------------------------------------------------------------


def run_config(
    method: str, args: argparse.Namespace, pool_dir: Path, target: Path, output: Path, k: int
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(pool_dir)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(target)]},
        "output": {"path": str(output)},
        "select": {"method": method, "budget": {"docs": k}},
        "seed": args.seed,
    }
    proxy = {
        key: getattr(args, option)
        for option, key in PROXY_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if proxy:
        raw["proxy"] = proxy
    if method == "influence":
        if args.max_chunks is not None:
            raw["select"]["influence"] = {"max_chunks": args.max_chunks}
        raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": args.influence_pool_size}}
    return raw


def run_method(
    method: str, args: argparse.Namespace, pool_dir: Path, target: Path, runs: Path, k: int
) -> dict[str, Any]:
    from distsel import pipeline
    from distsel.config import parse_config

    output = runs / method
    raw = run_config(method, args, pool_dir, target, output, k)
    began = time.perf_counter()
    try:
        manifest = pipeline.run(parse_config(raw, f"{method} configuration"))
    except Exception as error:  # report it in the table, keep the other method
        traceback.print_exc()
        return {
            "method": method,
            "error": f"{type(error).__name__}: {error}",
            "seconds": round(time.perf_counter() - began, 3),
        }
    selected = manifest["selected_docs"]
    hits = (manifest["by_group"] or {}).get("selected", {}).get(args.domain, 0)
    result: dict[str, Any] = {
        "method": method,
        "output": str(output),
        "config": raw,
        "selected_docs": selected,
        "selected_tokens_approx": manifest.get("selected_tokens_approx"),
        "hits": hits,
        "precision": hits / selected if selected else None,
        "wall_seconds": manifest["wall_seconds"],
        "stages": manifest["stages"],
        "selected_by_group": manifest["by_group"]["selected"],
        "pool_by_group": manifest["by_group"]["pool"],
        "kl_reduction": ((manifest.get("evaluation") or {}).get("kl") or {}).get("kl_reduction"),
    }
    stage = manifest["stages"].get("influence")
    if stage:
        summary = stage.get("summary") or {}
        scoring = stage["seconds"] - stage.get("prepare_seconds", 0.0)
        result["proxy"] = summary.get("proxy")
        result["influence_summary"] = {k: v for k, v in summary.items() if k != "proxy"}
        result["influence_docs_per_s"] = stage["rows"] / stage["seconds"]
        result["influence_scoring_docs_per_s"] = stage["rows"] / scoring if scoring > 0 else None
    return result


def read_selection(output: Path) -> tuple[list[str], list[str]]:
    """Texts and domains of a run's selected/*.parquet, in part order."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    domains: list[str] = []
    for path in sorted((output / "selected").glob("*.parquet")):
        table = pq.read_table(path, columns=["text", "domain"])
        texts += table.column("text").to_pylist()
        domains += table.column("domain").to_pylist()
    return texts, domains


# --- evaluation proxies -----------------------------------------------------------------------


def eval_proxy_config(args: argparse.Namespace, pipeline_raw: dict[str, Any]) -> Any:
    """The pipeline proxy's settings, with --eval-train-tokens and --eval-tokenizer."""
    from distsel.config import ProxyConfig, parse_config

    proxy = parse_config(pipeline_raw, "influence configuration").proxy
    fields = proxy.model_dump(exclude={"path"})
    fields.update(train_tokens=args.eval_train_tokens, tokenizer=args.eval_tokenizer)
    return ProxyConfig(**fields)


def evaluate_selection(
    texts: list[str],
    config: Any,
    seed: int,
    target_texts: list[str],
    control_texts: list[str],
) -> dict[str, Any]:
    from distsel.scoring.proxy import document_losses, train_proxy

    model, tokenizer, info = train_proxy(texts, config, seed, "cpu")
    began = time.perf_counter()
    target = document_losses(model, tokenizer, target_texts, config.max_length)
    control = document_losses(model, tokenizer, control_texts, config.max_length)
    return {
        "target_loss": float(np.nanmean(target)),
        "pool_slice_loss": float(np.nanmean(control)),
        "target_docs_scored": int(np.isfinite(target).sum()),
        "pool_slice_docs_scored": int(np.isfinite(control).sum()),
        "loss_seconds": round(time.perf_counter() - began, 3),
        "train": info,
    }


# --- report -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_row(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [result["method"], f"failed: {result['error'][:60]}", "-", "-", "-"]
    evaluation = result.get("eval") or {}
    return [
        result["method"],
        fmt(result["precision"], ".3f"),
        fmt(evaluation.get("target_loss"), ".4f"),
        fmt(evaluation.get("pool_slice_loss"), ".4f"),
        f"{result['wall_seconds']:.1f}",
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
        default=1500,
        help="keep at most N pool docs per domain file (seeded sample); 0: no limit",
    )
    parser.add_argument("--rows-per-part", type=positive, default=500)
    parser.add_argument("--num-cpus", type=positive, default=2, help="CPUs of the local Ray")
    parser.add_argument("--influence-pool-size", type=positive, default=2, help="scoring actors")
    parser.add_argument("--max-chunks", type=positive, default=None, help="influence.max_chunks")
    group = parser.add_argument_group("pipeline proxy (default: distsel's ProxyConfig defaults)")
    group.add_argument("--proxy-layers", type=positive, default=None)
    group.add_argument("--proxy-hidden", type=positive, default=None)
    group.add_argument("--proxy-heads", type=positive, default=None)
    group.add_argument("--proxy-vocab-size", type=positive, default=None)
    group.add_argument("--proxy-max-length", type=positive, default=None)
    group.add_argument("--proxy-train-tokens", type=positive, default=None)
    group.add_argument("--proxy-sample-docs", type=positive, default=None)
    group.add_argument("--proxy-tokenizer", choices=("bpe", "minilm"), default=None)
    group = parser.add_argument_group("evaluation proxies (one per selection)")
    group.add_argument("--eval-train-tokens", type=positive, default=300_000)
    group.add_argument(
        "--eval-tokenizer",
        choices=("minilm", "bpe"),
        default="minilm",
        help="minilm: one shared tokenizer, comparable losses (default); bpe: one per selection",
    )
    group.add_argument("--control-size", type=positive, default=300, help="pool-slice docs")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep pool, target and run outputs here (its pool/, runs/ and target.jsonl are "
        "replaced); default: a temporary folder, removed at the end",
    )
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    parser.add_argument("--verbose", action="store_true", help="distsel's progress log")
    args = parser.parse_args()
    limit_per_domain = args.limit_per_domain if args.limit_per_domain > 0 else None

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

    temporary, pool_dir, runs, target_path = write_workdir(
        args.workdir, "influence_selection_", target, pool
    )

    cores = os.cpu_count()
    limit = f", at most {limit_per_domain} per domain" if limit_per_domain else ""
    header = (
        f"domain {args.domain} | target {len(target)} docs | pool {pool_size} docs{limit} | "
        f"k = {k} docs | random expected precision {k / pool_size:.3f} | seed {args.seed} | "
        f"{args.num_cpus} Ray CPUs, {cores}-core machine (CPU only)"
    )
    print(header, file=sys.stderr, flush=True)

    import ray
    import torch

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    results: list[dict[str, Any]] = []
    try:
        try:
            for method in METHODS:
                print(f"[{method}] selecting ...", file=sys.stderr, flush=True)
                result = run_method(method, args, pool_dir, target_path, runs, k)
                results.append(result)
                print(
                    f"[{method}] precision {fmt(result.get('precision'), '.3f')}, "
                    f"{fmt(result.get('wall_seconds'), '.1f')} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            ray.shutdown()

        torch.set_num_threads(args.num_cpus)
        eval_config = eval_proxy_config(
            args, run_config(METHODS[0], args, pool_dir, target_path, runs / METHODS[0], k)
        )
        selections = {}
        for result in results:
            if "error" not in result:
                texts, domains = read_selection(Path(result["output"]))
                selections[result["method"]] = texts
                result["selection_read"] = {
                    "docs": len(texts),
                    "chars": sum(map(len, texts)),
                    "in_domain": sum(d == args.domain for d in domains),
                }
        chosen = {text for texts in selections.values() for text in texts}
        rest = [i for i, r in enumerate(pool_records) if r["text"] not in chosen]
        rng = np.random.default_rng(args.seed + 1)
        pick = np.sort(rng.choice(len(rest), min(args.control_size, len(rest)), replace=False))
        control = [pool_records[rest[i]] for i in pick]
        control_texts = [r["text"] for r in control]
        control_domains: dict[str, int] = {}
        for record in control:
            control_domains[record["domain"]] = control_domains.get(record["domain"], 0) + 1
        for result in results:
            texts = selections.get(result["method"])
            if texts is None:
                continue
            print(
                f"[{result['method']}] training the evaluation proxy ...",
                file=sys.stderr,
                flush=True,
            )
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
    print_table(
        ["method", "precision", "target loss", "pool-slice loss", "wall s"],
        [table_row(r) for r in results],
    )
    influence = next((r for r in results if r["method"] == "influence" and "proxy" in r), None)
    if influence:
        proxy = influence["proxy"] or {}
        print(
            f"pipeline proxy: {proxy.get('params')} params, {proxy.get('train_tokens')} train "
            f"tokens, final loss {fmt(proxy.get('final_loss'), '.4f')} "
            f"({proxy.get('tokenizer')} tokenizer, vocab {proxy.get('vocab')}, "
            f"{proxy.get('documents')} sample docs, {fmt(proxy.get('seconds'), '.1f')} s)"
        )
        print(
            f"influence stage: {influence['stages']['influence']['rows']} docs, "
            f"{influence['influence_docs_per_s']:.2f} docs/s (incl. proxy training and fit); "
            f"{fmt(influence['influence_scoring_docs_per_s'], '.2f')} docs/s scoring only"
        )
    trained = next((r["eval"]["train"] for r in results if "train" in r.get("eval", {})), None)
    if trained:
        print(
            f"evaluation proxies: {trained['params']} params, {trained['train_tokens']} train "
            f"tokens each, {eval_config.tokenizer} tokenizer, seed {args.seed}; losses in "
            f"nats/token over {len(target_texts)} target docs and {len(control_texts)} pool docs "
            "in neither selection"
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
            "machine_cores": cores,
            "seed": args.seed,
            "corpus": str(args.corpus),
            "eval_proxy": eval_config.model_dump(),
            "control_docs": len(control_texts),
            "control_by_domain": control_domains,
            "total_seconds": round(total, 3),
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
