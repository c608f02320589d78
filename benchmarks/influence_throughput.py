"""Influence scoring throughput for the default proxy, with where the time goes.

Builds the default proxy architecture (distsel.core.config.ProxyConfig defaults) with a BPE
tokenizer trained on a corpus sample. Throughput does not depend on the weights' quality, so the
weights are trained only for --train-tokens (default: a short run). Then it fits the EK-FAC
iHVP on target documents and scores pool documents, with and without a Kronecker projection, and
prints docs/s and the share of time in per-example gradients (forward + backward with hooks),
projection and the rest. Runs on the CPU, or on a GPU with --device cuda (no Ray needed).

    python benchmarks/influence_throughput.py --docs 1000
    python benchmarks/influence_throughput.py --device cuda --docs 20000 --json out.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import harness
import torch

from distsel.algorithms.influence import InfluenceScorer
from distsel.core.config import ProxyConfig
from distsel.methods.influence import InfluenceOptions
from distsel.methods.proxy_model import train_proxy


def load_texts(corpus: Path, count: int, seed: int) -> list[str]:
    texts = [record["text"] for _, shard in harness.load_corpus(corpus) for record in shard]
    random.Random(seed).shuffle(texts)
    return (texts * (count // max(len(texts), 1) + 1))[:count]


def measure(scorer: InfluenceScorer, texts: list[str], device: str) -> dict[str, float]:
    scorer.score(texts[:32])
    scorer.timings = dict.fromkeys(scorer.timings, 0.0)
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    scorer.score(texts)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    shares = {k: v / max(sum(scorer.timings.values()), 1e-9) for k, v in scorer.timings.items()}
    return {"docs_per_s": len(texts) / seconds, "seconds": seconds, **shares}


def parse_args() -> argparse.Namespace:
    parser = harness.new_parser(__doc__, first_paragraph=False)
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS)
    parser.add_argument("--docs", type=int, default=1000, help="pool documents to score")
    parser.add_argument("--targets", type=int, default=300, help="target documents to fit on")
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--projections", default="none,8192", help="comma-separated dims")
    harness.add_common_flags(parser, json=None)
    return parser.parse_args()


def table_row(row: dict[str, float]) -> list[str]:
    return [
        str(row["projection_dim"]),
        f"{row['fit_seconds']:.1f}",
        f"{row['docs_per_s']:.1f}",
        f"{100 * row['forward_backward']:.1f}",
        f"{100 * row['projection']:.1f}",
        f"{100 * row['rest']:.1f}",
    ]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    texts = load_texts(args.corpus, args.docs + args.targets + 2000, seed=0)
    proxy_config = ProxyConfig(train_tokens=args.train_tokens)
    model, tokenizer, info = train_proxy(texts[-2000:], proxy_config, seed=0, device=args.device)
    targets, pool = texts[: args.targets], texts[args.targets : args.targets + args.docs]
    batch = args.batch_size or (64 if args.device == "cuda" else 8)
    print(
        f"proxy: {info['params']:,} parameters ({proxy_config.layers} layers, hidden "
        f"{proxy_config.hidden}, vocab {info['vocab']}), max_length {proxy_config.max_length}; "
        f"device {args.device}, {args.threads} threads, batch {batch}; {len(pool)} docs scored, "
        f"{len(targets)} target docs; at most 4 chunks/doc"
    )
    rows = []
    for dim in args.projections.split(","):
        projection = None if dim == "none" else int(dim)
        options = InfluenceOptions(projection_dim=projection, batch_size=batch)
        scorer = InfluenceScorer(model, tokenizer, options, proxy_config.max_length, args.device)
        began = time.perf_counter()
        scorer.fit(targets)
        fit_seconds = time.perf_counter() - began
        timing = measure(scorer, pool, args.device)
        rows.append({"projection_dim": dim, "fit_seconds": fit_seconds, **timing})
    header = ["projection", "fit s", "docs/s", "grads %", "proj %", "rest %"]
    harness.print_table(header, [table_row(row) for row in rows], left=0)
    harness.write_json(args.json, {"proxy": info, "rows": rows})


if __name__ == "__main__":
    main()
