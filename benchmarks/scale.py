"""Scale: whole `distsel run`s on synthetic pools of 10^5 to 4·10^6 documents, and k-means
Lloyd steps over 10^6 synthetic embedding rows, with the driver's peak memory.

Pools: spans of 80–600 characters cut at random (seeded) from the texts of
../shared/data/corpus/*.jsonl.gz, written once into a work folder (`--workdir`) as JSON Lines
shards of 100,000 documents; a pool of N documents is the first N/100,000 shards. The target is
200 whole documents of the `scientific` file.

Each (pool size, method) runs in a fresh process on a local Ray of this machine's cores:
`distsel.run` on a config of select.method `--methods` (random; dsir; topk, threshold at its
default median and stratified over dsir's `dsir_log_weight`) and a budget of `--budget`
documents, into a fresh output (removed afterwards unless `--keep`). It prints:

  wall s        the run's wall_seconds (ingest, scoring, selection, evaluation)
  docs/s        pool documents / wall s
  driver MiB    the driver process's peak resident memory (VmHWM in /proc/self/status)
  largest MiB   the largest object the driver fetched from or put into Ray's object store
                (results of distsel's tasks and shared values, sized by Ray; Ray Data's blocks
                inside a stage are bounded by its batch size and left out)
  held          documents the selector was handed (a ranking selector: the parts' heads)

Then per method, each pool against `--baseline` (default 4·10^5, else the smallest): the driver's
peak growth (goal for dsir from 4·10^5 to 3.2·10^6: at most +25 %) and the docs/s ratio (goal
≥ 0.8).

k-means (`--kmeans-rows`, default 10^6; 0 skips): rows of `--kmeans-dim` float32 values drawn
around 64 seeded centres, written as parts of the embed stage's scores (`--kmeans-rows-per-part`,
default 2,000: 500 parts, more than a step's 256 tasks), then `fit_kmeans` with
`--kmeans-k` clusters and 3 Lloyd steps. Printed: the parts, the tasks of one step
(distsel.methods.cluster.sum_runs), the bytes of one step's partial sums in the object store
(tasks × k × dim × 8) against one per part, and the seconds per step.

    python benchmarks/scale.py --workdir /tmp/scale
    python benchmarks/scale.py --workdir /tmp/scale --sizes 100000,400000,1000000,3200000,4000000
    python benchmarks/scale.py --workdir /tmp/scale --sizes 400000,3200000 --methods dsir
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import DEFAULT_CORPUS, new_parser, positive, print_table

SHARD_DOCS = 100_000
TARGET_DOCS = 200
CHILD_FLAG = "--_child"
RESULT_PREFIX = "SCALE_RESULT "
METHODS = ("random", "dsir", "topk", "threshold", "stratified")
ON_DSIR_WEIGHT = ("topk", "threshold", "stratified")  # selectors of a score column: dsir's


# --- pools --------------------------------------------------------------------------------------


def corpus_texts(corpus: Path) -> dict[str, list[str]]:
    texts = {}
    for path in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            texts[path.name.removesuffix(".jsonl.gz")] = [
                json.loads(line)["text"] for line in lines
            ]
    return texts


def write_shards(work: Path, corpus: Path, shards: int, seed: int) -> list[Path]:
    """Shards 0..shards−1 of SHARD_DOCS spans each (made once), and the target file."""
    folder = work / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"s{index:03d}.jsonl" for index in range(shards)]
    missing = [index for index, path in enumerate(paths) if not path.exists()]
    if not missing and (work / "target.jsonl").exists():
        return paths
    texts = corpus_texts(corpus)
    long_texts = [t for domain in sorted(texts) for t in texts[domain] if len(t) > 600]
    target = texts["scientific"][:TARGET_DOCS]
    (work / "target.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in target))
    for index in missing:
        rng = np.random.default_rng([seed, index])
        sources = rng.integers(0, len(long_texts), SHARD_DOCS)
        lengths = rng.integers(80, 601, SHARD_DOCS)
        lines = []
        for source, length in zip(sources.tolist(), lengths.tolist(), strict=True):
            text = long_texts[source]
            start = int(rng.integers(0, len(text) - length + 1))
            lines.append(json.dumps({"text": text[start : start + length]}))
        temporary = paths[index].with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.rename(paths[index])
        print(f"scale: wrote {paths[index].name}", flush=True)
    return paths


def run_config(work: Path, shards: list[Path], method: str, budget: int) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "input": {"paths": [str(p) for p in shards]},
        "output": {"path": str(work / "runs" / f"{method}-{len(shards)}")},
        "select": {"method": method, "budget": {"docs": budget}},
    }
    if method != "random":
        raw["target"] = {"paths": [str(work / "target.jsonl")]}
    if method in ON_DSIR_WEIGHT:
        raw["select"][method] = {"column": "dsir_log_weight"}
    return raw


# --- one run, in its own process ---------------------------------------------------------------


def peak_resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LargestObject:
    """The largest object distsel's driver fetched from or put into the object store."""

    def __init__(self) -> None:
        self.bytes = 0

    def watch(self) -> None:
        import ray

        from distsel.core import executor

        fetch, share = executor._get, executor.RayExecutor.share

        def sized_get(refs: list[Any]) -> list[Any]:
            self.note(ray, refs)
            return fetch(refs)

        def sized_share(executor_self: Any, value: Any) -> Any:
            ref = share(executor_self, value)
            self.note(ray, [ref])
            return ref

        executor._get = sized_get
        executor.RayExecutor.share = sized_share

    def note(self, ray: Any, refs: list[Any]) -> None:
        ray.wait(refs, num_returns=len(refs))
        for where in ray.experimental.get_object_locations(refs).values():
            self.bytes = max(self.bytes, int(where.get("object_size") or 0))


