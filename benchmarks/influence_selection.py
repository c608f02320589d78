"""Influence top-k vs random selection on a held-out domain, judged by a proxy trained on each.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place; the
split is heldout_precision.py's: `--target-size` documents of `--domain` (seeded draw) are held out
as the target set, the pool is every other document (at most `--limit-per-domain` per file, seeded),
written as one jsonl.gz shard per file under the work folder. Budget k = the number of `--domain`
documents left in the pool (a docs budget).

1. Two `distsel.app.pipeline.run`s on one local Ray, same budget, `input.group_field: domain`:
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

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import fmt, positive

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


def run_config(
    method: str, args: argparse.Namespace, work: harness.Workspace, k: int
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(work.pool)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(work.target)]},
        "output": {"path": str(work.runs / method)},
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


def influence_rates(result: dict[str, Any]) -> None:
    """Add the influence stage's summary and docs/s (with and without its prepare)."""
    stage = result["stages"].get("influence")
    if not stage:
        return
    summary = stage.get("summary") or {}
    scoring = stage["seconds"] - stage.get("prepare_seconds", 0.0)
    result["influence_summary"] = {k: v for k, v in summary.items() if k != "proxy"}
    result["influence_docs_per_s"] = stage["rows"] / stage["seconds"]
    result["influence_scoring_docs_per_s"] = stage["rows"] / scoring if scoring > 0 else None


def select_all(
    args: argparse.Namespace, held: harness.HeldOut, work: harness.Workspace
) -> list[dict[str, Any]]:
    results = []
    with harness.local_ray(args.num_cpus):
        for method in METHODS:
            harness.progress(method, "selecting ...")
            raw = run_config(method, args, work, held.k)
            result = harness.run_method(method, raw, args.domain, len(held.records))
            if "error" not in result:
                influence_rates(result)
            results.append(result)
            harness.progress(
                method,
                f"precision {fmt(result.get('precision'), '.3f')}, "
                f"{fmt(result.get('wall_seconds'), '.1f')} s",
            )
    return results


def evaluate_all(
    args: argparse.Namespace, held: harness.HeldOut, results: list[dict[str, Any]], config: Any
) -> list[harness.Record]:
    """An evaluation proxy per selection; returns the control slice it was measured on."""
    selections = {}
    for result in results:
        if "error" not in result:
            selection = harness.read_selection(Path(result["output"]))
            selections[result["method"]] = selection["text"]
            result["selection_read"] = {
                "docs": len(selection["text"]),
                "chars": sum(map(len, selection["text"])),
                "in_domain": sum(d == args.domain for d in selection["domain"]),
            }
    chosen = {text for texts in selections.values() for text in texts}
    control = harness.control_slice(held.records, chosen, args.control_size, args.seed + 1)
    control_texts = [r["text"] for r in control]
    for result in results:
        texts = selections.get(result["method"])
        if texts is not None:
            result["eval"] = harness.try_evaluate(
                result["method"], texts, config, args.seed, held.target_texts, control_texts
            )
    return control


def table_row(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return harness.failed_row(result, 5)
    evaluation = result.get("eval") or {}
    return [
        result["method"],
        fmt(result["precision"], ".3f"),
        fmt(evaluation.get("target_loss"), ".4f"),
        fmt(evaluation.get("pool_slice_loss"), ".4f"),
        f"{result['wall_seconds']:.1f}",
    ]


def print_notes(results: list[dict[str, Any]], config: Any, seed: int, docs: tuple) -> None:
    """The proxies' settings; `docs`: the target and control documents the losses are over."""
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
            f"tokens each, {config.tokenizer} tokenizer, seed {seed}; losses in nats/token "
            f"over {docs[0]} target docs and {docs[1]} pool docs in neither selection"
        )


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(
        parser,
        corpus=harness.DEFAULT_CORPUS,
        domain="scientific",
        target_size=300,
        seed=0,
        limit_per_domain=1500,
        rows_per_part=500,
        num_cpus=2,
    )
    parser.add_argument("--influence-pool-size", type=positive, default=2, help="scoring actors")
    parser.add_argument("--max-chunks", type=positive, default=None, help="influence.max_chunks")
    group = parser.add_argument_group("pipeline proxy (default: distsel's ProxyConfig defaults)")
    for option in PROXY_OPTIONS:
        if option != "proxy_tokenizer":
            group.add_argument("--" + option.replace("_", "-"), type=positive, default=None)
    group.add_argument("--proxy-tokenizer", choices=("bpe", "minilm"), default=None)
    harness.add_eval_flags(parser, train_tokens=300_000)
    parser.add_argument("--control-size", type=positive, default=300, help="pool-slice docs")
    harness.add_common_flags(parser, workdir=None, json=None, verbose=False)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    harness.setup_logging(args.verbose)
    began = time.perf_counter()
    held = harness.held_out(args)
    header = (
        f"{held.header()} | seed {args.seed} | {args.num_cpus} Ray CPUs, "
        f"{os.cpu_count()}-core machine (CPU only)"
    )
    harness.progress("split", header)
    with harness.work_folder(args.workdir, "influence_selection_") as root:
        work = harness.Workspace(root)
        work.prepare(held)
        results = select_all(args, held, work)
        import torch

        torch.set_num_threads(args.num_cpus)
        config = harness.eval_proxy_config(args, run_config(METHODS[0], args, work, held.k))
        control = evaluate_all(args, held, results, config)
    total = time.perf_counter() - began
    print(header)
    columns = ["method", "precision", "target loss", "pool-slice loss", "wall s"]
    harness.print_table(columns, [table_row(r) for r in results])
    print_notes(results, config, args.seed, (len(held.target), len(control)))
    print(f"total {total:.1f} s")
    harness.write_json(
        args.json,
        {
            **held.summary(),
            **{key: getattr(args, key) for key in ("rows_per_part", "num_cpus", "seed")},
            "machine_cores": os.cpu_count(),
            "corpus": str(args.corpus),
            "eval_proxy": config.model_dump(),
            "control_docs": len(control),
            "control_by_domain": dict(Counter(r["domain"] for r in control)),
            "total_seconds": round(total, 3),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
