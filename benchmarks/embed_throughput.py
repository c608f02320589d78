"""Embedder vs a bare transformers forward pass, side by side on this machine's CPU.

Both embed the same documents, in the same calls (as a pipeline stage gets them), at the same
batch size, with the same model and threads. The bare pass tokenizes each batch in the given
order (padding to the batch's longest), runs AutoModel and mean-pools; the Embedder sorts a
call's texts by length first. Goal: Embedder / bare ≥ 0.9.

    python benchmarks/embed_throughput.py --limit 500
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np
import torch

from distsel.methods.embed import Embedder, default_model_path


def load_mixed_texts(corpus: Path, limit: int, seed: int) -> list[str]:
    """`limit` documents drawn evenly from every *.jsonl.gz domain file (seeded), shuffled."""
    by_file = [[r["text"] for r in records] for _, records in harness.load_corpus(corpus)]
    rng = np.random.default_rng(seed)
    quotas = [limit // len(by_file) + (i < limit % len(by_file)) for i in range(len(by_file))]
    texts: list[str] = []
    for docs, quota in zip(by_file, quotas, strict=True):
        picked = rng.choice(len(docs), size=min(quota, len(docs)), replace=False)
        texts += [docs[i] for i in picked]
    rng.shuffle(texts)
    return texts


def bare_embedder(model_path: str, max_length: int, batch_size: int) -> Callable:
    """Tokenizer + AutoModel + mean pooling over the attention mask, batches in given order."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=1))
        return torch.cat(out).numpy()

    return embed


def padded_share(calls: list[np.ndarray], batch_size: int) -> float:
    """Share of the tokens run through the model that are padding, each call's token counts
    cut into batches in the order given."""
    run = sum(
        int(call[i : i + batch_size].max()) * len(call[i : i + batch_size])
        for call in calls
        for i in range(0, len(call), batch_size)
    )
    return 1 - sum(int(call.sum()) for call in calls) / run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=1000, help="documents (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--call-size", type=int, default=256, help="documents per embed call (a pipeline batch)"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the documents")
    harness.add_common_flags(parser, seed=0)
    parser.add_argument("--model-path", default=None, help="default: bundled all-MiniLM-L6-v2")
    return parser.parse_args(argv)


def take_turns(
    methods: dict[str, Callable], calls: list[list[str]], repeats: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Wall and CPU seconds of each method per pass, and its first pass's vectors. The two
    take turns call by call (A B, then B A), so that a load spike on a shared machine falls
    on both alike."""
    wall = {name: np.zeros(repeats) for name in methods}
    cpu = {name: np.zeros(repeats) for name in methods}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for repeat in range(repeats):
        for c, call in enumerate(calls):
            names = list(methods) if (repeat + c) % 2 == 0 else list(methods)[::-1]
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                result = methods[name](call)
                wall[name][repeat] += time.perf_counter() - start
                cpu[name][repeat] += time.process_time() - start_cpu
                if repeat == 0:
                    vectors[name].append(result)
    return wall, cpu, vectors


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    texts = load_mixed_texts(args.corpus, args.limit, args.seed)
    calls = [texts[i : i + args.call_size] for i in range(0, len(texts), args.call_size)]
    model_path = args.model_path or default_model_path()
    threads = args.threads or torch.get_num_threads()
    embedder = Embedder(
        model_path,
        max_length=args.max_length,
        device="cpu",
        num_threads=threads,
        batch_size=args.batch_size,
    )
    methods: dict[str, Callable] = {
        "bare transformers": bare_embedder(model_path, args.max_length, args.batch_size),
        "Embedder": embedder.embed,
    }
    for embed in methods.values():  # warm-up
        embed(texts[: args.batch_size])
    wall, cpu, vectors = take_turns(methods, calls, args.repeats)
    lengths = [np.array([len(ids) for ids in embedder.tokenize(call)]) for call in calls]
    print(
        f"{len(texts)} docs from {args.corpus} (seed {args.seed}); "
        f"{np.concatenate(lengths).mean():.0f} tokens/doc after truncation to "
        f"{args.max_length}; embed calls of {args.call_size} docs, batch {args.batch_size}; "
        f"{threads} torch threads; {args.repeats} passes, the two methods taking turns call by call"
    )
    padding = {
        "bare transformers": padded_share(lengths, args.batch_size),
        "Embedder": padded_share([np.sort(x)[::-1] for x in lengths], args.batch_size),
    }
    report(len(texts), args.repeats, (wall, cpu, vectors), padding)


def report(n: int, repeats: int, measured: tuple, padding: dict[str, float]) -> None:
    wall, cpu, vectors = measured
    rates, rows = {}, []
    for name in wall:
        total, best = wall[name].sum(), wall[name].min()
        rates[name] = (n * repeats / total, n / best, n * repeats / cpu[name].sum())
        rows.append(
            [name, f"{total:.1f}", *(f"{rate:.1f}" for rate in rates[name]), f"{padding[name]:.1%}"]
        )
    header = ["method", "seconds", "docs/s", "best pass docs/s", "docs/CPU-s", "padding"]
    harness.print_table(header, rows)
    ratios = [e / b for e, b in zip(rates["Embedder"], rates["bare transformers"], strict=True)]
    gap = np.abs(np.concatenate(vectors["Embedder"]) - np.concatenate(vectors["bare transformers"]))
    print(
        f"throughput ratio Embedder / bare: {ratios[0]:.2f} (best pass {ratios[1]:.2f}, "
        f"per CPU-second {ratios[2]:.2f}); goal >= 0.9"
    )
    print(f"max |difference| between their embeddings: {gap.max():.1e}")


if __name__ == "__main__":
    main()
