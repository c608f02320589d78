"""Scaling: the same scoring job on one vs two simulated nodes of one CPU each.

Data: ../shared/data/corpus/*.jsonl.gz (one domain per file, field `text`), read in place.
`--docs` documents are drawn evenly from every domain file (seeded) and shuffled into one pool
shard in a work folder (`--workdir`, else a temporary folder), cut into parts of
`--rows-per-part` rows (default: distsel's own sizing, about 4 parts per core of the machine), so
every part is a like mixture of domains. For `--stage dsir`, the
target is `--target-docs` other documents of `--target-domain`.

Each run is a fresh process (this script again, with a hidden flag) that makes a multi-node Ray
with `ray.cluster_utils.Cluster` on 127.0.0.1: a head without CPUs (the driver's node) and N
worker nodes of one CPU each. The runs are N = 1, 2 (`--repeat` alternates them: 1, 2, 1, 2, ...).
Each runs distsel's scoring phase, `pipeline.run(config, phase="score")`, with one stage
(`--stage`: embed, the bundled all-MiniLM-L6-v2 at embed.max_length `--max-length`, one torch
thread per actor; or dsir; or perplexity, with a proxy LM trained once beforehand) with
distsel's default pool size (as many one-CPU actors as the cluster holds: one per worker node).

Ingest (and, for perplexity, the proxy's training) is done once beforehand, in its own process,
into a template output that every run starts from as a copy, so no run ingests or trains.
Measured per run, from the scoring summary (stages.<stage>):
  stage s   = seconds − prepare_seconds: the pool's start (actors' setup, e.g. model loading)
              and the scoring of every part, the stage's fitting (prepare) left out
  docs/s    = scored documents / stage s (the goal's throughput)
  busy s    = the most any worker node spent inside its parts (sum of the parts' own seconds)
  wall s    = the scoring phase's wall_seconds (resumed ingest, prepare and stage)
  parts     = parts scored on each worker node (parts_per_node)
Ratio = median docs/s of the 2-node runs / median docs/s of the 1-node runs; goal ≥ 1.7.
Checks: every 2-node run scored parts on both worker nodes (none on the head), and every run's
score table equals the first run's (same ids in the same parts; values allclose, atol 1e-5).

The simulated nodes share this machine's cores; a ratio near 2 needs at least two idle cores
beside Ray's own processes (GCS, raylets, driver). Stage s includes the actors' start, a fixed
cost that weighs more the fewer documents there are; busy s leaves it out. Each actor takes one part
at a time, so give the run many more parts than actors for the load to even out.
The exit status is 1 when a check fails (not when the goal is missed).

    python benchmarks/scaling.py
    python benchmarks/scaling.py --stage dsir --docs 20000 --rows-per-part 1000
    python benchmarks/scaling.py --repeat 3 --json out/scaling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import positive, write_jsonl

# Every run's process (and so its Ray nodes and their workers) gets these.
CHILD_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray on 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # A simulated one-CPU node: no tokenizer threads beside the actor's one torch thread.
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_LOG_LEVEL": "WARNING",
}

STAGES = ("embed", "dsir", "perplexity")
NODES = (1, 2)
GOAL = 1.7
CHILD_FLAG = "--_child"
RESULT_PREFIX = "SCALING_RESULT "
ATOL = 1e-5


# --- data -------------------------------------------------------------------------------------


def draw(
    files: list[tuple[str, list[dict[str, Any]]]],
    docs: int,
    target_domain: str,
    target_docs: int,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`docs` pool records drawn evenly from every file (seeded) and shuffled, and `target_docs`
    other records of the `target_domain` file (fewer where a file runs short)."""
    rng = np.random.default_rng(seed)
    quotas = [docs // len(files) + (i < docs % len(files)) for i in range(len(files))]
    pool: list[dict[str, Any]] = []
    target: list[dict[str, Any]] = []
    for (name, records), quota in zip(files, quotas, strict=True):
        order = rng.permutation(len(records))
        pool += [records[i] for i in order[:quota]]
        if name == target_domain:
            target = [records[i] for i in order[quota : quota + target_docs]]
    order = rng.permutation(len(pool))
    pool = [{"text": pool[i]["text"], "domain": pool[i].get("domain")} for i in order]
    return pool, [{"text": r["text"]} for r in target]


def run_config(args: argparse.Namespace, work: Path, output: Path, nodes: int) -> dict[str, Any]:
    """The scoring configuration of one run (nodes = 0: the template's, without the stage)."""
    raw: dict[str, Any] = {
        "input": {"paths": [str(work / "pool")], "group_field": "domain"},
        "output": {"path": str(output)},
        "select": {"method": "all"},
        "embed": {"max_length": args.max_length},
        "proxy": {"train_tokens": args.proxy_train_tokens, "sample_docs": args.docs},
        "seed": args.seed,
    }
    if args.rows_per_part:
        raw["input"]["rows_per_part"] = args.rows_per_part
    if args.stage == "dsir":
        raw["target"] = {"paths": [str(work / "target.jsonl")]}
    if nodes:
        stage: dict[str, Any] = {"num_cpus": 1}
        if args.batch_size:
            stage["batch_size"] = args.batch_size
        raw["stages"] = {args.stage: stage}
        if args.stage == "perplexity":
            raw["proxy"]["path"] = str(work / "template" / "proxy")
    return raw


# --- one run, in its own process --------------------------------------------------------------


def child(spec_path: Path) -> None:
    """Make the cluster the spec asks for, do its work, print the outcome as one JSON line."""
    for name, value in CHILD_ENV.items():
        os.environ.setdefault(name, value)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    harness.setup_logging(spec["verbose"])
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    workers = [cluster.add_node(num_cpus=spec["cpus_per_node"]) for _ in range(spec["nodes"])]
    cluster.wait_for_nodes()
    outcome: dict[str, Any] = {
        "head": cluster.head_node.node_id,
        "workers": [worker.node_id for worker in workers],
    }
    try:
        outcome.update(score_on(cluster.address, spec))
    finally:
        cluster.shutdown()
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)


