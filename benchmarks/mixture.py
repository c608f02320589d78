"""Mixture search over the corpus domains: the best mixture found vs uniform vs natural, and the
proxy steps ASHA saves.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`); at most `--limit`
documents per domain (seeded sample), so domains of short documents (news, reviews) hold few of
the pool's tokens and the natural (token-share) mixture differs from the uniform one.

Two scenarios, each a pool ingested once by distsel (`distsel.run(config, "score")`) and searched
in copies of that output by `distsel.run(config, "mixture")` (groups = `domain`), every proxy
trained on the same `--train-tokens` budget:
  targets   target = ../shared/data/targets/pubmedqa.jsonl + gsm8k.jsonl; searched four ways:
            tune + ASHA, tune without ASHA (same seed, same trials), RegMix, and DoReMi (which
            reads no target: its weights come from group DRO against a uniform-mixture proxy)
  heldout   target = `--heldout-size` documents of `--heldout-domain` taken out of the pool
            (the rest of that domain stays in it), so the right answer is known: weight on it
target loss / held-out loss = mean token loss of the proxy trained on the mixture, on the fixed
target sequences / on held-out pool documents (the uniform and natural rows are their own
full-budget runs). Proxy steps = optimizer steps over all proxies of a search; "steps to L*" =
steps spent (trials in creation order) until the first full-budget trial reached L*, the worse
of the two searches' best losses.

    python benchmarks/mixture.py                       # both scenarios, about 15 min, 2 CPUs
    python benchmarks/mixture.py --scenarios targets --no-regmix --limit 300
    python benchmarks/mixture.py --json /tmp/mixture.json --workdir /tmp/mixture-bench
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import write_jsonl

DEFAULT_TARGETS = [
    harness.DATA / "targets" / "pubmedqa.jsonl",
    harness.DATA / "targets" / "gsm8k.jsonl",
]


# --- data -------------------------------------------------------------------------------------


def load_domains(corpus: Path, limit: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Each domain file's records, at most `limit` of them (seeded sample, file order kept)."""
    rng = np.random.default_rng(seed)
    domains = {}
    for name, records in harness.load_corpus(corpus):
        if limit and len(records) > limit:
            records = [records[i] for i in sorted(rng.choice(len(records), limit, replace=False))]
        domains[name] = records
    return domains


