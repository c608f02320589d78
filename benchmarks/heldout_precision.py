"""How well distsel's target-aware selectors find a held-out domain, through the whole pipeline.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `domain`), read in place.
`--target-size` documents of `--domain` (seeded draw) are held out as the target set; the pool is
every other document of the corpus (all domains), written as one jsonl.gz shard per domain file
under the work folder (`--workdir`, else a temporary folder). The budget is k = the number of
`--domain` documents left in the pool, so a perfect selector reaches precision 1.0 and random
selection the domain's share of the pool (k / pool size).

Each method is one `distsel.pipeline.run` with its own output folder, all on one local Ray:
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

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the model-loading bars of actors
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"

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


# --- data -------------------------------------------------------------------------------------


def load_corpus(corpus: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every (file stem, records) of the corpus, records as read (all fields kept)."""
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no *.jsonl.gz files in {corpus} (pass --corpus)")
    shards = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines if line.strip()]
        shards.append((path.name.removesuffix(".jsonl.gz"), records))
    return shards


def split(
    shards: list[tuple[str, list[dict[str, Any]]]],
    domain: str,
    target_size: int,
    seed: int,
    limit_per_domain: int | None,
) -> tuple[list[dict[str, Any]], list[tuple[str, list[dict[str, Any]]]]]:
    """The held-out target records and the pool's shards (seeded; pool rows keep file order)."""
    rng = np.random.default_rng(seed)
    in_domain = [
        (s, i)
        for s, (_, records) in enumerate(shards)
        for i, record in enumerate(records)
        if record.get("domain") == domain
    ]
    if len(in_domain) <= target_size:
        known = sorted({r.get("domain") for _, records in shards for r in records} - {None})
        raise SystemExit(
            f"domain {domain!r} has {len(in_domain)} docs, need more than {target_size} "
            f"(domains: {', '.join(map(str, known))})"
        )
    held = {in_domain[j] for j in rng.choice(len(in_domain), size=target_size, replace=False)}
    target = [shards[s][1][i] for s, i in sorted(held)]
    pool = []
    for s, (name, records) in enumerate(shards):
        rows = [i for i in range(len(records)) if (s, i) not in held]
        if limit_per_domain is not None and len(rows) > limit_per_domain:
            rows = sorted(rng.choice(rows, size=limit_per_domain, replace=False).tolist())
        pool.append((name, [records[i] for i in rows]))
    return target, pool


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


# --- runs -------------------------------------------------------------------------------------


def work_folder(
    workdir: Path | None, prefix: str
) -> tuple[tempfile.TemporaryDirectory | None, Path]:
    """`workdir` (created if missing), or a new temporary folder, returned so the caller can
    remove it."""
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix=prefix)
        return temporary, Path(temporary.name)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return None, workdir


def write_workdir(
    workdir: Path | None,
    prefix: str,
    target: list[dict[str, Any]],
    pool: list[tuple[str, list[dict[str, Any]]]],
) -> tuple[tempfile.TemporaryDirectory | None, Path, Path, Path]:
    """Write target.jsonl and pool/<domain>.jsonl.gz under `workdir` (or a temporary folder,
    returned so the caller can remove it); its old pool/ and runs/ are replaced."""
    temporary, workdir = work_folder(workdir, prefix)
    pool_dir, runs, target_path = workdir / "pool", workdir / "runs", workdir / "target.jsonl"
    for stale in (pool_dir, runs):
        shutil.rmtree(stale, ignore_errors=True)
    write_jsonl(target_path, target)
    for name, records in pool:
        if records:
            write_jsonl(pool_dir / f"{name}.jsonl.gz", records)
    return temporary, pool_dir, runs, target_path


def run_config(
    method: str, args: argparse.Namespace, pool_dir: Path, target: Path, output: Path, k: int
) -> dict[str, Any]:
    select = json.loads(json.dumps(METHODS[method]))
    select["budget"] = {"docs": k}
    raw: dict[str, Any] = {
        "input": {
            "paths": [str(pool_dir)],
            "group_field": "domain",
            "rows_per_part": args.rows_per_part,
        },
        "target": {"paths": [str(target)]},
        "output": {"path": str(output)},
        "select": select,
        "embed": {"max_length": args.max_length},
        "seed": args.seed,
    }
    if method == "similarity":
        # Only the full-pool embedding gets the stage; BETR embeds its sample in one task and
        # naming the embed stage there would embed the whole pool for nothing.
        raw["stages"] = {"embed": {"pool_size": args.embed_pool_size, "num_cpus": 1}}
    if method == "betr":
        select["similarity"]["betr_sample"] = args.betr_sample
    return raw


