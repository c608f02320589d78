"""Quad (`within_cluster: predicted`) without the pool on the driver: the driver's peak memory and
the wall time of a whole bandit run with every per-document array held by the driver process (the
pool gathered, as Quad did before) against the same bandit on shard actors
(distsel.methods.quad.documents), at several pool sizes.

Pool: `--rows` synthetic documents (each size in turn) in parts of `--rows-per-part`: a text of
20-2,000 characters, a cluster among `--clusters`, a classifier score, and a `--dim` float32
embedding around the cluster's centre, written as the docs and the cluster, classifier and embed
stages' outputs. Each (path, size) runs in a fresh process on a local Ray of this machine's
cores:

  gathered  every part's columns and embeddings read onto the driver, the features computed
            there, the bandit's documents held in the driver process
  shards    QuadDocuments.from_store: the shard actors read the parts, the driver holds
            per-arm counts, the scored draws and the selection

Both then play the same bandit: a budget of 1 % of the pool's documents, 2 % of it scored
(`--scored-share`),
`--clusters` arms; a draw's influence is a fixed linear function of its standardised embedding
(read from wherever the embeddings are held) plus seeded noise. Printed per run:

  driver MiB   the driver's peak resident memory (VmHWM) above its resident memory once Ray
               was up
  seconds      loading, features and the whole bandit run
  same         whether the selection equals the gathered path's at that size

    python benchmarks/quad_scale.py --workdir /tmp/quad-scale --rows 100000 400000
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import new_parser, print_table, work_folder

CHILD_FLAG = "--_child"
RESULT_PREFIX = "QUAD_SCALE "
PATHS = ("gathered", "shards")
BUDGET_SHARE = 0.01
SCORED_SHARE = 0.02


def resident_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_parts(root: Path, rows: int, dim: int, per_part: int, clusters: int, seed: int) -> None:
    import pyarrow as pa

    from distsel.core import layout
    from distsel.core.storage import Store
    from distsel.core.vectors import embedding_array

    store, rng = Store(str(root)), np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    for index, start in enumerate(range(0, rows, per_part)):
        size = min(per_part, rows - start)
        name = f"p{index:05d}{layout.PART_SUFFIX}"
        ids = [f"{start + i}" for i in range(size)]
        lengths = rng.integers(20, 2000, size)
        texts = ["x" * int(n) for n in lengths]
        labels = rng.integers(0, clusters, size)
        vectors = centres[labels] + rng.standard_normal((size, dim)).astype(np.float32) * 0.7
        docs = {"id": ids, "text": texts, "tokens_approx": (lengths + 3) // 4}
        store.write_table(layout.docs(name), pa.table(docs))
        store.write_table(layout.scores("cluster", name), pa.table({"id": ids, "cluster": labels}))
        scores = {"id": ids, "classifier_score": rng.standard_normal(size)}
        store.write_table(layout.scores("classifier", name), pa.table(scores))
        embedded = {"id": ids, "embedding": embedding_array(vectors.astype(np.float32))}
        store.write_table(layout.scores("embed", name), pa.table(embedded))
    np.save(root / "centres.npy", centres)  # last: the pool is complete


def gathered_documents(store, parts: list[str], arms: int, targets: np.ndarray):
    """The pool's documents held by the driver process, as Quad held them before."""
    from distsel.algorithms.influence_model import pool_features
    from distsel.algorithms.similarity import cosine_scores
    from distsel.core.executor import current
    from distsel.core.pool import part_columns, part_embeddings, stack
    from distsel.methods.quad.documents import QuadDocuments

    none = np.zeros(0, np.int64)
    calls = [(store, part, ["cluster", "classifier"], [], 0, none) for part in parts]
    pool = stack(parts, current().map(part_columns, calls), [])
    calls = [(store, p, pool.row_index[pool.part_index == i]) for i, p in enumerate(parts)]
    embeddings = np.concatenate(current().map(part_embeddings, calls, num_cpus=0))
    cosine = cosine_scores(embeddings, targets, "max")
    classifier = pool.scores["classifier_score"]
    features = pool_features(embeddings, pool.tokens, cosine, classifier)
    del embeddings
    clusters = pool.scores["cluster"].astype(np.int64)
    return QuadDocuments.from_arrays(
        clusters, pool.random_key, pool.tokens, arms, features, classifier
    )


