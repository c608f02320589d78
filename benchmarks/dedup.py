"""Near-duplicate removal (`dedup: {method: minhash}`): recall and precision on planted near
duplicates, and MinHash throughput per core beside a single-process reference.

Base: the documents of ../shared/data/corpus/*.jsonl.gz, less the corpus's own near duplicates,
found by a pass looser than any setting measured (MinHash over word unigrams at Jaccard 0.5:
every document that pairs with an earlier one leaves the base). How many documents of the
whole corpus each setting pairs with an earlier one is printed too (`in corpus`): the corpus's
own near duplicates (news wire stories told twice, arXiv abstracts in two versions, solutions
to one programming exercise), which a planted-copy precision cannot see.

Planted copies: `--copies` originals (drawn from the base without replacement) get one copy each,
of one of these kinds (equal shares):

  edit-1% / edit-3% / edit-5%  each word replaced, deleted or followed by an inserted word with
                               that probability (so a short document may keep every word)
  reorder                      its sentences shuffled
  whitespace                   every run of whitespace replaced by one of ' ', '  ', '\\n', '\\t'
  mixed                        sentences shuffled, 2 % of words edited, whitespace changed

Shard a.jsonl holds the base, shard b.jsonl the copies (later in input order, so the original
is the one kept); both shuffled. For each (ngram, threshold) of `--grid`, one `distsel.run`
(select.method all; the ingest is reused) gives:

  recall      planted copies quarantined as near_duplicate / planted copies (per kind, and for
              copies of originals under 50 words and of 50 or more)
  precision   quarantined planted copies / all quarantined documents
  dedup s     the dedup step's seconds (timings.dedup) on a local Ray of `--cpus` CPUs

Throughput, on the base and the copies:
  signatures      distsel.algorithms.minhash.signatures in this process (one core)
  dedup per core  every step of `dedup:` (signatures, bucket groups, verification, clusters)
                  through distsel.run at the defaults (seed 1: a check of its own, after the
                  grid has started Ray's workers), documents / seconds / CPUs
  datasketch      the datasketch package's MinHash (update_batch over the same shingles) and
                  MinHashLSH.insert, in this process, when it is installed (pip install
                  datasketch); its recall and precision on the same copies at the default ngram

    python benchmarks/dedup.py --workdir /tmp/dedup
    python benchmarks/dedup.py --grid 2:0.8 --copies 600
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from harness import (
    DEFAULT_CORPUS,
    local_ray,
    new_parser,
    print_table,
    read_jsonl,
    setup_logging,
    work_folder,
    write_jsonl,
)

import distsel
from distsel.algorithms import minhash
from distsel.core import layout
from distsel.core.config import DedupConfig, parse_config

KINDS = ("edit-1%", "edit-3%", "edit-5%", "reorder", "whitespace", "mixed")
SHORT_WORDS = 50


def edit_words(text: str, share: float, rng: random.Random, vocabulary: list[str]) -> str:
    parts = re.split(r"(\s+)", text)
    for index in range(0, len(parts), 2):
        if parts[index] and rng.random() < share:
            action = rng.randrange(3)
            word = rng.choice(vocabulary)
            parts[index] = word if action == 0 else "" if action == 1 else f"{parts[index]} {word}"
    return "".join(parts)


def reorder(text: str, rng: random.Random) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    rng.shuffle(sentences)
    return " ".join(sentences)


def respace(text: str, rng: random.Random) -> str:
    return re.sub(r"\s+", lambda _: rng.choice([" ", "  ", "\n", "\t"]), text)


def near_copy(text: str, kind: str, rng: random.Random, vocabulary: list[str]) -> str:
    if kind.startswith("edit-"):
        return edit_words(text, float(kind[5:-1]) / 100, rng, vocabulary)
    if kind == "reorder":
        return reorder(text, rng)
    if kind == "whitespace":
        return respace(text, rng)
    return respace(edit_words(reorder(text, rng), 0.02, rng, vocabulary), rng)


def paired_later(texts: list[str], ngram: int, threshold: float) -> set[int]:
    """The texts that pair with an earlier one at estimated Jaccard ≥ threshold, in one
    process: signatures, every band's equal keys, verification (no components)."""
    signature = minhash.signatures(texts, num_perm=128, ngram=ngram)
    keys = minhash.band_keys(signature, *minhash.lsh_bands(threshold, 128))
    later: set[int] = set()
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        same = np.flatnonzero(keys[order[1:], band] == keys[order[:-1], band])
        for a, b in zip(order[same].tolist(), order[same + 1].tolist(), strict=True):
            if signature[a, 0] == minhash.NO_SHINGLES:
                continue
            if minhash.estimated_jaccard(signature[a], signature[b])[0] >= threshold:
                later.add(max(a, b))
    return later


def corpus_texts(corpus: Path) -> list[str]:
    return [r["text"] for f in sorted(corpus.glob("*.jsonl.gz")) for r in read_jsonl(f)]


def planted(texts: list[str], copies: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    natural = paired_later(texts, 1, 0.5)
    base = [t for i, t in enumerate(texts) if i not in natural]
    print(f"base: {len(base):,} of {len(texts):,} corpus documents", file=sys.stderr)
    vocabulary = sorted({w for t in rng.sample(base, 500) for w in t.split()})
    originals = rng.sample(range(len(base)), copies)
    docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(base)]
    made = [
        {
            "id": f"c{index}",
            "text": near_copy(base[index], KINDS[n % len(KINDS)], rng, vocabulary),
            "kind": KINDS[n % len(KINDS)],
            "short": len(base[index].split()) < SHORT_WORDS,
        }
        for n, index in enumerate(originals)
    ]
    rng.shuffle(docs)
    rng.shuffle(made)
    return docs, made


