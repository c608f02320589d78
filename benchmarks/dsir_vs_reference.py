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

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's per-shard progress bars

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np

from distsel.methods import dsir

NUM_BUCKETS = 10_000
NGRAMS = 2


def load_corpus(corpus: Path) -> tuple[list[str], np.ndarray]:
    """Every document's text and domain, files in name order."""
    records = [record for _, shard in harness.load_corpus(corpus) for record in shard]
    return [r["text"] for r in records], np.array([r["domain"] for r in records])


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


def write_pool(path: Path, texts: list[str], domains: np.ndarray) -> None:
    """The documents as the reference reads them, each with its pool index."""
    records = [
        {"text": text, "domain": str(domain), "index": index}
        for index, (text, domain) in enumerate(zip(texts, domains, strict=True))
    ]
    harness.write_jsonl(path, records)


def in_shard_order(reference, directory: Path, n: int) -> np.ndarray:
    """Reassemble the reference's per-shard .npy files (line i goes to shard i % num_shards)."""
    values = np.zeros(n)
    for shard in reference._get_virtually_sharded_datasets(reference.raw_datasets):
        part = np.load(directory / f"{shard['overall_idx']}.npy")
        values[shard["shard_idx"] :: shard["num_shards"]] = part
    return values


def shipped_resample(
    reference: Any, args: argparse.Namespace, workdir: Path
) -> tuple[list[int] | None, str | None]:
    """The pool indices resample() picks as shipped (Gumbel top-k over documents with >=
    min_example_length tokens), or why it failed."""
    try:
        np.random.seed(args.seed)
        out_dir = workdir / "resampled"
        reference.resample(
            str(out_dir), num_to_sample=args.k, cache_dir=str(workdir / "resample_cache")
        )
        records = [r for path in sorted(out_dir.glob("*.jsonl")) for r in harness.read_jsonl(path)]
        return [record["index"] for record in records], None
    except Exception as error:  # report, keep the other figures
        return None, f"{type(error).__name__}: {error}"


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
    write_pool(raw_path, pool, pool_domains)
    write_pool(target_path, target, np.array([args.domain] * len(target)))
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

    shipped_chosen, shipped_error = shipped_resample(reference, args, workdir)
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


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    helps = {"domain": "target domain (held out from the pool)"}
    harness.add_common_flags(
        parser, helps, corpus=harness.DEFAULT_CORPUS, domain="news", target_size=500
    )
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--reference-procs", type=int, default=2)
    harness.add_common_flags(parser, seed=0)
    return parser.parse_args()


def print_throughput(args: argparse.Namespace, n: int, ours: dict, reference: dict | None) -> None:
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
    header = ["pipeline", "procs", "timed", "s", "docs/s"]
    harness.print_table([*header, f"vs reference {args.reference_procs}-proc"], rows, left=2)
    fit_line = f"fit (not in ratios): distsel {ours['fit_s']:.2f} s"
    if reference:
        fit_line += f", reference {reference['fit_s']:.2f} s ({args.reference_procs} procs)"
    print(fit_line)


class Quality:
    """Precision and KL reduction of a selection of pool documents."""

    def __init__(self, pool: list[str], in_domain: np.ndarray, ours: dict[str, Any]) -> None:
        self.in_domain, self.ours = in_domain, ours
        self.doc_index, self.bucket = dsir.hashed_ngrams(pool, NUM_BUCKETS, NGRAMS)

    def __call__(self, chosen: np.ndarray) -> tuple[str, str]:
        selection = np.zeros(len(self.in_domain), dtype=bool)
        selection[chosen] = True
        counts = np.bincount(self.bucket[selection[self.doc_index]], minlength=NUM_BUCKETS)
        kl = dsir.kl_reduction(self.ours["target_counts"], self.ours["pool_counts"], counts)
        return f"{self.in_domain[chosen].mean():.3f}", f"{kl:.3f}"


