"""Loss-based sample reweighting (`output.weights: loss`; Sow et al., ICLR 2025): a proxy trained
on a selection with each document's token losses multiplied by its weight, against one trained
on the same selection without, at equal tokens, on the task suite's tasks.

Reads a work folder of benchmarks/suite.py (`--workdir`, after a run of its rows): per task and
row (`--rows`, default random and classifier; the token budget), the selection
runs/<task>/<row>.tokens/selected and the pool proxy's loss of each of its documents
(scores/perplexity, the stage `output.weights: loss` runs). Weights are
distsel.algorithms.reweighting.loss_weights over the selection, temperature `--temperature`
(0.5), exactly what selected/'s `weight` column holds.

Training (`train`, below: the loop a user runs on selected/'s `text` and `weight`): the suite's
evaluation proxy (a BPE tokenizer of `--vocab` ids trained on the pool, `--train-tokens` tokens,
the same sizes and schedule), each document's tokens packed into sequences of max_length with
its weight beside every token, and the loss of a batch Σ_t w_t ℓ_t / Σ_t w_t over its predicted
tokens (w = 1: the plain loss, the unweighted row). Printed per task and row: the held-out loss
(nats/token, mean ± sd over `--seeds` seeds) without and with the weights, and the difference.

    python benchmarks/reweighting.py --workdir /tmp/suite \
        --json benchmarks/results/reweighting_cpu.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from harness import new_parser, print_table, read_jsonl, setup_logging

from distsel.algorithms.reweighting import loss_weights
from distsel.core.config import ProxyConfig
from distsel.methods.proxy_model import (
    batch_indices,
    document_losses,
    train_bpe_tokenizer,
    training_steps,
)
from distsel.methods.training import build_proxy, make_optimizer, make_schedule, update

TASKS = ("domain-scientific", "task-gsm8k", "task-pubmedqa", "topic-world", "topic-scitech")


def weighted_sequences(
    tokenizer, texts: list[str], weights: np.ndarray, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, length) token ids of the documents, each followed by eos, concatenated and cut; and
    beside every token its document's weight."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, return_attention_mask=False, verbose=False)["input_ids"]
    stream = [np.asarray([*row, eos], dtype=np.int64) for row in ids]
    tokens = np.concatenate(stream)
    weight = np.concatenate([np.full(len(s), w) for s, w in zip(stream, weights, strict=True)])
    count = max(1, len(tokens) // length)
    if len(tokens) < length:
        tokens, weight = (np.resize(a, length) for a in (tokens, weight))
    cut = count * length
    return (
        torch.from_numpy(tokens[:cut]).view(count, length),
        torch.from_numpy(weight[:cut].astype(np.float32)).view(count, length),
    )


def train(
    texts: list[str], weights: np.ndarray, tokenizer, config: ProxyConfig, seed: int
) -> torch.nn.Module:
    """A fresh proxy trained for train_tokens tokens on `texts`, token losses weighted by their
    document's weight: loss = Σ w_t ℓ_t / Σ w_t over a batch's predicted tokens."""
    sequences, token_weights = weighted_sequences(tokenizer, texts, weights, config.max_length)
    steps = training_steps(config, config.train_tokens)
    torch.manual_seed(seed)
    model = build_proxy(config, len(tokenizer)).train()
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, steps)
    for rows in batch_indices(len(sequences), config.batch_size, steps, seed):
        batch, weight = sequences[rows], token_weights[rows][:, 1:]
        logits = model(input_ids=batch).logits[:, :-1]
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch[:, 1:], reduction="none"
        )
        update(model, (token_loss * weight).sum() / weight.sum(), optimizer, schedule)
    return model.eval()


def selection(run: Path) -> tuple[list[str], np.ndarray]:
    """The selection's texts and the pool proxy's loss of each (scores/perplexity, by id)."""
    chosen = pq.read_table(run / "selected", columns=["id", "text"]).to_pydict()
    scored = pq.read_table(run / "scores" / "perplexity", columns=["id", "perplexity_loss"])
    loss_of = dict(zip(*scored.to_pydict().values(), strict=True))
    return chosen["text"], np.array([loss_of[i] for i in chosen["id"]], dtype=np.float64)


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rows", default="random,classifier")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--train-tokens", type=int, default=50_000)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(2)
    root = args.workdir.resolve()
    config = ProxyConfig(train_tokens=args.train_tokens, vocab_size=args.vocab, max_passes=None)
    pool = [
        r["text"] for path in sorted((root / "pool").glob("*.jsonl.gz")) for r in read_jsonl(path)
    ]
    tokenizer = train_bpe_tokenizer(pool, args.vocab, config.max_length)
    rows, results = [], []
    for task in args.tasks.split(","):
        heldout = [r["text"] for r in read_jsonl(root / "tasks" / task / "heldout.jsonl")]
        for row in args.rows.split(","):
            texts, losses = selection(root / "runs" / task / f"{row}.tokens")
            weights = loss_weights(losses, args.temperature)
            measured = {}
            for name, used in (("plain", np.ones(len(texts))), ("weighted", weights)):
                measured[name] = [
                    float(
                        np.nanmean(
                            document_losses(
                                train(texts, used, tokenizer, config, seed),
                                tokenizer,
                                heldout,
                                config.max_length,
                            )
                        )
                    )
                    for seed in range(args.seeds)
                ]
            plain, weighted = (np.array(measured[n]) for n in ("plain", "weighted"))
            results.append(
                {
                    "task": task,
                    "row": row,
                    **measured,
                    "weight_max": float(weights.max()),
                    "weight_min": float(weights.min()),
                }
            )
            rows.append(
                [
                    task,
                    row,
                    f"{plain.mean():.4f} ± {plain.std():.3f}",
                    f"{weighted.mean():.4f} ± {weighted.std():.3f}",
                    f"{weighted.mean() - plain.mean():+.4f}",
                    f"{weights.min():.2f}–{weights.max():.2f}",
                ]
            )
            print(rows[-1], flush=True)
    header = ["task", "selection", "plain", "weighted", "weighted − plain", "weights"]
    print_table(
        header, rows, left=2, title=f"held-out loss, {args.seeds} seeds, r = {args.temperature}"
    )
    diffs = [np.mean(r["weighted"]) - np.mean(r["plain"]) for r in results]
    print(
        f"\nweighted lower on {sum(d < 0 for d in diffs)}/{len(diffs)}; mean difference "
        f"{np.mean(diffs):+.4f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