def run_dedup(
    root: Path, ngram: int, threshold: float, made: list[dict], seed: int = 0
) -> tuple[dict[str, Any], list[list[str]]]:
    raw = {
        "input": {"paths": [str(root / "corpus")], "id_field": "id"},
        "output": {"path": str(root / "out")},
        "select": {"method": "all"},
        "dedup": {"method": "minhash", "ngram": ngram, "threshold": threshold},
        "seed": seed,
    }
    manifest = distsel.run(parse_config(raw)).manifest
    rejected = root / "out" / layout.REJECTED_NEAR_DUPLICATES
    found = {r.decode() for r in pq.read_table(rejected)["raw"].to_pylist()}
    result = scores(found, made)
    result.update(ngram=ngram, threshold=threshold, seconds=manifest["stages"]["dedup"]["seconds"])
    result["docs"] = manifest["stages"]["dedup"]["rows"]
    return result, [
        [f"{ngram}", f"{threshold:g}", f"{result['recall']:.3f}", f"{result['precision']:.4f}"]
        + [f"{result['by_kind'][k]:.2f}" for k in KINDS]
        + [f"{result['short']:.2f}", f"{result['long']:.2f}", f"{result['seconds']:.1f}"]
    ]


def scores(found: set[str], made: list[dict]) -> dict[str, Any]:
    def recall(copies: list[dict]) -> float:
        return sum(c["id"] in found for c in copies) / max(1, len(copies))

    ids = {c["id"] for c in made}
    return {
        "recall": recall(made),
        "precision": len(found & ids) / max(1, len(found)),
        "flagged": len(found),
        "by_kind": {k: recall([c for c in made if c["kind"] == k]) for k in KINDS},
        "short": recall([c for c in made if c["short"]]),
        "long": recall([c for c in made if not c["short"]]),
    }


def datasketch_reference(
    docs: list[dict], made: list[dict], options: DedupConfig
) -> dict[str, Any] | None:
    """datasketch's MinHash and MinHashLSH over the same shingle sets, in this process."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        print("datasketch is not installed: its reference row is left out", file=sys.stderr)
        return None
    ordered = [*docs, *made]  # input order: the base, then the copies
    began = time.perf_counter()
    lsh = MinHashLSH(threshold=options.threshold, num_perm=options.num_perm)
    found: set[str] = set()
    for doc in ordered:
        shingles = [" ".join(s).encode() for s in minhash.shingles(doc["text"], options.ngram)]
        if not shingles:
            continue
        sketch = MinHash(num_perm=options.num_perm, seed=1)
        sketch.update_batch(shingles)
        if lsh.query(sketch):
            found.add(doc["id"])
        else:
            lsh.insert(doc["id"], sketch)
    seconds = time.perf_counter() - began
    return {**scores(found, made), "seconds": seconds, "docs_per_s": len(ordered) / seconds}


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--copies", type=int, default=2400)
    parser.add_argument("--grid", default="1:0.8,2:0.8,3:0.8,5:0.8,1:0.7,2:0.7,5:0.7")
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    grid = [(int(n), float(t)) for n, t in (item.split(":") for item in args.grid.split(","))]
    corpus = corpus_texts(args.corpus)
    docs, made = planted(corpus, args.copies, args.seed)
    defaults = DedupConfig(method="minhash")

    texts = [d["text"] for d in [*docs, *made]]
    minhash.signatures(texts[:1000], defaults.num_perm, defaults.ngram)  # first-call costs
    began = time.perf_counter()
    minhash.signatures(texts, defaults.num_perm, defaults.ngram)
    one_process = len(texts) / (time.perf_counter() - began)

    rows, results = [], []
    with work_folder(args.workdir, "distsel-dedup-") as root, local_ray(args.cpus) as _:
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
        write_jsonl(root / "corpus" / "a.jsonl", docs)
        write_jsonl(root / "corpus" / "b.jsonl", [{"id": c["id"], "text": c["text"]} for c in made])
        for ngram, threshold in grid:
            result, table_rows = run_dedup(root, ngram, threshold, made)
            result["natural"] = len(paired_later(corpus, ngram, threshold))
            results.append(result)
            rows += [[*table_rows[0], f"{result['natural']}"]]
        # the defaults again, with other hash functions: a check of its own, on warm workers
        timed, _ = run_dedup(root, defaults.ngram, defaults.threshold, made, seed=1)
    header = [
        *["ngram", "threshold", "recall", "precision", *KINDS],
        *["<50 w", "≥50 w", "dedup s", "in corpus"],
    ]
    print_table(header, rows, left=0, title=f"{len(made):,} planted copies in {len(texts):,} docs")

    reference = datasketch_reference(docs, made, defaults)
    per_core = timed["docs"] / timed["seconds"] / cpus
    throughput = [
        ["minhash.signatures, one process", f"{one_process:,.0f}"],
        [f"distsel dedup, end to end, per core ({cpus:g} CPUs)", f"{per_core:,.0f}"],
    ]
    if reference:
        throughput.append(
            ["datasketch MinHash + MinHashLSH, one process", f"{reference['docs_per_s']:,.0f}"]
        )
        print(
            f"datasketch at ngram {defaults.ngram}, threshold {defaults.threshold}: recall "
            f"{reference['recall']:.3f}, precision {reference['precision']:.4f}"
        )
    print_table(["throughput", "docs/s"], throughput, title="MinHash throughput")
    if args.json:
        payload = {
            "grid": results,
            "signatures_docs_per_s": one_process,
            "dedup_docs_per_s_per_core": per_core,
            "datasketch": reference,
            "base_docs": len(docs),
            "copies": len(made),
            "cpus": cpus,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