def run_method(
    method: str, args: argparse.Namespace, pool_dir: Path, target: Path, runs: Path, k: int
) -> dict[str, Any]:
    from distsel import pipeline
    from distsel.config import parse_config

    raw = run_config(method, args, pool_dir, target, runs / method, k)
    began = time.perf_counter()
    try:
        manifest = pipeline.run(parse_config(raw, f"{method} configuration"))
    except Exception as error:  # report it in the table, keep the other methods
        traceback.print_exc()
        return {
            "method": method,
            "error": f"{type(error).__name__}: {error}",
            "seconds": round(time.perf_counter() - began, 3),
        }
    selected = manifest["selected_docs"]
    hits = (manifest["by_group"] or {}).get("selected", {}).get(args.domain, 0)
    kl = (manifest.get("evaluation") or {}).get("kl") or {}
    return {
        "method": method,
        "select": raw["select"],
        "selected_docs": selected,
        "hits": hits,
        "precision": hits / selected if selected else None,
        "kl_reduction": kl.get("kl_reduction"),
        "kl": kl,
        "wall_seconds": manifest["wall_seconds"],
        "stages": manifest["stages"],
        "pool_by_group": manifest["by_group"]["pool"],
        "selected_by_group": manifest["by_group"]["selected"],
        "accepted_docs": manifest["accepted_docs"],
        "rejected_docs": manifest["rejected_docs"],
    }


# --- report -----------------------------------------------------------------------------------


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                f"{c:{'<' if i == 0 else '>'}{w}}"
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def table_row(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [result["method"], f"failed: {result['error'][:60]}", "-", "-"]
    precision, kl = result["precision"], result["kl_reduction"]
    return [
        result["method"],
        "-" if precision is None else f"{precision:.3f}",
        "-" if kl is None else f"{kl:.3f}",
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


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="news", help="domain held out as the target")
    parser.add_argument("--target-size", type=positive, default=500)
    parser.add_argument("--seed", type=int, default=0, help="split, random keys and Gumbel noise")
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--limit-per-domain",
        type=positive,
        default=None,
        help="keep at most N pool docs per domain file (seeded sample), for a quick run",
    )
    parser.add_argument("--max-length", type=positive, default=128, help="embed.max_length")
    parser.add_argument("--embed-pool-size", type=positive, default=2, help="embed actors")
    parser.add_argument("--betr-sample", type=positive, default=2000)
    parser.add_argument("--rows-per-part", type=positive, default=2000)
    parser.add_argument("--num-cpus", type=positive, default=2, help="CPUs of the local Ray")
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

    if not args.verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # "Dataset ... finished" lines
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    shards = load_corpus(args.corpus)
    target, pool = split(shards, args.domain, args.target_size, args.seed, args.limit_per_domain)
    pool_size = sum(len(records) for _, records in pool)
    k = sum(r.get("domain") == args.domain for _, records in pool for r in records)
    if k == 0:
        raise SystemExit(f"no '{args.domain}' docs left in the pool; lower --target-size")

    temporary, pool_dir, runs, target_path = write_workdir(
        args.workdir, "heldout_precision_", target, pool
    )

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    limit = f", at most {args.limit_per_domain} per domain" if args.limit_per_domain else ""
    print(
        f"held-out '{args.domain}': {len(target)} target docs (seed {args.seed}); "
        f"pool {pool_size} docs from {len(pool)} files{limit}; corpus {args.corpus}",
        file=sys.stderr,
    )
    results = []
    try:
        for method in args.methods:
            print(f"[{method}] running ...", file=sys.stderr, flush=True)
            result = run_method(method, args, pool_dir, target_path, runs, k)
            results.append(result)
            print(f"[{method}] {' | '.join(table_row(result)[1:])}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        if temporary is not None:
            temporary.cleanup()

    random_precision = k / pool_size
    print(
        f"domain {args.domain} | target {len(target)} docs | pool {pool_size} docs{limit} | "
        f"k = {k} | random expected precision {random_precision:.3f} | "
        f"embed max_length {args.max_length} | seed {args.seed} | {args.num_cpus} Ray CPUs"
    )
    print_table(["method", "precision", "KL reduction", "wall s"], [table_row(r) for r in results])

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "domain": args.domain,
            "target_docs": len(target),
            "pool_docs": pool_size,
            "k": k,
            "random_expected_precision": random_precision,
            "limit_per_domain": args.limit_per_domain,
            "max_length": args.max_length,
            "betr_sample": args.betr_sample,
            "rows_per_part": args.rows_per_part,
            "num_cpus": args.num_cpus,
            "seed": args.seed,
            "corpus": str(args.corpus),
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