def child(spec_path: Path) -> None:
    import distsel

    spec = json.loads(spec_path.read_text())
    largest = LargestObject()
    largest.watch()
    began = time.perf_counter()
    result = distsel.run(spec["config"])
    wall = time.perf_counter() - began
    manifest = result.manifest
    outcome = {
        "wall": wall,
        "pool_docs": manifest["accepted_docs"],
        "selected_docs": manifest["selected_docs"],
        "driver_mib": peak_resident_mib(),
        "largest_bytes": largest.bytes,
        "held": manifest["stages"]["select"].get("held_docs"),
    }
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)


def spawn(work: Path, name: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"config": config}))
    done = subprocess.run(
        [sys.executable, __file__, CHILD_FLAG, str(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line.removeprefix(RESULT_PREFIX))
    raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")


# --- k-means -----------------------------------------------------------------------------------


def kmeans_steps(
    work: Path, rows: int, dim: int, k: int, seed: int, per_part: int
) -> dict[str, Any]:
    import pyarrow as pa
    import ray

    from distsel.core import layout
    from distsel.core.storage import Store
    from distsel.methods import cluster

    store = Store(str(work / "kmeans"))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    shutil.rmtree(work / "kmeans", ignore_errors=True)
    parts = []
    for start in range(0, rows, per_part):
        part = f"k{start // per_part:05d}{layout.PART_SUFFIX}"
        size = min(per_part, rows - start)
        x = centres[rng.integers(0, 64, size)] + rng.standard_normal((size, dim)).astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
        ids = [f"{part}-{i}" for i in range(size)]
        store.write_table(layout.scores("embed", part), pa.table({"id": ids, "embedding": vectors}))
        parts.append(part)
    ray.init(num_cpus=None, include_dashboard=False, logging_level="WARNING")
    began = time.perf_counter()
    result = cluster.fit_kmeans(store, parts, k, "cosine", seed=seed, max_iter=3, tol=0)
    seconds = time.perf_counter() - began
    ray.shutdown()
    tasks = len(cluster.sum_runs(parts))
    step = k * dim * 8
    return {
        "rows": rows,
        "parts": len(parts),
        "tasks": tasks,
        "k": k,
        "dim": dim,
        "bytes_per_step": tasks * step,
        "bytes_per_step_one_per_part": len(parts) * step,
        "seconds_per_step": seconds / (result.iterations + 1),
    }


# --- report ------------------------------------------------------------------------------------


def report(
    results: dict[str, dict[int, dict[str, Any]]], kmeans: dict[str, Any] | None, baseline: int
) -> None:
    rows = []
    for method, by_size in results.items():
        for size, got in sorted(by_size.items()):
            rows.append(
                [
                    method,
                    f"{size:,}",
                    f"{got['wall']:.1f}",
                    f"{got['pool_docs'] / got['wall']:,.0f}",
                    f"{got['driver_mib']:.0f}",
                    f"{got['largest_bytes'] / 2**20:.2f}",
                    f"{got['held']:,}" if got["held"] is not None else "-",
                ]
            )
    header = ["method", "pool", "wall s", "docs/s", "driver MiB", "largest MiB", "held"]
    print_table(header, rows, left=1, title="whole runs")
    for method, by_size in results.items():
        base = baseline if baseline in by_size else min(by_size)
        a = by_size[base]
        for size, b in sorted(by_size.items()):
            if size == base:
                continue
            growth = b["driver_mib"] / a["driver_mib"] - 1
            speed = (b["pool_docs"] / b["wall"]) / (a["pool_docs"] / a["wall"])
            print(
                f"{method}: {base:,} → {size:,} documents: driver peak {growth:+.1%} "
                f"(goal for dsir, 400,000 → 3,200,000: ≤ +25%), docs/s ratio {speed:.2f} "
                "(goal ≥ 0.8)"
            )
    if kmeans:
        print(
            f"\nk-means: {kmeans['rows']:,} rows × {kmeans['dim']} in {kmeans['parts']} parts, "
            f"k = {kmeans['k']}: {kmeans['tasks']} tasks per Lloyd step, "
            f"{kmeans['bytes_per_step'] / 2**20:,.1f} MiB of partial sums per step "
            f"(one per part: {kmeans['bytes_per_step_one_per_part'] / 2**20:,.1f} MiB), "
            f"{kmeans['seconds_per_step']:.1f} s per step"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--sizes", default="100000,1000000,4000000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", type=positive, default=10_000)
    parser.add_argument("--baseline", type=positive, default=400_000, help="ratios against it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=positive, default=3600)
    parser.add_argument("--kmeans-rows", type=int, default=1_000_000)
    parser.add_argument("--kmeans-dim", type=positive, default=384)
    parser.add_argument("--kmeans-k", type=positive, default=1_000)
    parser.add_argument("--kmeans-rows-per-part", type=positive, default=2_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep each run's output folder")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.methods = args.methods.split(",")
    if any(size % SHARD_DOCS for size in args.sizes):
        parser.error(f"--sizes: multiples of {SHARD_DOCS:,}")
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir
    shards = write_shards(work, args.corpus, max(args.sizes) // SHARD_DOCS, args.seed)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for size in args.sizes:
        for method in args.methods:
            config = run_config(work, shards[: size // SHARD_DOCS], method, args.budget)
            got = spawn(work, f"{method}-{size}", config, args.timeout)
            if not args.keep:
                shutil.rmtree(config["output"]["path"], ignore_errors=True)
            results.setdefault(method, {})[size] = got
            print(f"scale: {method} {size:,}: {json.dumps(got)}", flush=True)
    kmeans = None
    if args.kmeans_rows:
        kmeans = kmeans_steps(
            work,
            args.kmeans_rows,
            args.kmeans_dim,
            args.kmeans_k,
            args.seed,
            args.kmeans_rows_per_part,
        )
    report(results, kmeans, args.baseline)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "kmeans": kmeans}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        child(Path(sys.argv[2]))
    else:
        sys.exit(main())
