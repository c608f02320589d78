"""How well distsel's target-aware selectors find a held-out domain, through the whole pipeline.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place.
`--target-size` documents of `--domain` (seeded draw) are held out as the target set; the pool is
every other document of the corpus (all domains), written as one jsonl.gz shard per domain file
under the work folder (`--workdir`, else a temporary folder). The budget is k = the number of
`--domain` documents left in the pool, so a perfect selector reaches precision 1.0 and random
selection the domain's share of the pool (k / pool size).

Each method is one `distsel.app.pipeline.run` with its own output folder, all on one local Ray:
  random             uniform sample (seeded)
  dsir               DSIR importance weights, Gumbel top-k (the default sampling)
  dsir-topk          DSIR, plain top-k of the log weights
  dsir-lennorm-topk  DSIR, top-k of the log weights per n-gram (length_normalize)
  similarity         RDS+: cosine to the target (embeds the whole pool; MiniLM on the CPU here)
  betr               BETR: embeds a sample of `--betr-sample` docs, hashed n-gram classifier
precision = selected docs of `--domain` / selected docs (manifest by_group); KL reduction =
manifest evaluation.kl.kl_reduction; wall s = manifest wall_seconds (ingest + stages + select +
evaluation, on `--num-cpus` Ray CPUs).

    python benchmarks/heldout_precision.py --domain scientific
    python benchmarks/heldout_precision.py --domain news --methods random,dsir,dsir-topk
    python benchmarks/heldout_precision.py --limit-per-domain 1500 --json out/heldout.json
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import harness
from harness import positive

# method name -> `select` section of the run configuration (budget added per run)
METHODS: dict[str, dict[str, Any]] = {
    "random": {"method": "random"},
    "dsir": {"method": "dsir"},
    "dsir-topk": {"method": "dsir", "dsir": {"sampling": "topk"}},
    "dsir-lennorm-topk": {
        "method": "dsir",
        "dsir": {"sampling": "topk", "length_normalize": True},
    },
    "similarity": {"method": "similarity"},
    "betr": {"method": "similarity", "similarity": {"betr": True}},
}


def run_config(
    method: str, args: argparse.Namespace, work: harness.Workspace, k: int
) -> dict[str, Any]:
    select = copy.deepcopy(METHODS[method])
    select["budget"] = {"docs": k}
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(work.pool)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(work.target)]},
        "output": {"path": str(work.runs / method)},
        "select": select,
        "embed": {"max_length": args.max_length},
        "seed": args.seed,
    }
    if method == "similarity":
        # Only the full-pool embedding gets the stage; BETR embeds its sample in one task and
        # naming the embed stage there would embed the whole pool for nothing.
        raw["stages"] = {"embed": {"pool_size": args.embed_pool_size, "num_cpus": 1}}
    if method == "betr":
        raw["stages"] = {"betr": {"sample": args.betr_sample}}
    return raw


def table_row(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return harness.failed_row(result, 4)
    return [
        result["method"],
        harness.fmt(result["precision"], ".3f"),
        harness.fmt(result["kl_reduction"], ".3f"),
        f"{result['wall_seconds']:.1f}",
    ]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(METHODS)}"
        )
    return methods


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(
        parser,
        helps={"seed": "split, random keys and Gumbel noise"},
        corpus=harness.DEFAULT_CORPUS,
        domain="news",
        target_size=500,
        seed=0,
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    harness.add_common_flags(parser, limit_per_domain=None)
    parser.add_argument("--max-length", type=positive, default=128, help="embed.max_length")
    parser.add_argument("--embed-pool-size", type=positive, default=2, help="embed actors")
    parser.add_argument("--betr-sample", type=positive, default=2000)
    harness.add_common_flags(
        parser, rows_per_part=2000, num_cpus=2, workdir=None, json=None, verbose=False
    )
    return parser.parse_args()


def run_all(args: argparse.Namespace, held: harness.HeldOut) -> list[dict[str, Any]]:
    """Every method of --methods through the pipeline, in a work folder of the split."""
    results = []
    with harness.work_folder(args.workdir, "heldout_precision_") as root:
        work = harness.Workspace(root)
        work.prepare(held)
        with harness.local_ray(args.num_cpus):
            for method in args.methods:
                harness.progress(method, "running ...")
                raw = run_config(method, args, work, held.k)
                result = harness.run_method(method, raw, args.domain, len(held.records))
                results.append(result)
                harness.progress(method, " | ".join(table_row(result)[1:]))
    return results


def main() -> None:
    args = parse_args()
    harness.setup_logging(args.verbose)
    held = harness.held_out(args)
    results = run_all(args, held)
    print(
        f"{held.header()} | embed max_length {args.max_length} | seed {args.seed} | "
        f"{args.num_cpus} Ray CPUs"
    )
    harness.print_table(
        ["method", "precision", "KL reduction", "wall s"], [table_row(r) for r in results]
    )
    settings = ("max_length", "betr_sample", "rows_per_part", "num_cpus", "seed", "corpus")
    summary = {**held.summary(), **{key: getattr(args, key) for key in settings}}
    harness.write_json(args.json, {**summary, "results": results})


if __name__ == "__main__":
    main()