def score_on(address: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The scoring phase on the cluster at `address` (and the proxy's training, where the spec
    asks for it), timed."""
    import ray

    import distsel
    from distsel.core.config import parse_config

    config = parse_config(spec["config"], "scaling configuration")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=spec["verbose"])
    try:
        harness.quiet_ray_data()
        began = time.perf_counter()
        outcome = {"summary": distsel.run(config, "score").manifest}
        outcome["seconds"] = time.perf_counter() - began
        if spec["proxy"]:
            outcome.update(train_proxy(config))
        return outcome
    finally:
        ray.shutdown()


def train_proxy(config: Any) -> dict[str, Any]:
    """The proxy of a scored output, trained (perplexity's runs then reuse it), timed."""
    from distsel.core import layout
    from distsel.core.stage import StageContext
    from distsel.core.storage import Store
    from distsel.methods.proxy import ensure_proxy

    store = Store(config.output.path)
    parts = sorted(store.list(layout.DOCS, layout.PART_SUFFIX))  # ingest's order: shard, number
    began = time.perf_counter()
    _, proxy = ensure_proxy(StageContext(config, store, parts))
    return {"proxy": proxy, "proxy_seconds": time.perf_counter() - began}


def spawn(spec: dict[str, Any], spec_path: Path, timeout: float, verbose: bool) -> dict[str, Any]:
    """Run `child` in a fresh interpreter; return its outcome."""
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=None if verbose else subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, **CHILD_ENV},
        cwd=harness.REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "")[-4000:] + done.stdout[-2000:]
        raise SystemExit(f"run {spec_path.stem} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


# --- measurements -----------------------------------------------------------------------------


def node_busy(output: Path, stage: str) -> dict[str, float]:
    """Seconds each node spent inside its parts (the parts' own timings, summed)."""
    busy: dict[str, float] = {}
    for path in (output / "_state" / stage).glob("*.parquet.json"):
        marker = json.loads(path.read_text(encoding="utf-8"))
        node = marker.get("node", "?")
        busy[node] = busy.get(node, 0.0) + float(marker["seconds"])
    return busy


def measure(
    outcome: dict[str, Any], output: Path, stage: str, nodes: int, index: int
) -> dict[str, Any]:
    timing = outcome["summary"]["stages"][stage]
    seconds = timing["seconds"] - timing["prepare_seconds"]
    busy = node_busy(output, stage)
    per_node = timing["parts_per_node"]
    workers = outcome["workers"]
    ingest = outcome["summary"]["stages"].get("ingest", {})
    return {
        "run": index,
        "nodes": nodes,
        "output": str(output),
        "docs": timing["rows"],
        "stage_seconds": round(seconds, 3),
        "prepare_seconds": timing["prepare_seconds"],
        "docs_per_second": timing["rows"] / seconds if seconds > 0 else float("nan"),
        "busy_seconds_max_node": round(max(busy.values(), default=0.0), 3),
        "busy_seconds_per_node": [round(busy.get(w, 0.0), 3) for w in workers],
        "wall_seconds": outcome["summary"]["wall_seconds"],
        "parts_per_worker": [per_node.get(w, 0) for w in workers],
        "parts_elsewhere": {k: v for k, v in per_node.items() if k not in workers},
        "all_workers_used": set(per_node) == set(workers),
        "ingest_resumed": ingest.get("resumed_shards") == len(outcome["summary"]["shards"]),
        "workers": workers,
        "head": outcome["head"],
        "stage": timing,
    }


def column_values(column: Any) -> np.ndarray | list:
    """A score column as float64 values (list columns flattened); else as Python values."""
    import pyarrow as pa

    array = column.combine_chunks()
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
    return array.to_pylist()


def compare_scores(reference: Path, other: Path, stage: str) -> dict[str, Any]:
    """Whether two runs' score tables hold the same ids, part by part, and close values."""
    import pyarrow.parquet as pq

    names = sorted(p.name for p in (reference / "scores" / stage).glob("*.parquet"))
    others = sorted(p.name for p in (other / "scores" / stage).glob("*.parquet"))
    found = {"same_parts": names == others, "same_ids": True, "close": True, "max_abs_diff": 0.0}
    if not found["same_parts"] or not names:
        found.update(same_parts=False, same_ids=False, close=False)
        return found
    for name in names:
        a = pq.read_table(reference / "scores" / stage / name)
        b = pq.read_table(other / "scores" / stage / name)
        if a.column_names != b.column_names or a["id"].to_pylist() != b["id"].to_pylist():
            found.update(same_ids=False, close=False)
            continue
        for column in a.column_names:
            if column == "id":
                continue
            x, y = column_values(a[column]), column_values(b[column])
            if isinstance(x, list) or isinstance(y, list):
                found["close"] &= x == y
            elif x.shape != y.shape:
                found["close"] = False
            elif x.size:
                found["max_abs_diff"] = max(found["max_abs_diff"], float(np.abs(x - y).max()))
                found["close"] &= bool(np.allclose(x, y, rtol=ATOL, atol=ATOL, equal_nan=True))
    return found


# --- report -----------------------------------------------------------------------------------


def table_row(result: dict[str, Any]) -> list[str]:
    parts = " + ".join(str(n) for n in result["parts_per_worker"])
    if result["parts_elsewhere"]:
        parts += f" (+ {sum(result['parts_elsewhere'].values())} elsewhere)"
    return [
        str(result["run"]),
        str(result["nodes"]),
        str(result["docs"]),
        f"{result['stage_seconds']:.2f}",
        f"{result['docs_per_second']:.1f}",
        f"{result['busy_seconds_max_node']:.2f}",
        f"{result['wall_seconds']:.2f}",
        parts,
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS)
    parser.add_argument("--stage", choices=STAGES, default="embed")
    parser.add_argument("--docs", type=positive, default=1200, help="pool documents")
    parser.add_argument("--rows-per-part", type=positive, default=None)
    parser.add_argument("--max-length", type=positive, default=128, help="embed.max_length")
    parser.add_argument(
        "--batch-size", type=positive, default=None, help="stages.<stage>.batch_size"
    )
    parser.add_argument("--repeat", type=positive, default=1, help="rounds of 1, 2 nodes")
    harness.add_common_flags(parser, seed=0)
    parser.add_argument("--target-domain", default="scientific", help="dsir's target")
    parser.add_argument("--target-docs", type=positive, default=200, help="dsir's target")
    parser.add_argument(
        "--proxy-train-tokens", type=positive, default=200_000, help="perplexity's proxy"
    )
    parser.add_argument(
        "--timeout", type=positive, default=1800, help="seconds allowed to each run"
    )
    helps = {
        "workdir": "keep the pool, template and run outputs here (its pool/, template/ and "
        "runs/ are replaced); default: a temporary folder, removed at the end",
        "verbose": "distsel's and Ray's logs",
    }
    harness.add_common_flags(parser, helps, workdir=None, json=None, verbose=False)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        child(Path(argv[1]))
        return 0
    args = parse_args(argv)
    files = [
        (name, [r for r in records if r.get("text")])
        for name, records in harness.load_corpus(args.corpus)
    ]
    pool, target = draw(files, args.docs, args.target_domain, args.target_docs, args.seed)
    if args.stage == "dsir" and not target:
        raise SystemExit(f"no documents of --target-domain {args.target_domain!r} left")
    with harness.work_folder(args.workdir, "scaling_") as work:
        for stale in ("pool", "template", "runs", "specs"):
            shutil.rmtree(work / stale, ignore_errors=True)
        write_jsonl(work / "pool" / "pool.jsonl.gz", pool)
        write_jsonl(work / "target.jsonl", target)
        (work / "specs").mkdir()
        results, template = run_all(args, work)
        reference = Path(results[0]["output"])
        for result in results:
            result["scores"] = compare_scores(reference, Path(result["output"]), args.stage)
    return report(args, len(pool), results, template)


def run_all(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest (and train the proxy) once into template/, then every run on a copy of it."""
    template = work / "template"
    spec = {
        "config": run_config(args, work, template, 0),
        "nodes": 1,
        "cpus_per_node": os.cpu_count() or 1,
        "proxy": args.stage == "perplexity",
        "verbose": args.verbose,
    }
    print("preparing: ingest" + (" and proxy" * spec["proxy"]) + " ...", file=sys.stderr)
    prepared = spawn(spec, work / "specs" / "prepare.json", args.timeout, args.verbose)
    results = []
    order = [nodes for _ in range(args.repeat) for nodes in NODES]
    for index, nodes in enumerate(order, start=1):
        output = work / "runs" / f"{index:02d}-{nodes}node"
        shutil.copytree(template, output)
        spec = {
            "config": run_config(args, work, output, nodes),
            "nodes": nodes,
            "cpus_per_node": 1,
            "proxy": False,
            "verbose": args.verbose,
        }
        print(f"[run {index}/{len(order)}] {nodes} node(s) ...", file=sys.stderr, flush=True)
        outcome = spawn(spec, work / "specs" / f"{output.name}.json", args.timeout, args.verbose)
        result = measure(outcome, output, args.stage, nodes, index)
        print(f"[run {index}/{len(order)}] {' | '.join(table_row(result)[2:])}", file=sys.stderr)
        results.append(result)
    ingest = prepared["summary"]["stages"]["ingest"]
    return results, {
        "ingest_seconds": ingest["seconds"],
        "parts": ingest["parts"],
        "accepted_docs": prepared["summary"]["accepted_docs"],
        "proxy": prepared.get("proxy"),
        "proxy_seconds": prepared.get("proxy_seconds"),
    }


def medians(results: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per node count, the median of each timing over its runs."""
    return {
        nodes: {
            key: statistics.median(r[key] for r in results if r["nodes"] == nodes)
            for key in ("docs_per_second", "stage_seconds", "busy_seconds_max_node")
        }
        for nodes in NODES
    }


def checks(results: list[dict[str, Any]]) -> dict[str, bool]:
    two_node = [r for r in results if r["nodes"] == 2]
    return {
        "both_workers": all(r["all_workers_used"] and not r["parts_elsewhere"] for r in two_node),
        "same_scores": all(r["scores"]["same_ids"] and r["scores"]["close"] for r in results),
        "ingest_resumed": all(r["ingest_resumed"] for r in results),
    }


def print_ratios(args: argparse.Namespace, middle: dict[int, dict[str, float]]) -> None:
    ratio = middle[2]["docs_per_second"] / middle[1]["docs_per_second"]
    busy_ratio = middle[1]["busy_seconds_max_node"] / middle[2]["busy_seconds_max_node"]
    runs = f"median of {args.repeat} runs each, " if args.repeat > 1 else ""
    print(
        f"throughput ratio docs/s(2 nodes) / docs/s(1 node): {ratio:.2f} ({runs}"
        f"{middle[1]['docs_per_second']:.1f} -> {middle[2]['docs_per_second']:.1f} docs/s); "
        f"goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}"
    )
    print(f"busy-time ratio (parts' own seconds, slowest node): {busy_ratio:.2f}")


def print_checks(results: list[dict[str, Any]], found: dict[str, bool]) -> None:
    def said(ok: bool) -> str:
        return "yes" if ok else "NO"

    worst = max(r["scores"]["max_abs_diff"] for r in results)
    print(
        f"checks: both worker nodes scored in every 2-node run: {said(found['both_workers'])}; "
        f"score tables identical across runs (ids; values within {ATOL:g}, max |diff| "
        f"{worst:.1e}): {said(found['same_scores'])}; no run ingested again: "
        f"{said(found['ingest_resumed'])}"
    )


def report(
    args: argparse.Namespace, docs: int, results: list[dict[str, Any]], template: dict[str, Any]
) -> int:
    parts = template["parts"]
    rows = args.rows_per_part or f"~{-(-template['accepted_docs'] // parts)} (distsel's sizing)"
    detail = f"embed.max_length {args.max_length}, " if args.stage == "embed" else ""
    print(
        f"stage {args.stage} ({detail}one 1-CPU actor per worker node) | {docs} docs from "
        f"{args.corpus}, {template['accepted_docs']} accepted, {parts} parts of "
        f"{rows} rows | ingest once beforehand: {template['ingest_seconds']:.1f} s"
        + (f" | proxy trained in {template['proxy_seconds']:.1f} s" if template["proxy"] else "")
    )
    header = ["run", "nodes", "docs", "stage s", "docs/s", "busy s", "wall s", "parts per node"]
    harness.print_table(header, [table_row(r) for r in results], left=0)
    middle = medians(results)
    print_ratios(args, middle)
    found = checks(results)
    print_checks(results, found)
    ratio = middle[2]["docs_per_second"] / middle[1]["docs_per_second"]
    settings = ("stage", "rows_per_part", "max_length", "batch_size", "repeat", "seed")
    summary = {
        **{key: getattr(args, key) for key in settings},
        "docs": docs,
        "accepted_docs": template["accepted_docs"],
        "corpus": str(args.corpus),
        "cpu_count": os.cpu_count(),
        "template": template,
        "medians": {str(k): v for k, v in middle.items()},
        "ratio": ratio,
        "busy_ratio": middle[1]["busy_seconds_max_node"] / middle[2]["busy_seconds_max_node"],
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "checks": found,
    }
    harness.write_json(args.json, {**summary, "runs": results})
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
