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
import gzip
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distsel.scoring.embed import Embedder, default_model_path  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"


def load_mixed_texts(corpus: Path, limit: int, seed: int) -> list[str]:
    """`limit` documents drawn evenly from every *.jsonl.gz domain file (seeded), shuffled."""
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no *.jsonl.gz files in {corpus} (pass --corpus)")
    by_file = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            by_file.append([json.loads(line)["text"] for line in lines if line.strip()])
    rng = np.random.default_rng(seed)
    quotas = [limit // len(files) + (i < limit % len(files)) for i in range(len(files))]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=1000, help="documents (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--call-size", type=int, default=256, help="documents per embed call (a pipeline batch)"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-path", default=None, help="default: bundled all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

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

    # The two take turns call by call (A B, then B A), so that a load spike on a shared
    # machine falls on both alike.
    wall = {name: np.zeros(args.repeats) for name in methods}
    cpu = {name: np.zeros(args.repeats) for name in methods}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for repeat in range(args.repeats):
        for c, call in enumerate(calls):
            names = list(methods) if (repeat + c) % 2 == 0 else list(methods)[::-1]
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                result = methods[name](call)
                wall[name][repeat] += time.perf_counter() - start
                cpu[name][repeat] += time.process_time() - start_cpu
                if repeat == 0:
                    vectors[name].append(result)

    lengths = [np.array([len(ids) for ids in embedder.tokenize(call)]) for call in calls]
    padding = {
        "bare transformers": padded_share(lengths, args.batch_size),
        "Embedder": padded_share([np.sort(x)[::-1] for x in lengths], args.batch_size),
    }
    n = len(texts)
    print(
        f"{n} docs from {args.corpus} (seed {args.seed}); {np.concatenate(lengths).mean():.0f} "
        f"tokens/doc after truncation to {args.max_length}; embed calls of {args.call_size} "
        f"docs, batch {args.batch_size}; {threads} torch threads; {args.repeats} passes, "
        "the two methods taking turns call by call"
    )
    header = (
        f"{'method':<18} {'seconds':>8} {'docs/s':>7} {'best pass docs/s':>16} "
        f"{'docs/CPU-s':>10} {'padding':>8}"
    )
    print(header)
    print("-" * len(header))
    rates = {}
    for name in methods:
        total, best = wall[name].sum(), wall[name].min()
        rates[name] = (n * args.repeats / total, n / best, n * args.repeats / cpu[name].sum())
        print(
            f"{name:<18} {total:>8.1f} {rates[name][0]:>7.1f} {rates[name][1]:>16.1f} "
            f"{rates[name][2]:>10.1f} {padding[name]:>8.1%}"
        )
    ratios = [e / b for e, b in zip(rates["Embedder"], rates["bare transformers"], strict=True)]
    gap = np.abs(np.concatenate(vectors["Embedder"]) - np.concatenate(vectors["bare transformers"]))
    print(
        f"throughput ratio Embedder / bare: {ratios[0]:.2f} (best pass {ratios[1]:.2f}, "
        f"per CPU-second {ratios[2]:.2f}); goal >= 0.9"
    )
    print(f"max |difference| between their embeddings: {gap.max():.1e}")


if __name__ == "__main__":
    main()
