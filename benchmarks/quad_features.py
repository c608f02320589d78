"""Quad's influence-model features (`within_cluster: predicted`): the driver's peak memory with the
pool's embeddings gathered onto it, as Quad did before (kept here as the reference), against
shard actors that hold them (distsel.methods.quad.features).

Pool: `--rows` synthetic embedding rows of `--dim` float32 values around 64 seeded centres,
written as parts of the embed stage's scores (`--rows-per-part`), every row in the pool. Each
path runs in a fresh process on a local Ray of this machine's cores and does what Quad does
before and during its rounds: the features (standardised embeddings; covariates log(1 + tokens),
the best cosine to 50 target vectors, a classifier score), then the influence model fitted on
2,000 scored rows, ŷ for every row and sd(ŷ) for every row. Printed per path:

  driver MiB   the driver's peak resident memory (VmHWM) above its resident memory once Ray
               was up
  seconds      the features and the model's fit and predictions
  max |Δŷ|     against the gathered path's predictions (the same model, the same numbers)

    python benchmarks/quad_features.py --workdir /tmp/quad-features
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
RESULT_PREFIX = "QUAD_FEATURES "
PATHS = ("gathered", "shards")


def resident_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_parts(root: Path, rows: int, dim: int, per_part: int, seed: int) -> None:
    import pyarrow as pa

    from distsel.core import layout
    from distsel.core.storage import Store
    from distsel.core.vectors import embedding_array

    store, rng = Store(str(root)), np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    for index, start in enumerate(range(0, rows, per_part)):
        size = min(per_part, rows - start)
        vectors = centres[rng.integers(0, 64, size)] + rng.standard_normal((size, dim)) * 0.5
        table = pa.table(
            {
                "id": [f"{start + i}" for i in range(size)],
                "embedding": embedding_array(vectors.astype(np.float32)),
            }
        )
        store.write_table(layout.scores("embed", f"p{index:05d}{layout.PART_SUFFIX}"), table)


def child(root: Path, path: str, seed: int) -> None:
    import ray

    from distsel.algorithms.influence_model import InfluenceModel, pool_features
    from distsel.algorithms.similarity import cosine_scores
    from distsel.core import layout
    from distsel.core.executor import RayExecutor, current
    from distsel.core.pool import Pool, part_embeddings
    from distsel.core.storage import Store

    ray.init(num_cpus=None, include_dashboard=False, logging_level="WARNING")
    store = Store(str(root))
    parts = store.list(layout.scores("embed"), layout.PART_SUFFIX)
    sizes = [store.read_table(layout.scores("embed", p), columns=["id"]).num_rows for p in parts]
    rng = np.random.default_rng(seed)
    count = sum(sizes)
    pool = Pool(
        parts=parts,
        part_index=np.repeat(np.arange(len(parts), dtype=np.int32), sizes),
        row_index=np.concatenate([np.arange(s, dtype=np.int64) for s in sizes]),
        tokens=rng.integers(20, 2000, count),
        random_key=rng.integers(0, 2**63, count, dtype=np.uint64),
    )
    dim = part_embeddings(store, parts[0], np.arange(1)).shape[1]
    targets = rng.standard_normal((50, dim)).astype(np.float32)
    classifier = rng.random(count)
    scored = rng.choice(count, 2000, replace=False)
    values = rng.standard_normal(2000)
    with RayExecutor().active():
        baseline = resident_mib("VmRSS")
        began = time.perf_counter()
        shards = None
        if path == "gathered":
            calls = [(store, p, pool.row_index[pool.part_index == i]) for i, p in enumerate(parts)]
            embeddings = np.concatenate(current().map(part_embeddings, calls, num_cpus=0))
            cosine = cosine_scores(embeddings, targets, "max")
            features = pool_features(embeddings, pool.tokens, cosine, classifier)
            del embeddings
        else:
            from distsel.algorithms.influence_model import covariate_features
            from distsel.methods.quad.features import EmbeddingShards

            shards = EmbeddingShards(store, pool)
            cosine = shards.target_cosine(targets)
            shards.standardize()
            features = (shards, covariate_features(pool.tokens, cosine, classifier))
        model = InfluenceModel(features).fit(scored, values)
        predicted, spread = model.predict(), model.predict_sd()
        seconds = time.perf_counter() - began
        peak = resident_mib("VmHWM") - baseline
        if shards is not None:
            shards.close()
    np.save(root / f"predicted-{path}.npy", predicted)
    result = {"driver_mib": peak, "seconds": seconds, "sd_mean": float(spread.mean())}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rows-per-part", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with work_folder(args.workdir, "distsel-quad-features-") as root:
        if not (root / "scores").exists():
            write_parts(root, args.rows, args.dim, args.rows_per_part, args.seed)
        results = {}
        for path in PATHS:
            done = subprocess.run(
                [sys.executable, __file__, CHILD_FLAG, str(root), path, str(args.seed)],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
            if not lines:
                raise RuntimeError(f"{path} failed:\n{done.stderr[-3000:]}")
            results[path] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
        reference = np.load(root / "predicted-gathered.npy")
        for path in PATHS:
            difference = np.abs(np.load(root / f"predicted-{path}.npy") - reference).max()
            results[path]["max_difference"] = float(difference)
    rows = [
        [
            path,
            f"{r['driver_mib']:,.0f}",
            f"{r['seconds']:.1f}",
            f"{r['max_difference']:.2e}",
        ]
        for path, r in results.items()
    ]
    title = f"{args.rows:,} rows of {args.dim} dimensions, {args.rows // args.rows_per_part} parts"
    print_table(["path", "driver MiB", "seconds", "max |Δŷ|"], rows, title=title)
    ratio = results["gathered"]["driver_mib"] / max(results["shards"]["driver_mib"], 1e-9)
    print(f"driver peak, gathered / shards: {ratio:.1f}×")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": None, "workdir": None}, **results}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
