"""How influence top-k moves with the proxy LM: its training tokens and width, on one held-out
domain.

Uses the split and work folder of benchmarks/selection.py (same `--domain`, `--target-size`,
`--limit-per-domain`, `--seed`; run that first or let this write the folder). Each point trains a
proxy of `hidden` width on `tokens` pool tokens, scores every pool document by influence and takes
the top k by normalised influence (distsel's defaults otherwise). Columns: precision on the domain,
target loss of an equal-token evaluation proxy trained on the selection (as in selection.py,
cached in runs/<point>/eval.json), and wall seconds of the run (proxy training + influence).

    python benchmarks/proxy_curve.py --domain scientific --workdir /tmp/selbench_sci \
        --json benchmarks/results/proxy_curve_scientific.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heldout_precision import DEFAULT_CORPUS, load_corpus, positive, print_table, split  # noqa: E402
from influence_selection import eval_proxy_config, evaluate_selection  # noqa: E402
from quad import finished_manifest, fmt, read_selection, run_method  # noqa: E402
from selection import eval_key, raw_config  # noqa: E402

DEFAULT_POINTS = "250000:128,500000:128,1000000:128,500000:64,500000:256"


def points(text: str) -> list[tuple[int, int]]:
    pairs = [item.split(":") for item in text.split(",") if item]
    return [(int(tokens), int(hidden)) for tokens, hidden in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="scientific")
    parser.add_argument("--target-size", type=positive, default=300)
    parser.add_argument("--limit-per-domain", type=positive, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-max-length", type=positive, default=128)
    parser.add_argument("--eval-train-tokens", type=positive, default=100_000)
    parser.add_argument("--eval-tokenizer", choices=("minilm", "bpe"), default="minilm")
    parser.add_argument("--points", default=DEFAULT_POINTS, help="tokens:hidden,...")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    began = time.perf_counter()

    target, pool = split(
        load_corpus(args.corpus), args.domain, args.target_size, args.seed, args.limit_per_domain
    )
    k = sum(r.get("domain") == args.domain for _, shard in pool for r in shard)
    paths = {
        "pool": args.workdir / "pool",
        "runs": args.workdir / "runs",
        "target": args.workdir / "t.jsonl",
    }
    if not paths["target"].exists():
        raise SystemExit(f"{args.workdir}: no selection.py work folder (run selection.py first)")
    target_texts = [r["text"] for r in target]

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    results: list[dict[str, Any]] = []
    try:
        for tokens, hidden in points(args.points):
            results.append(run_point(args, paths, k, tokens, hidden, target_texts))
    finally:
        ray.shutdown()

    header = (
        f"domain {args.domain} | pool {sum(len(s) for _, s in pool)} docs | k = {k} | "
        f"influence top-k by I(z)/‖∇L(z)‖ | seed {args.seed} | {os.cpu_count()}-core machine"
    )
    table = [
        [
            str(r["tokens"]),
            str(r["hidden"]),
            fmt(r.get("precision"), ".3f"),
            fmt(r.get("target_loss"), ".4f"),
            fmt(r.get("wall_seconds"), ".1f"),
        ]
        for r in results
    ]
    print(header)
    print_table(["proxy tokens", "hidden", "precision", "target loss", "wall s"], table)
    total = time.perf_counter() - began
    print(f"evaluation proxies: {args.eval_train_tokens} train tokens each; total {total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")


def run_point(
    args: argparse.Namespace,
    paths: dict[str, Path],
    k: int,
    tokens: int,
    hidden: int,
    target_texts: list[str],
) -> dict[str, Any]:
    """One proxy size: its influence top-k run (read back when finished) and its evaluation."""
    args.proxy_train_tokens = tokens
    raw = raw_config("influence-topk-norm", args, paths, k)
    raw["proxy"]["hidden"] = hidden
    name = "influence-topk-norm"  # selection.py's run, when this point is its proxy
    if finished_manifest(raw) is None:
        name = f"proxy-{tokens}-{hidden}"
        raw["output"]["path"] = str(paths["runs"] / name)
    result = run_method(name, raw, args.domain, 0, resume=True)
    result.update(tokens=tokens, hidden=hidden)
    if "error" in result:
        return result
    selection = read_selection(Path(result["output"]))
    eval_config = eval_proxy_config(args, raw_config("random", args, paths, k))
    cache = paths["runs"] / name / "eval.json"
    key = eval_key(selection["id"], eval_config, args.seed)
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") != key:
        evaluation = evaluate_selection(
            selection["text"], eval_config, args.seed, target_texts, target_texts[:1]
        )
        cached = {"key": key, "target_loss": evaluation["target_loss"]}
        cache.write_text(json.dumps(cached) + "\n")
    result["target_loss"] = cached["target_loss"]
    print(
        f"[{name}] precision {fmt(result['precision'], '.3f')}, "
        f"target loss {cached['target_loss']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
