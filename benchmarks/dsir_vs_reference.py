"""DSIR in distsel vs the reference package `data-selection` (HashedNgramDSIR), side by side.

Data: ../shared/data/corpus/*.jsonl.gz (seven domains), read in place. `--target-size` documents of
`--domain` (seeded draw) are the target and are removed from the pool; the pool is everything else.
Both sides fit p_raw on the pool and p_target on the target (10,000 buckets, unigrams + bigrams).

Throughput (best of `--repeats` runs, same machine, same run):
  * distsel, one process, texts in memory, batches of `--batch-size`:
      fused  = text_log_importance_weights(batch, log_diff)   (featurize + weights, no dense matrix)
      dense  = log_importance_weights(featurize(batch), log_diff)
    In the product these pure functions run inside a Ray actor pool, one batch per call.
  * reference, one process, texts in memory: importance_estimator(featurizer(text)) per document
    (exactly its featurization + weight computation, no I/O).
  * reference, as shipped: compute_importance_weights() with num_proc = 2 (joblib), which also
    reads and parses the pool's jsonl (written to a temporary directory first, not timed).
  Fitting is timed separately and is not in the ratios.

Selection quality at k = number of pool documents of `--domain`: precision = share of the k
selected documents whose domain is `--domain`; KL reduction = KL(target ‖ pool) −
KL(target ‖ selection) over distsel's hashed n-gram counts (add-1 smoothing) for every row.

    python benchmarks/dsir_vs_reference.py --domain news
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's per-shard progress bars

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distsel.scoring import dsir  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"
NUM_BUCKETS = 10_000
NGRAMS = 2


def load_corpus(corpus: Path) -> tuple[list[str], np.ndarray]:
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no *.jsonl.gz files in {corpus} (pass --corpus)")
    texts, domains = [], []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    texts.append(record["text"])
                    domains.append(record["domain"])
    return texts, np.array(domains)


def split_target(
    domains: np.ndarray, domain: str, target_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the held-out target (from `domain`) and of the pool (all the rest, shuffled)."""
    rng = np.random.default_rng(seed)
    in_domain = np.flatnonzero(domains == domain)
    if len(in_domain) <= target_size:
        raise SystemExit(f"domain {domain!r} has {len(in_domain)} docs, need > {target_size}")
    target = np.sort(rng.choice(in_domain, size=target_size, replace=False))
    pool = np.setdiff1d(np.arange(len(domains)), target)
    return target, rng.permutation(pool)


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def batched(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# --- distsel ----------------------------------------------------------------------------------


def run_distsel(pool: list[str], target: list[str], args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    pool_counts = sum(dsir.total_ngram_counts(b, NUM_BUCKETS, NGRAMS) for b in batched(pool, 4096))
    target_counts = dsir.total_ngram_counts(target, NUM_BUCKETS, NGRAMS)
    log_diff = dsir.fit_log_diff(target_counts, pool_counts)
    fit_s = time.perf_counter() - start

    batches = batched(pool, args.batch_size)

    def fused() -> np.ndarray:
        return np.concatenate([dsir.text_log_importance_weights(b, log_diff) for b in batches])

    def dense() -> np.ndarray:
        return np.concatenate(
            [dsir.log_importance_weights(dsir.featurize(b, NUM_BUCKETS), log_diff) for b in batches]
        )

    fused_s, plain = best_time(fused, args.repeats)
    dense_s, plain_dense = best_time(dense, args.repeats)
    assert np.allclose(plain, plain_dense)
    normalised = np.concatenate(
        [dsir.text_log_importance_weights(b, log_diff, length_normalize=True) for b in batches]
    )
    return {
        "fit_s": fit_s,
        "fused_s": fused_s,
        "dense_s": dense_s,
        "plain": plain,
        "normalised": normalised,
        "pool_counts": pool_counts,
        "target_counts": target_counts,
    }


# --- reference --------------------------------------------------------------------------------


def write_jsonl(path: Path, texts: list[str], domains: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for index, (text, domain) in enumerate(zip(texts, domains, strict=True)):
            out.write(json.dumps({"text": text, "domain": str(domain), "index": index}) + "\n")


def in_shard_order(reference, directory: Path, n: int) -> np.ndarray:
    """Reassemble the reference's per-shard .npy files (line i goes to shard i % num_shards)."""
    values = np.zeros(n)
    for shard in reference._get_virtually_sharded_datasets(reference.raw_datasets):
        part = np.load(directory / f"{shard['overall_idx']}.npy")
        values[shard["shard_idx"] :: shard["num_shards"]] = part
    return values


def run_reference(
    pool: list[str],
    pool_domains: np.ndarray,
    target: list[str],
    args: argparse.Namespace,
    workdir: Path,
) -> dict:
    import data_selection
    from data_selection import HashedNgramDSIR

    raw_path, target_path = workdir / "raw.jsonl", workdir / "target.jsonl"
    write_jsonl(raw_path, pool, pool_domains)
    write_jsonl(target_path, target, np.array([args.domain] * len(target)))
    reference = HashedNgramDSIR(
        raw_datasets=[str(raw_path)],
        target_datasets=[str(target_path)],
        cache_dir=str(workdir / "cache"),
        num_proc=args.reference_procs,
        ngrams=NGRAMS,
        num_buckets=NUM_BUCKETS,
    )
    start = time.perf_counter()
    reference.fit_importance_estimator(num_tokens_to_fit="auto")
    fit_s = time.perf_counter() - start

    parallel_s, _ = best_time(reference.compute_importance_weights, args.repeats)
    weights = in_shard_order(reference, reference.log_importance_weights_dir, len(pool))
    lengths = in_shard_order(reference, reference.perexample_metadata_dir, len(pool))

    def in_process() -> np.ndarray:
        return np.array([reference.importance_estimator(reference.featurizer(t)) for t in pool])

    serial_s, serial_weights = best_time(in_process, 1)
    assert np.allclose(serial_weights, weights)

    # resample() as shipped: Gumbel top-k over documents with >= min_example_length tokens.
    shipped_chosen, shipped_error = None, None
    try:
        np.random.seed(args.seed)
        out_dir = workdir / "resampled"
        reference.resample(
            str(out_dir), num_to_sample=args.k, cache_dir=str(workdir / "resample_cache")
        )
        shipped_chosen = [
            json.loads(line)["index"]
            for path in sorted(out_dir.glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except Exception as error:  # report, keep the other figures
        shipped_error = f"{type(error).__name__}: {error}"
    return {
        "version": data_selection.__version__,
        "fit_s": fit_s,
        "parallel_s": parallel_s,
        "serial_s": serial_s,
        "weights": weights,
        "long_enough": lengths >= reference.min_example_length,
        "min_example_length": reference.min_example_length,
        "shipped_chosen": shipped_chosen,
        "shipped_error": shipped_error,
    }


# --- report -----------------------------------------------------------------------------------


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    align = ["<" if i == 0 else ">" for i in range(len(header))]
    align[1] = "<"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)
        )

    print(line(header) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="news", help="target domain (held out from the pool)")
    parser.add_argument("--target-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--reference-procs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts, domains = load_corpus(args.corpus)
    target_idx, pool_idx = split_target(domains, args.domain, args.target_size, args.seed)
    pool = [texts[i] for i in pool_idx]
    target = [texts[i] for i in target_idx]
    pool_domains = domains[pool_idx]
    is_target_domain = pool_domains == args.domain
    args.k = int(is_target_domain.sum())
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]

    print(f"DSIR: distsel vs data-selection (HashedNgramDSIR); corpus {args.corpus}")
    print(
        f"target: {len(target)} '{args.domain}' docs held out (seed {args.seed}) and removed from "
        f"the pool; pool: {len(pool)} docs, {len(set(pool_domains))} domains; "
        f"k = {args.k} pool '{args.domain}' docs (random precision {args.k / len(pool):.3f})"
    )
    print(f"buckets {NUM_BUCKETS}, n-grams 1..{NGRAMS}; {cores} cores; best of {args.repeats}")

    ours = run_distsel(pool, target, args)
    reference, reference_error = None, None
    with tempfile.TemporaryDirectory(prefix="dsir_bench_") as tmp:
        try:
            reference = run_reference(pool, pool_domains, target, args, Path(tmp))
        except Exception as error:
            reference_error = f"{type(error).__name__}: {error}"
    load_after = os.getloadavg()[0]

    n = len(pool)
    print(f"\nthroughput over the {n}-doc pool (load average {load_before:.1f} → {load_after:.1f})")
    in_memory = "featurize+weights, in memory"
    speed = [
        ("distsel fused: text_log_importance_weights", "1", in_memory, ours["fused_s"]),
        ("distsel dense: featurize + log_importance_weights", "1", in_memory, ours["dense_s"]),
    ]
    if reference:
        speed += [
            (
                "reference: importance_estimator(featurizer(t))",
                "1",
                in_memory,
                reference["serial_s"],
            ),
            (
                "reference: compute_importance_weights()",
                str(args.reference_procs),
                "read jsonl+featurize+weights",
                reference["parallel_s"],
            ),
        ]
    reference_s = reference["parallel_s"] if reference else None
    rows = []
    for name, procs, timed, seconds in speed:
        ratio = f"{reference_s / seconds:.1f}x" if reference_s else "n/a"
        rows.append([name, procs, timed, f"{seconds:.2f}", f"{n / seconds:,.0f}", ratio])
    print_table(
        ["pipeline", "procs", "timed", "s", "docs/s", f"vs reference {args.reference_procs}-proc"],
        rows,
    )
    fit_line = f"fit (not in ratios): distsel {ours['fit_s']:.2f} s"
    if reference:
        fit_line += f", reference {reference['fit_s']:.2f} s ({args.reference_procs} procs)"
    print(fit_line)

    def quality(chosen: np.ndarray) -> tuple[str, str]:
        selection = np.zeros(n, dtype=bool)
        selection[chosen] = True
        precision = is_target_domain[chosen].mean()
        kl = kl_of_selection(selection)
        return f"{precision:.3f}", f"{kl:.3f}"

    doc_index, bucket = dsir.hashed_ngrams(pool, NUM_BUCKETS, NGRAMS)

    def kl_of_selection(selection: np.ndarray) -> float:
        counts = np.bincount(bucket[selection[doc_index]], minlength=NUM_BUCKETS)
        return dsir.kl_reduction(ours["target_counts"], ours["pool_counts"], counts)

    k, seed = args.k, args.seed
    print(f"\nselection of k = {k}: precision = share of selected docs in '{args.domain}'")
    quality_rows = []
    weight_sets = [
        ("distsel plain", ours["plain"]),
        ("distsel length-normalised", ours["normalised"]),
    ]
    if reference:
        weight_sets.append(("reference weights (no length filter)", reference["weights"]))
    for name, weights in weight_sets:
        gumbel = dsir.gumbel_topk(weights, k, seed)
        quality_rows.append([name, f"Gumbel top-k (seed {seed})", *quality(gumbel)])
        quality_rows.append([name, "top-k", *quality(dsir.topk(weights, k))])
    if reference:
        shipped = f"resample() as shipped (>= {reference['min_example_length']} tokens, Gumbel)"
        if reference["shipped_chosen"] is not None:
            chosen = np.array(reference["shipped_chosen"], dtype=np.int64)
            quality_rows.append(["reference", shipped, *quality(chosen)])
        else:
            quality_rows.append(
                ["reference", shipped, f"failed: {reference['shipped_error']}", "-"]
            )
    random_order = np.random.default_rng(seed).permutation(n)[:k]
    quality_rows.append(["random", "uniform", *quality(random_order)])
    print_table(["weights", "selection", "precision", "KL reduction"], quality_rows)

    if reference:
        correlation = np.corrcoef(ours["plain"], reference["weights"])[0, 1]
        long_enough = reference["long_enough"]
        print(
            f"correlation of distsel plain vs reference log weights: {correlation:.4f} "
            f"(same formula, different hash functions); docs passing the reference's "
            f"min_example_length={reference['min_example_length']} filter: {long_enough.sum()} of "
            f"{n} ({(long_enough & is_target_domain).sum()} of {k} '{args.domain}')"
        )
        print(
            f"speed-up of distsel (1 process) over the reference as shipped "
            f"({args.reference_procs} processes): fused {reference_s / ours['fused_s']:.1f}x, "
            f"dense {reference_s / ours['dense_s']:.1f}x; over the reference in one process: "
            f"fused {reference['serial_s'] / ours['fused_s']:.1f}x (goal >= 20x)"
        )
    else:
        print(f"\nREFERENCE NOT RUN: {reference_error}")
        print("  (pip install data-selection==1.0.3 into the venv); distsel figures above only.")


if __name__ == "__main__":
    main()