def hold_out(
    domains: dict[str, list[dict[str, Any]]], domain: str, size: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """`size` seeded documents of `domain` as the target; the pool keeps everything else."""
    records = domains.get(domain)
    if not records or len(records) <= size:
        raise SystemExit(f"--heldout-domain {domain!r} needs more than {size} documents")
    held = set(np.random.default_rng(seed).choice(len(records), size, replace=False).tolist())
    pool = dict(domains)
    pool[domain] = [r for i, r in enumerate(records) if i not in held]
    return [records[i] for i in sorted(held)], pool


def write_pool(folder: Path, domains: dict[str, list[dict[str, Any]]]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    for name, records in domains.items():
        write_jsonl(folder / f"{name}.jsonl.gz", records)
    return folder


# --- runs -------------------------------------------------------------------------------------


def make_config(
    args: argparse.Namespace, pool: Path, targets: list[Path], output: Path
) -> dict[str, Any]:
    return {
        "input": {"paths": [str(pool)], "group_field": "domain", "rows_per_part": 2000},
        "target": {"paths": [str(p) for p in targets]},
        "output": {"path": str(output)},
        "select": {"method": "mixture", "budget": {"tokens": args.train_tokens}},
        "proxy": {
            "layers": args.layers,
            "hidden": args.hidden,
            "heads": 4,
            "vocab_size": args.vocab_size,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "sample_docs": args.sample_docs,
        },
        "mixture": {
            "trials": args.trials,
            "max_concurrent": args.max_concurrent,
            "train_tokens": args.train_tokens,
            "report_every": args.report_every,
            "trial_cpus": 1,
            "heldout_docs": args.heldout_docs,
        },
        "seed": args.seed,
    }


def search(raw: dict[str, Any], label: str, **mixture: Any) -> dict[str, Any]:
    """The mixture search of `raw` with `mixture` settings changed, in a copy of its output
    folder ingested once (so every search starts from the same parts)."""
    import distsel

    ingested = Path(raw["output"]["path"])
    if not (ingested / "scoring.json").exists():
        distsel.run(raw, "score")
    output = ingested.with_name(f"{ingested.name}-{re.sub(r'[^a-z0-9]+', '-', label.lower())}")
    harness.copy_scored(ingested, output)
    config = {**raw, "output": {"path": str(output)}, "mixture": {**raw["mixture"], **mixture}}
    print(f"[{label}] searching ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    section = distsel.run(config, "mixture").manifest
    section["wall_seconds"] = round(time.perf_counter() - began, 1)
    print(f"[{label}] done in {section['wall_seconds']} s", file=sys.stderr, flush=True)
    return section


def steps_to_reach(section: dict[str, Any], loss: float) -> int | None:
    """Steps spent (trials in creation order) until a full-budget trial reached `loss`."""
    spent = 0
    for row in section["trials"]:
        spent += row["steps"]
        if row["status"] == "completed" and row["target_loss"] <= loss + 1e-12:
            return spent
    return None


# --- tables -----------------------------------------------------------------------------------


def top_weights(weights: dict[str, float], count: int = 3) -> str:
    ranked = sorted(weights.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {share:.2f}" for name, share in ranked)


def mixture_rows(runs: dict[str, dict[str, Any]], watch: str | None) -> list[list[str]]:
    first = next(iter(runs.values()))
    natural = {g: info["natural"] for g, info in first["groups"].items()}
    uniform = {g: 1 / len(natural) for g in natural}
    rows = []
    for name, weights in (("uniform", uniform), ("natural", natural)):
        base = first["baseline_losses"][name]
        rows.append(_row(name, base["target_loss"], base["heldout_loss"], weights, watch))
    for label, section in runs.items():
        name = f"best: {label}"
        if "regmix" in section:
            name += f" (predicted {section['regmix']['predicted_loss']:.4f})"
        rows.append(
            _row(
                name,
                section["best_loss"],
                section["best_heldout_loss"],
                section["best_weights"],
                watch,
            )
        )
    return rows


def _row(name: str, target: float, heldout: float, weights: dict, watch: str | None) -> list[str]:
    row = [name, f"{target:.4f}", f"{heldout:.4f}"]
    if watch:
        row.append(f"{weights[watch]:.3f}")
    return [*row, top_weights(weights)]


def asha_rows(tuned: dict[str, dict[str, Any]]) -> list[list[str]]:
    level = max(section["best_loss"] for section in tuned.values())
    rows = []
    for label, section in tuned.items():
        trials = section["trials"]
        stopped = sum(r["status"] == "stopped" for r in trials)
        reached = steps_to_reach(section, level)
        rows.append(
            [
                label,
                f"{len(trials) - stopped}/{stopped}",
                str(section["proxy_steps"]),
                f"{section['best_loss']:.4f}",
                "-" if reached is None else str(reached),
                f"{section['wall_seconds']:.0f}"
                + (" (resumed)" if section["resumed_trials"] else ""),
            ]
        )
    return rows


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS)
    parser.add_argument("--targets", type=Path, nargs="+", default=DEFAULT_TARGETS)
    parser.add_argument("--scenarios", default="targets,heldout", help="targets,heldout")
    parser.add_argument("--heldout-domain", default="legal")
    parser.add_argument("--heldout-size", type=int, default=200)
    parser.add_argument("--limit", type=int, default=800, help="docs per domain; 0: all")
    parser.add_argument("--no-regmix", action="store_true", help="skip the RegMix search")
    parser.add_argument("--no-doremi", action="store_true", help="skip the DoReMi search")
    harness.add_common_flags(parser, seed=0, num_cpus=2)
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, default=16)
    group.add_argument("--max-concurrent", type=int, default=2)
    group.add_argument("--train-tokens", type=int, default=200_000, help="per proxy")
    group.add_argument("--report-every", type=int, default=10, help="steps")
    group.add_argument("--heldout-docs", type=int, default=200)
    group = parser.add_argument_group("proxy")
    group.add_argument("--layers", type=int, default=2)
    group.add_argument("--hidden", type=int, default=64)
    group.add_argument("--vocab-size", type=int, default=2048)
    group.add_argument("--max-length", type=int, default=128)
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--learning-rate", type=float, default=3e-3)
    group.add_argument("--sample-docs", type=int, default=2000, help="BPE training docs")
    helps = {"workdir": "default: a temporary folder", "json": "also save every section here"}
    harness.add_common_flags(parser, helps, workdir=None, json=None)
    return parser.parse_args()


def run_targets(args: argparse.Namespace, domains: dict, workdir: Path) -> dict[str, Any]:
    config = make_config(
        args, write_pool(workdir / "pool-targets", domains), args.targets, workdir / "out-targets"
    )
    runs = {
        "tune + ASHA": search(config, "targets: tune + ASHA", asha=True),
        "tune, no ASHA": search(config, "targets: tune, no ASHA", asha=False),
    }
    if not args.no_regmix:
        runs["RegMix"] = search(config, "targets: RegMix", mode="regmix")
    if not args.no_doremi:
        runs["DoReMi"] = search(config, "targets: DoReMi", mode="doremi")
    return runs


def run_heldout(args: argparse.Namespace, domains: dict, workdir: Path) -> dict[str, Any]:
    target, pool_domains = hold_out(domains, args.heldout_domain, args.heldout_size, args.seed)
    write_jsonl(workdir / "heldout-target.jsonl", target)
    config = make_config(
        args,
        write_pool(workdir / "pool-heldout", pool_domains),
        [workdir / "heldout-target.jsonl"],
        workdir / "out-heldout",
    )
    label = f"heldout {args.heldout_domain}: tune + ASHA"
    return {"tune + ASHA": search(config, label, asha=True)}


def main() -> None:
    args = parse_args()
    harness.setup_logging()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    domains = load_domains(args.corpus, args.limit, args.seed)
    began = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with (
        harness.work_folder(args.workdir, "mixture_bench_") as workdir,
        harness.local_ray(args.num_cpus),
    ):
        if "targets" in scenarios:
            results["targets"] = run_targets(args, domains, workdir)
        if "heldout" in scenarios:
            results["heldout"] = run_heldout(args, domains, workdir)
    report(args, results, domains, time.perf_counter() - began)
    harness.write_json(args.json, results)


def report(args: argparse.Namespace, results: dict, domains: dict, seconds: float) -> None:
    any_run = next(iter(next(iter(results.values())).values()))
    proxy = any_run["proxy"]
    print(
        f"\nmixture benchmark | {len(domains)} domains, at most {args.limit} docs each | proxy "
        f"{args.layers}x{args.hidden}, vocab {args.vocab_size}, {args.max_length} tokens x "
        f"{args.batch_size} | {proxy['tokens_per_trial']} tokens = {proxy['steps_per_trial']} "
        f"steps per proxy | {args.trials} trials, {args.max_concurrent} at a time | seed "
        f"{args.seed} | {args.num_cpus} Ray CPUs | {seconds / 60:.1f} min"
    )
    header = ["mixture", "target loss", "held-out loss", "top weights"]
    if "targets" in results:
        targets = " + ".join(p.stem for p in args.targets)
        rows = mixture_rows(results["targets"], None)
        harness.print_table(header, rows, left=len(header), title=f"target {targets}")
        tuned = {k: v for k, v in results["targets"].items() if k.startswith("tune")}
        level = max(s["best_loss"] for s in tuned.values())
        columns = ["search", "full/stopped", "proxy steps", "best loss", "steps to L*", "wall s"]
        harness.print_table(
            columns,
            asha_rows(tuned),
            left=len(columns),
            title=f"ASHA vs none ({targets}; L* = {level:.4f})",
        )
        searches = [
            [
                label,
                f"{section['best_loss']:.4f}",
                str(section["proxy_steps"]),
                f"{section['wall_seconds']:.0f}",
            ]
            for label, section in results["targets"].items()
        ]
        harness.print_table(
            ["search", "target loss of its mixture", "proxy steps", "wall s"],
            searches,
            left=1,
            title=f"every search ({targets})",
        )
    if "heldout" in results:
        domain = args.heldout_domain
        columns = [*header[:3], f"w[{domain}]", header[3]]
        harness.print_table(
            columns,
            mixture_rows(results["heldout"], domain),
            left=len(columns),
            title=f"target: {args.heldout_size} held-out {domain} docs",
        )


if __name__ == "__main__":
    main()
