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

import argparse
import os
import time
from pathlib import Path
from typing import Any

import harness
from harness import fmt, positive
from selection import raw_config, workspace

DEFAULT_POINTS = "250000:128,500000:128,1000000:128,500000:64,500000:256"
COLUMNS = ["proxy tokens", "hidden", "precision", "target loss", "wall s"]


def points(text: str) -> list[tuple[int, int]]:
    pairs = [item.split(":") for item in text.split(",") if item]
    return [(int(tokens), int(hidden)) for tokens, hidden in pairs]


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
    harness.add_eval_flags(parser, train_tokens=100_000)
    parser.add_argument("--points", default=DEFAULT_POINTS, help="tokens:hidden,...")
    helps = {"workdir": "selection.py's work folder"}
    harness.add_common_flags(parser, helps, workdir=harness.REQUIRED, json=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    harness.setup_logging()
    began = time.perf_counter()
    held = harness.held_out(args)
    work = workspace(args.workdir)
    if not work.target.exists():
        raise SystemExit(f"{args.workdir}: no selection.py work folder (run selection.py first)")
    with harness.local_ray():
        results = [
            run_point(args, work, held, tokens, hidden) for tokens, hidden in points(args.points)
        ]
    header = (
        f"domain {args.domain} | pool {len(held.records)} docs | k = {held.k} | "
        f"influence top-k by I(z)/‖∇L(z)‖ | seed {args.seed} | {os.cpu_count()}-core machine"
    )
    print(header)
    harness.print_table(COLUMNS, [table_row(r) for r in results])
    total = time.perf_counter() - began
    print(f"evaluation proxies: {args.eval_train_tokens} train tokens each; total {total:.0f} s")
    harness.write_json(args.json, {"header": header, "results": results})


def table_row(result: dict[str, Any]) -> list[str]:
    return [
        str(result["tokens"]),
        str(result["hidden"]),
        fmt(result.get("precision"), ".3f"),
        fmt(result.get("target_loss"), ".4f"),
        fmt(result.get("wall_seconds"), ".1f"),
    ]


def run_point(
    args: argparse.Namespace,
    work: harness.Workspace,
    held: harness.HeldOut,
    tokens: int,
    hidden: int,
) -> dict[str, Any]:
    """One proxy size: its influence top-k run (read back when finished) and its evaluation."""
    args.proxy_train_tokens = tokens
    raw = raw_config("influence-topk-norm", args, work, held.k)
    raw["proxy"]["hidden"] = hidden
    name = "influence-topk-norm"  # selection.py's run, when this point is its proxy
    if harness.finished_manifest(raw) is None:
        name = f"proxy-{tokens}-{hidden}"
        raw["output"]["path"] = str(work.runs / name)
    result = harness.run_method(name, raw, args.domain, resume=True)
    result.update(tokens=tokens, hidden=hidden)
    if "error" in result:
        return result
    selection = harness.read_selection(Path(result["output"]))
    config = harness.eval_proxy_config(args, raw_config("random", args, work, held.k))
    cache = work.runs / name / "eval.json"
    result["target_loss"] = harness.cached_target_loss(
        name, cache, selection, config, args.seed, held.target_texts
    )
    harness.progress(
        name,
        f"precision {fmt(result['precision'], '.3f')}, target loss {result['target_loss']:.4f}",
    )
    return result


if __name__ == "__main__":
    main()
