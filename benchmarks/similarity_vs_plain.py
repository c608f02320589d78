"""A distsel similarity run against the plain script a user would otherwise write
(benchmarks/plain_similarity.py: sentence-transformers in one process), both as whole processes
on the same pool, side by side.

Pool: `--docs` documents drawn evenly from every domain file of ../shared/data/corpus (seeded,
shuffled); target: `--target-docs` other documents of `--target-domain`; budget k = `--k`.
Rows, alternating `--repeat` times:

  plain             python benchmarks/plain_similarity.py (batch 32, every core, float32)
  distsel           distsel run, select.method similarity with the plain cosine
                    (stages.similarity.contrast: none), everything else at its default
  distsel-float32   the same with embed.dtype float32 (`--float32`)

Each is timed from process start to exit. Ratio = median wall of plain / median wall of a
distsel row; goal ≥ 1.2 for the default row. Overlap: the share of a distsel row's selection
that the plain script also selected (the same model; float32 vs bfloat16 moves a few
near-ties). The distsel rows also show the stages' seconds from the manifest.

    python benchmarks/similarity_vs_plain.py --float32 --json out.json
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import positive
from scaling import draw

HERE = Path(__file__).resolve().parent
GOAL = 1.2
ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def parse_args(argv: list[str] | None):
    parser = harness.new_parser(__doc__)
    parser.add_argument("--docs", type=positive, default=8000)
    parser.add_argument("--k", type=positive, default=800)
    parser.add_argument("--target-domain", default="scientific")
    parser.add_argument("--target-docs", type=positive, default=200)
    parser.add_argument("--repeat", type=positive, default=1)
    parser.add_argument("--float32", action="store_true", help="add the distsel-float32 row")
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS, seed=0, workdir=None, json=None)
    return parser.parse_args(argv)


def timed(command: list[str], log: Path) -> float:
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ENV}
        )
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return seconds


def run_plain(work: Path, k: int, index: int) -> dict[str, Any]:
    out = work / f"plain-{index}.json"
    command = [
        sys.executable,
        str(HERE / "plain_similarity.py"),
        str(work / "pool.jsonl"),
        str(work / "target.jsonl"),
        str(k),
        str(out),
    ]
    seconds = timed(command, work / f"plain-{index}.log")
    return {"row": "plain", "wall": seconds, "chosen": set(json.loads(out.read_text()))}


def run_distsel(work: Path, k: int, index: int, dtype: str | None) -> dict[str, Any]:
    name = f"distsel-{dtype or 'default'}-{index}"
    output = work / name
    shutil.rmtree(output, ignore_errors=True)
    raw: dict[str, Any] = {
        "input": {"paths": [str(work / "pool.jsonl")]},
        "target": {"paths": [str(work / "target.jsonl")]},
        "output": {"path": str(output)},
        "select": {"method": "similarity", "budget": {"docs": k}},
        "stages": {"similarity": {"contrast": "none"}},  # the plain script's cosine
    }
    if dtype:
        raw["embed"] = {"dtype": dtype}
    config = work / f"{name}.json"
    config.write_text(json.dumps(raw))
    distsel = str(Path(sys.executable).with_name("distsel"))
    seconds = timed([distsel, "run", str(config)], work / f"{name}.log")
    manifest = json.loads((output / "manifest.json").read_text())
    ids = harness.read_parts(output / "selected", ["id"])["id"]
    chosen = {int(i.rsplit(":", 1)[1]) - 1 for i in ids}  # "<shard>:<line>", 1-based
    stages = {s: v["seconds"] for s, v in manifest["stages"].items()}
    parts = manifest["stages"]["ingest"].get("parts")
    row = "distsel" if dtype is None else f"distsel-{dtype}"
    return {"row": row, "wall": seconds, "chosen": chosen, "stages": stages, "parts": parts}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    files = harness.load_corpus(Path(args.corpus))
    pool, target = draw(files, args.docs, args.target_domain, args.target_docs, args.seed)
    with harness.work_folder(args.workdir, "simplain-") as work:
        harness.write_jsonl(work / "pool.jsonl", [{"text": r["text"]} for r in pool])
        harness.write_jsonl(work / "target.jsonl", target)
        results: list[dict[str, Any]] = []
        for index in range(args.repeat):
            harness.progress("plain", f"round {index + 1}")
            results.append(run_plain(work, args.k, index))
            harness.progress("distsel", f"round {index + 1}")
            results.append(run_distsel(work, args.k, index, None))
            if args.float32:
                results.append(run_distsel(work, args.k, index, "float32"))
        return report(args, len(pool), results)


def report(args: Any, docs: int, results: list[dict[str, Any]]) -> int:
    print(f"# python benchmarks/similarity_vs_plain.py {' '.join(sys.argv[1:])}")
    print(
        f"pool {docs} docs (even over the corpus files, seed {args.seed}) | target "
        f"{args.target_docs} {args.target_domain} docs | k = {args.k} | {os.cpu_count()} CPUs"
    )
    print("| row | wall s | docs/s | overlap with plain | parts | stages s |")
    print("|-----|--------|--------|--------------------|-------|----------|")
    plain = [r for r in results if r["row"] == "plain"]
    for result in results:
        twin = plain[min(len(plain) - 1, results.index(result) // (3 if args.float32 else 2))]
        overlap = len(result["chosen"] & twin["chosen"]) / args.k
        stages = ", ".join(f"{s} {v:.1f}" for s, v in result.get("stages", {}).items())
        print(
            f"| {result['row']} | {result['wall']:.1f} | {docs / result['wall']:.1f} | "
            f"{overlap:.3f} | {result.get('parts', '')} | {stages} |"
        )
    medians = {
        row: statistics.median(r["wall"] for r in results if r["row"] == row)
        for row in dict.fromkeys(r["row"] for r in results)
    }
    summary: dict[str, Any] = {"medians": medians, "ratios": {}}
    for row, wall in medians.items():
        if row == "plain":
            continue
        ratio = medians["plain"] / wall
        summary["ratios"][row] = ratio
        goal = (
            f"; goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}" if row == "distsel" else ""
        )
        print(
            f"ratio plain wall / {row} wall: {ratio:.2f} "
            f"({medians['plain']:.1f} s / {wall:.1f} s){goal}"
        )
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "chosen"} for r in results]
        Path(args.json).write_text(json.dumps({**summary, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