def quality_rows(args: argparse.Namespace, quality: Quality, reference: dict | None) -> list:
    k, seed = args.k, args.seed
    rows = []
    weight_sets = [
        ("distsel plain", quality.ours["plain"]),
        ("distsel length-normalised", quality.ours["normalised"]),
    ]
    if reference:
        weight_sets.append(("reference weights (no length filter)", reference["weights"]))
    for name, weights in weight_sets:
        gumbel = dsir.gumbel_topk(weights, k, seed)
        rows.append([name, f"Gumbel top-k (seed {seed})", *quality(gumbel)])
        rows.append([name, "top-k", *quality(dsir.topk(weights, k))])
    if reference:
        shipped = f"resample() as shipped (>= {reference['min_example_length']} tokens, Gumbel)"
        if reference["shipped_chosen"] is not None:
            chosen = np.array(reference["shipped_chosen"], dtype=np.int64)
            rows.append(["reference", shipped, *quality(chosen)])
        else:
            rows.append(["reference", shipped, f"failed: {reference['shipped_error']}", "-"])
    random_order = np.random.default_rng(seed).permutation(len(quality.in_domain))[:k]
    rows.append(["random", "uniform", *quality(random_order)])
    return rows


def print_agreement(
    args: argparse.Namespace, ours: dict, reference: dict, in_domain: np.ndarray
) -> None:
    n, k = len(in_domain), args.k
    correlation = np.corrcoef(ours["plain"], reference["weights"])[0, 1]
    long_enough = reference["long_enough"]
    print(
        f"correlation of distsel plain vs reference log weights: {correlation:.4f} "
        f"(same formula, different hash functions); docs passing the reference's "
        f"min_example_length={reference['min_example_length']} filter: {long_enough.sum()} of "
        f"{n} ({(long_enough & in_domain).sum()} of {k} '{args.domain}')"
    )
    reference_s = reference["parallel_s"]
    print(
        f"speed-up of distsel (1 process) over the reference as shipped "
        f"({args.reference_procs} processes): fused {reference_s / ours['fused_s']:.1f}x, "
        f"dense {reference_s / ours['dense_s']:.1f}x; over the reference in one process: "
        f"fused {reference['serial_s'] / ours['fused_s']:.1f}x (goal >= 20x)"
    )


def main() -> None:
    args = parse_args()
    texts, domains = load_corpus(args.corpus)
    target_idx, pool_idx = split_target(domains, args.domain, args.target_size, args.seed)
    pool = [texts[i] for i in pool_idx]
    target = [texts[i] for i in target_idx]
    pool_domains = domains[pool_idx]
    in_domain = pool_domains == args.domain
    args.k = int(in_domain.sum())
    load_before = os.getloadavg()[0]
    print(f"DSIR: distsel vs data-selection (HashedNgramDSIR); corpus {args.corpus}")
    print(
        f"target: {len(target)} '{args.domain}' docs held out (seed {args.seed}) and removed from "
        f"the pool; pool: {len(pool)} docs, {len(set(pool_domains))} domains; "
        f"k = {args.k} pool '{args.domain}' docs (random precision {args.k / len(pool):.3f})"
    )
    cores = len(os.sched_getaffinity(0))
    print(f"buckets {NUM_BUCKETS}, n-grams 1..{NGRAMS}; {cores} cores; best of {args.repeats}")

    ours = run_distsel(pool, target, args)
    reference, reference_error = None, None
    with tempfile.TemporaryDirectory(prefix="dsir_bench_") as tmp:
        try:
            reference = run_reference(pool, pool_domains, target, args, Path(tmp))
        except Exception as error:
            reference_error = f"{type(error).__name__}: {error}"
    load = f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}"
    print(f"\nthroughput over the {len(pool)}-doc pool ({load})")
    print_throughput(args, len(pool), ours, reference)
    print(f"\nselection of k = {args.k}: precision = share of selected docs in '{args.domain}'")
    rows = quality_rows(args, Quality(pool, in_domain, ours), reference)
    harness.print_table(["weights", "selection", "precision", "KL reduction"], rows, left=2)
    if reference:
        print_agreement(args, ours, reference, in_domain)
    else:
        print(f"\nREFERENCE NOT RUN: {reference_error}")
        print("  (pip install data-selection==1.0.3 into the venv); distsel figures above only.")


if __name__ == "__main__":
    main()