def child(root: Path, path: str, seed: int, scored_share: float) -> None:
    import ray

    from distsel.core import layout
    from distsel.core.config import Budget
    from distsel.core.executor import RayExecutor
    from distsel.core.storage import Store
    from distsel.methods.quad.documents import QuadDocuments
    from distsel.methods.quad.options import QuadOptions
    from distsel.methods.quad.selector import bandit_for

    ray.init(num_cpus=None, include_dashboard=False, logging_level="WARNING")
    store = Store(str(root))
    parts = store.list(layout.scores("embed"), layout.PART_SUFFIX)
    centres = np.load(root / "centres.npy")
    arms, dim = centres.shape
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((50, dim)).astype(np.float32)
    direction = rng.standard_normal(dim)
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    with RayExecutor().active():
        baseline = resident_mib("VmRSS")
        began = time.perf_counter()
        if path == "gathered":
            documents = gathered_documents(store, parts, arms, targets)
        else:
            documents = QuadDocuments.from_store(store, parts, {}, 0, arms, True)
            documents.prepare_features(targets)
        size = len(documents)
        options = QuadOptions(max_evaluated=scored_share)
        budget = Budget(docs=max(1, int(BUDGET_SHARE * size)))
        bandit = bandit_for(documents, distances / distances.max(), options, budget, seed)

        def influence(groups: list[np.ndarray]) -> list[np.ndarray]:
            scores = []
            for group in groups:
                noise = np.random.default_rng(group.astype(np.uint64)).standard_normal(len(group))
                scores.append(documents.features(group)[0] @ direction + 0.5 * noise)
            return scores

        chosen = bandit.run(influence)
        seconds = time.perf_counter() - began
        peak = resident_mib("VmHWM") - baseline
        state = bandit.state
        documents.close()
    np.save(root / f"chosen-{path}.npy", chosen)
    result = {
        "docs": size,
        "driver_mib": peak,
        "seconds": seconds,
        "rounds": state.round,
        "scored": state.evaluated,
        "selected": len(chosen),
        "stopped": state.done,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(root: Path, path: str, seed: int, scored_share: float) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, CHILD_FLAG, str(root), path, str(seed), str(scored_share)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"{path} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--rows-per-part", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scored-share", type=float, default=SCORED_SHARE)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with work_folder(args.workdir, "distsel-quad-scale-") as work:
        for rows in args.rows:
            root = work / f"rows-{rows}"
            if not (root / "centres.npy").exists():
                write_parts(root, rows, args.dim, args.rows_per_part, args.clusters, args.seed)
            for path in args.paths:
                result = run_child(root, path, args.seed, args.scored_share)
                results.append({"path": path, **result})
                print(f"{path} at {rows:,}: {result}", flush=True)
            if len(args.paths) == len(PATHS):
                same = np.array_equal(*(np.load(root / f"chosen-{p}.npy") for p in PATHS))
                results[-1]["same"] = results[-2]["same"] = bool(same)
    table = [
        [
            r["path"],
            f"{r['docs']:,}",
            f"{r['driver_mib']:,.0f}",
            f"{r['seconds']:.1f}",
            f"{r['rounds']}",
            f"{r['scored']:,}",
            {True: "yes", False: "NO"}.get(r.get("same"), "-"),
        ]
        for r in results
    ]
    scored = f"{100 * args.scored_share:g} %"
    title = (
        f"{args.dim}-dimension embeddings, {args.clusters} clusters, budget 1 %, scored {scored}"
    )
    headers = ["path", "documents", "driver MiB", "seconds", "rounds", "scored", "same"]
    print_table(headers, table, title=title)
    shards = [r for r in results if r["path"] == "shards"]
    if len(shards) > 1:
        growth = shards[-1]["driver_mib"] / max(shards[0]["driver_mib"], 1e-9)
        print(
            f"shards: driver peak at {shards[-1]['docs']:,} / at {shards[0]['docs']:,} "
            f"documents: {growth:.2f}×"
        )
    for rows in args.rows:
        pair = {r["path"]: r for r in results if r["docs"] == rows}
        if len(pair) == 2:
            ratio = pair["gathered"]["driver_mib"] / max(pair["shards"]["driver_mib"], 1e-9)
            print(f"driver peak at {rows:,} documents, gathered / shards: {ratio:.1f}×")
    if args.json:
        settings = vars(args) | {"json": None, "workdir": None}
        args.json.write_text(json.dumps({"args": settings, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
