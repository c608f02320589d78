"""The task suite: every target-aware method at its defaults (and the variants its defaults are
chosen from) against random, on tasks of the three kinds users bring, under a document budget
and a token budget.

One pool, shared by every task, so the embeddings, clusters and the proxy LM are computed once:
`--per-domain` documents of each corpus file (`--news` of news, so each news topic has enough
documents), after every task's target and held-out examples were taken out. Tasks:

  domain-<d>      (a) a whole domain: target and held-out examples of domain d; the pool keeps
                  the rest of d (precision: the share of d in the selection)
  task-<t>        (b) a task's examples (../shared/data/targets/<t>.jsonl) against the mixed pool
                  (no labels, so no precision)
  topic-<label>   (c) one AG-news class: target and held-out examples of that class; the pool
                  keeps the news of every class (precision: the share of that class)

Budgets: `--tokens-share` of the pool's tokens (every row in `--rows`), then `--docs-share` of
its documents (the rows in `--docs-rows`). Per task, one scoring run computes the cheap
target-dependent stages (dsir, classifier, similarity) on a copy of the shared scoring, and a
variant's run (other stage settings, or influence over every document for the influence rows,
about 10 min a task on 2 cores) on a copy of that; each row is then a selection-only run on a
copy of its scoring. Quad scores its own draws (the share of the pool it scores is its own).
`--only` runs the rows on some tasks (the split stays the same).

Per row: the held-out loss (nats/token) of a fresh proxy trained on `--eval-train-tokens` tokens
of the selection (its documents shuffled by the seed; a selection with fewer tokens repeats),
`--eval-seeds` seeds, mean ± sd, with one BPE tokenizer of `--eval-vocab` ids trained on the
pool (so losses compare); precision where labels exist; the run's evaluation (KL reduction,
and the bigram cross-entropy reduction against a random selection of the same size); the share
of the pool scored by influence; wall seconds of the selection (the task's shared scoring
seconds are printed per task).
Summary, per budget: each row's mean rank of loss over the tasks, its wins and losses against
random and against the best cheap baseline (dsir, classifier, similarity at defaults) of each
table, by more than twice the larger evaluation sd; how well the runs' evaluation metrics rank
selections as the loss does; and the issue's goals, met or not, with their figures.

    python benchmarks/suite.py --workdir /tmp/suite --resume \
        --json benchmarks/results/suite_cpu.json
    python benchmarks/suite.py --workdir /tmp/suite --resume --only topic-world,task-gsm8k \
        --rows random,influence --docs-rows random,influence
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import fmt, positive

NEWS_TOPICS = {1: "world", 2: "sports", 3: "business", 4: "scitech"}
TASKS = ("domain-scientific", "task-gsm8k", "task-pubmedqa", "topic-world", "topic-scitech")
CHEAP = ("dsir", "classifier", "similarity")

# row -> (select.method, select options, stage variant); rows named like a method are its
# defaults; a variant's rows select from a scoring run of their own with these stage settings
ROWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "random": ("random", {}, ""),
    "dsir": ("dsir", {}, ""),
    "dsir-gumbel": ("dsir", {"dsir": {"sampling": "gumbel"}}, ""),
    "dsir-raw": ("dsir", {"dsir": {"length_normalize": False}}, ""),
    "dsir-raw-gumbel": ("dsir", {"dsir": {"length_normalize": False, "sampling": "gumbel"}}, ""),
    "classifier": ("classifier", {}, ""),
    "similarity": ("similarity", {}, ""),
    "similarity-cosine": ("similarity", {}, "cosine"),
    "similarity-mean": ("similarity", {}, "mean"),
    "similarity-embedding": ("similarity", {}, "embedding"),
    "similarity-betr": ("similarity", {"similarity": {"betr": True}}, "betr"),
    "influence": ("influence", {}, "influence"),
    "influence-raw": ("influence", {"influence": {"normalize": False}}, "influence"),
    "quad": ("quad", {}, ""),
    # the value without the classifier's score (the default before classifier_weight)
    "quad-w0": ("quad", {"quad": {"classifier_weight": 0.0}}, ""),
    "quad-contrast": ("quad", {}, "contrast"),
    # a diagnostic: the bandit with the classifier's score as the reward instead of influence
    "quad-classifier": ("quad", {"quad": {"scorer": "classifier"}}, ""),
    "mig": ("mig", {}, ""),
    "mig-a0.5": ("mig", {"mig": {"alpha": 0.5}}, ""),  # the first default
    "mig-a0.8": ("mig", {"mig": {"alpha": 0.8}}, ""),
    "mig-a0.9": ("mig", {"mig": {"alpha": 0.9}}, ""),
    "mig-a0.98": ("mig", {"mig": {"alpha": 0.98}}, ""),
    "diversify": ("diversify", {}, ""),
    "diversify-t0.5": ("diversify", {"diversify": {"temperature": 0.5}}, ""),  # the first default
    "diversify-r8": ("diversify", {"diversify": {"rounds": 8, "temperature": 0.5}}, ""),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "": {},
    # RDS+'s plain cosine (the default before `contrast: pool`), max or mean over the examples
    "cosine": {"similarity": {"contrast": "none"}},
    "mean": {"similarity": {"contrast": "none", "aggregate": "mean"}},
    # the nearest-target share in the embedding alone, without the TF-IDF n-gram view beside it
    "embedding": {"similarity": {"view": "embedding"}},
    "betr": {"betr": {}},  # BETR: an n-gram classifier on the embedding ranking of a sample
    "contrast": {"influence": {"contrast": "pool"}},  # options only: configures, does not add
    "influence": {"influence": {}},  # listed empty: the stage scores every document
}
# influence top-k scores every document: about 13 min per task on 2 cores, so it is a row on
# request only (--rows)
DEFAULT_ROWS = "random,dsir,dsir-raw-gumbel,classifier,similarity,quad,quad-contrast"
DOCS_ROWS = "random,dsir,classifier,similarity,influence,quad"


@dataclass
class Task:
    name: str
    kind: str
    target: list[harness.Record]
    heldout: list[harness.Record]
    label_field: str | None = None
    label: str | None = None

    def precision(self, labels: list[Any]) -> float | None:
        if self.label is None or not labels:
            return None
        return sum(value == self.label for value in labels) / len(labels)


# --- the pool and the tasks -------------------------------------------------------------------


def topic(record: harness.Record) -> str:
    """A pool record's topic: its AG-news class for news, else its domain."""
    if record.get("domain") == "news":
        return NEWS_TOPICS[int(record["label"])]
    return str(record["domain"])


def take(rng: np.random.Generator, records: list[harness.Record], size: int) -> list[int]:
    return sorted(rng.choice(len(records), size=min(size, len(records)), replace=False).tolist())


def build(args: argparse.Namespace) -> tuple[list[Task], harness.Shards]:
    """The tasks (target and held-out examples, out of the pool) and the pool's shards."""
    rng = np.random.default_rng(args.seed)
    shards = dict(harness.load_corpus(args.corpus))
    taken: dict[str, set[int]] = {name: set() for name in shards}
    tasks = []
    size = args.target_size + args.heldout_size
    for name in args.tasks.split(","):
        kind, _, what = name.partition("-")
        if kind == "task":
            records = harness.read_jsonl(args.corpus.parent / "targets" / f"{what}.jsonl")
            chosen = [records[i] for i in take(rng, records, size)]
            tasks.append(Task(name, kind, chosen[: args.target_size], chosen[args.target_size :]))
            continue
        file = "news" if kind == "topic" else what
        records = shards[file]
        free = [
            i
            for i, r in enumerate(records)
            if i not in taken[file] and (kind == "domain" or topic(r) == what)
        ]
        rows = [free[j] for j in take(rng, [records[i] for i in free], size)]
        rng.shuffle(rows)
        taken[file].update(rows)
        chosen = [records[i] for i in rows]
        field = "domain" if kind == "domain" else "topic"
        tasks.append(
            Task(name, kind, chosen[: args.target_size], chosen[args.target_size :], field, what)
        )
    pool = []
    for name, records in shards.items():
        rest = [r for i, r in enumerate(records) if i not in taken[name]]
        keep = args.news if name == "news" else args.per_domain
        pool.append((name, [{**rest[i], "topic": topic(rest[i])} for i in take(rng, rest, keep)]))
    return tasks, pool


def write_work(root: Path, tasks: list[Task], pool: harness.Shards, settings: dict) -> None:
    """pool/<file>.jsonl.gz and tasks/<task>/{target,heldout}.jsonl; a work folder holding
    another split is refused."""
    marker = root / "split.json"
    if marker.exists() and json.loads(marker.read_text()) != settings:
        raise SystemExit(f"{root} holds another split; use another --workdir")
    for name, records in pool:
        path = root / "pool" / f"{name}.jsonl.gz"
        if not path.exists():
            harness.write_jsonl(path, records)
    for task in tasks:
        for part in ("target", "heldout"):
            path = root / "tasks" / task.name / f"{part}.jsonl"
            if not path.exists():
                harness.write_jsonl(path, getattr(task, part))
    marker.write_text(json.dumps(settings) + "\n")


# --- runs -------------------------------------------------------------------------------------


def base_raw(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The shared scoring: tokens, embeddings, clusters and the pool proxy (perplexity)."""
    return {
        "input": {"paths": [str(root / "pool")], "group_field": "domain", "label_field": "topic"},
        "output": {"path": str(root / "runs" / "base")},
        "select": {"method": "random", "budget": {"docs": 10}},
        "proxy": {"train_tokens": args.proxy_train_tokens},
        "stages": {"embed": {}, "cluster": {}, "perplexity": {}},
        "seed": args.seed,
    }


def task_stages(variant: str) -> dict[str, Any]:
    stages: dict[str, Any] = {
        "embed": {},
        "cluster": {},
        "dsir": {},
        "classifier": {},
        "similarity": {},
    }
    for name, options in VARIANTS[variant].items():
        stages[name] = {**stages.get(name, {}), **options}
    return stages


def scored_folder(root: Path, task: Task, variant: str) -> Path:
    return root / "runs" / task.name / ("scored-" + variant if variant else "scored")


def task_raw(
    args: argparse.Namespace, root: Path, task: Task, row: str, budget: dict[str, Any]
) -> dict[str, Any]:
    method, options, variant = ROWS[row]
    raw = base_raw(args, root)
    raw["proxy"] = {"path": str(root / "runs" / "base" / "proxy")}
    raw["target"] = {"paths": [str(root / "tasks" / task.name / "target.jsonl")]}
    raw["stages"] = task_stages(variant)
    raw["select"] = {"method": method, "budget": budget, **options}
    raw["output"] = {"path": str(root / "runs" / task.name / run_name(row, budget))}
    return raw


def run_name(row: str, budget: dict[str, Any]) -> str:
    return "scored" if row == "scored" else f"{row}.{next(iter(budget))}"


def budgets(args: argparse.Namespace, pool: harness.Shards) -> dict[str, dict[str, int]]:
    records = [r for _, rs in pool for r in rs]
    tokens = sum(math.ceil(len(r["text"]) / 4) for r in records)
    return {
        "docs": {"docs": math.ceil(args.docs_share * len(records))},
        "tokens": {"tokens": math.ceil(args.tokens_share * tokens)},
    }


def run(name: str, raw: dict[str, Any], args: argparse.Namespace, pool_size: int) -> dict:
    result = harness.run_method(name, raw, "-", pool_size, resume=args.resume)
    if "error" in result:
        raise SystemExit(f"{name}: {result['error']}")
    return result


def score_task(
    args: argparse.Namespace, root: Path, task: Task, variant: str, pool_size: int
) -> dict:
    """The task's scoring run (every target-dependent stage) on a copy of the shared one; a
    variant's (other settings of some stages) on a copy of the task's."""
    folder = scored_folder(root, task, variant)
    row = next(r for r, (_, _, v) in ROWS.items() if v == variant)
    raw = task_raw(args, root, task, row, {"docs": 10})
    raw["select"] = {"method": "random", "budget": {"docs": 10}}
    raw["output"] = {"path": str(folder)}
    if not (args.resume and harness.finished_manifest(raw)):
        # a variant rescores only the stages whose settings it changes
        source = scored_folder(root, task, "") if variant else root / "runs" / "base"
        harness.copy_scored(source, folder)
    return run(f"{task.name} scoring {variant}".strip(), raw, args, pool_size)


def select_row(
    args: argparse.Namespace, root: Path, task: Task, row: str, budget: dict, pool_size: int
) -> dict[str, Any]:
    raw = task_raw(args, root, task, row, budget)
    name = f"{task.name} {run_name(row, budget)}"
    if not (args.resume and harness.finished_manifest(raw)):
        source = scored_folder(root, task, ROWS[row][2])
        fitted = root / "runs" / task.name / run_name(row, {"tokens": 0})
        if ROWS[row][0] == "quad" and (fitted / "manifest.json").exists():
            source = fitted  # the same influence fit: reused, not fitted again
        harness.copy_scored(source, Path(raw["output"]["path"]))
    result = run(name, raw, args, pool_size)
    harness.progress(name, f"{result['selected_docs']} docs, {result['wall_seconds']:.1f} s")
    return result


# --- evaluation proxies -----------------------------------------------------------------------


class Evaluator:
    """Fresh proxies trained on a selection, with a BPE tokenizer trained on the pool; held-out
    losses kept in a JSON cache keyed by the selection, the settings and the seed."""

    def __init__(self, args: argparse.Namespace, root: Path, pool_texts: list[str]) -> None:
        from distsel.core.config import ProxyConfig
        from distsel.methods.proxy_model import train_bpe_tokenizer

        # every proxy trains on the same number of tokens, however few the selection holds
        self.config = ProxyConfig(
            train_tokens=args.eval_train_tokens, vocab_size=args.eval_vocab, max_passes=None
        )
        # one tokenizer for every selection, so that losses compare; a small vocabulary, since
        # the output layer is most of a small proxy's cost
        self.tokenizer = train_bpe_tokenizer(pool_texts, args.eval_vocab, self.config.max_length)
        self.cache_path = root / "eval_cache.json"
        self.cache = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def loss(self, ids: list[str], texts: list[str], heldout: list[str], seed: int) -> float:
        key = hashlib.sha256(
            json.dumps(
                [sorted(ids), self.config.model_dump(), seed, heldout[:3], "bpe-pool"]
            ).encode()
        ).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.train_and_measure(texts, heldout, seed)
            self.cache_path.write_text(json.dumps(self.cache) + "\n")
        return self.cache[key]

    def train_and_measure(self, texts: list[str], heldout: list[str], seed: int) -> float:
        from distsel.methods.proxy_model import document_losses, train_proxy

        order = list(texts)
        random.Random(seed).shuffle(order)
        model, _, _ = train_proxy(order, self.config, seed, tokenizer=self.tokenizer)
        losses = document_losses(model, self.tokenizer, heldout, self.config.max_length)
        return float(np.nanmean(losses))


# --- tables -----------------------------------------------------------------------------------

COLUMNS = [
    "row",
    "loss",
    "precision",
    "short off-target tok",
    "kl red.",
    "xent red.",
    "scored",
    "clusters",
    "nn dist",
    "docs",
    "select s",
]


def short_share(task: Task, table: dict[str, list[Any]], short_below: int) -> float:
    """The share of the selection's tokens in short documents (under the pool's median length)
    that are off the task's label (every document, for tasks without labels)."""
    labels = table.get(task.label_field or "") or [None] * len(table["id"])
    tokens = np.asarray(table["tokens_approx"], dtype=float)
    off = np.asarray([task.label is None or value != task.label for value in labels])
    short = (tokens < short_below) & off
    return float(tokens[short].sum() / max(tokens.sum(), 1.0))


def evaluate_row(
    evaluator: Evaluator, task: Task, result: dict[str, Any], seeds: range, short_below: int
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    folder = Path(result["output"]) / "selected"
    columns = ["id", "text"] + ([task.label_field] if task.label_field else [])
    table = {c: [] for c in columns}
    for path in sorted(folder.glob("*.parquet")):
        part = pq.read_table(path, columns=columns)
        for c in columns:
            table[c] += part.column(c).to_pylist()
    table["tokens_approx"] = [math.ceil(len(text) / 4) for text in table["text"]]  # as distsel
    heldout = [r["text"] for r in task.heldout]
    losses = [evaluator.loss(table["id"], table["text"], heldout, s) for s in seeds]
    evaluation = json.loads((Path(result["output"]) / "manifest.json").read_text())["evaluation"]
    ngram = (evaluation or {}).get("ngram_lm") or {}
    return {
        **coverage(Path(result["output"]), table["id"]),
        "loss": float(np.mean(losses)),
        "loss_sd": float(np.std(losses)),
        "losses": losses,
        "precision": task.precision(table.get(task.label_field or "", [])),
        "short_share": short_share(task, table, short_below),
        "xent_reduction": ngram.get("xent_reduction"),
    }


def coverage(output: Path, ids: list[str]) -> dict[str, Any]:
    """The k-means clusters the selection covers, and the mean cosine distance from each chosen
    document to its nearest other chosen one (from the run's scores/cluster and scores/embed)."""
    import pyarrow.parquet as pq

    from distsel.core.vectors import embedding_matrix

    chosen = set(ids)
    clusters, vectors = set(), []
    for path in sorted((output / "scores" / "cluster").glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "cluster"]).to_pydict()
        clusters |= {c for i, c in zip(table["id"], table["cluster"], strict=True) if i in chosen}
        embedded = pq.read_table(
            output / "scores" / "embed" / path.name, columns=["id", "embedding"]
        )
        rows = [n for n, i in enumerate(embedded.column("id").to_pylist()) if i in chosen]
        vectors.append(
            embedding_matrix(embedded.column("embedding").take(np.asarray(rows, dtype=np.int64)))
        )
    unit = np.concatenate(vectors) if vectors else np.zeros((0, 1))
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    nearest = similar.max(axis=1) if len(unit) > 1 else np.ones(len(unit))
    return {"clusters_covered": len(clusters), "nn_distance": float(np.mean(1 - nearest))}


def table_row(row: str, r: dict[str, Any]) -> list[str]:
    return [
        row,
        f"{fmt(r['loss'], '.4f')} ± {fmt(r['loss_sd'], '.3f')}",
        fmt(r["precision"], ".3f"),
        fmt(r.get("short_share"), ".3f"),
        fmt(r.get("kl_reduction"), "+.4f"),
        fmt(r.get("xent_reduction"), "+.4f"),
        fmt(r.get("evaluated_share"), ".3f"),
        str(r.get("clusters_covered", "-")),
        fmt(r.get("nn_distance"), ".3f"),
        str(r["selected_docs"]),
        fmt(r["wall_seconds"], ".1f"),
    ]


def ranks(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Each row's rank of loss (1 = lowest; ties share the mean rank) in every table."""
    out: dict[str, list[float]] = {}
    for table in results.values():
        rows = sorted(table, key=lambda r: table[r]["loss"])
        losses = [table[r]["loss"] for r in rows]
        for row in rows:
            tied = [i + 1 for i, v in enumerate(losses) if v == table[row]["loss"]]
            out.setdefault(row, []).append(float(np.mean(tied)))
    return out


def beats(a: dict[str, Any], b: dict[str, Any]) -> int:
    """+1: a's loss is lower than b's by more than twice the larger sd; −1: higher; 0: neither."""
    margin = 2 * max(a["loss_sd"], b["loss_sd"])
    if a["loss"] < b["loss"] - margin:
        return 1
    return -1 if a["loss"] > b["loss"] + margin else 0


def summary_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
    rank = ranks(results)
    lines = []
    for row in sorted(rank, key=lambda r: np.mean(rank[r])):
        vs_random = [beats(t[row], t["random"]) for t in results.values() if "random" in t]
        vs_cheap = []
        for t in results.values():
            cheap = [c for c in CHEAP if c in t and c != row]
            if cheap:
                best = min(cheap, key=lambda c: t[c]["loss"])
                vs_cheap.append(beats(t[row], t[best]))
        lines.append(
            [
                row,
                f"{np.mean(rank[row]):.2f}",
                f"{np.mean([t[row]['loss'] for t in results.values()]):.4f}",
                f"{vs_random.count(1)}/{vs_random.count(0)}/{vs_random.count(-1)}",
                f"{vs_cheap.count(1)}/{vs_cheap.count(0)}/{vs_cheap.count(-1)}",
            ]
        )
    return lines


# --- main -------------------------------------------------------------------------------------


def parse_args(
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The suite's flags, and those `extra` adds (for the scripts that read its runs)."""
    parser = harness.new_parser(__doc__)
    harness.add_common_flags(parser, corpus=harness.DEFAULT_CORPUS, seed=0)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"of {', '.join(ROWS)}")
    parser.add_argument("--target-size", type=positive, default=300)
    parser.add_argument("--heldout-size", type=positive, default=200)
    parser.add_argument("--per-domain", type=positive, default=500)
    parser.add_argument("--news", type=positive, default=1200)
    parser.add_argument("--docs-share", type=float, default=0.05)
    parser.add_argument("--tokens-share", type=float, default=0.10)
    parser.add_argument("--proxy-train-tokens", type=positive, default=500_000)
    parser.add_argument("--eval-train-tokens", type=positive, default=50_000)
    parser.add_argument("--eval-seeds", type=positive, default=5)
    # the same selections measured again with other proxies: the evaluation's own noise
    parser.add_argument("--eval-first-seed", type=int, default=0)
    parser.add_argument("--eval-vocab", type=positive, default=2048)
    parser.add_argument("--only", default="", help="run the rows on these tasks only (comma list)")
    parser.add_argument("--budgets", default="tokens,docs")
    parser.add_argument(
        "--docs-rows", default=DOCS_ROWS, help="the rows also run under the document budget"
    )
    parser.add_argument("--no-eval", action="store_true", help="selections only")
    harness.add_common_flags(parser, workdir=harness.REQUIRED, resume=False, json=None)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    harness.setup_logging()
    began = time.perf_counter()
    tasks, pool = build(args)
    root = args.workdir.resolve()
    split = ("corpus", "seed", "tasks", "target_size", "heldout_size", "per_domain", "news")
    settings = {k: str(getattr(args, k)) for k in split}
    write_work(root, tasks, pool, settings)
    if args.only:
        tasks = [t for t in tasks if t.name in args.only.split(",")]
    pool_size = sum(len(rs) for _, rs in pool)
    budget_of = budgets(args, pool)
    rows = args.rows.split(",")
    docs_rows = [r for r in args.docs_rows.split(",") if r in rows]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    scoring: dict[str, dict[str, Any]] = {}
    lengths = [math.ceil(len(r["text"]) / 4) for _, rs in pool for r in rs]
    short = int(np.median(lengths))
    with harness.local_ray():
        run("base", base_raw(args, root), args, pool_size)
        texts = [r["text"] for _, rs in pool for r in rs]
        evaluator = None if args.no_eval else Evaluator(args, root, texts)
        for task in tasks:
            for variant in sorted({ROWS[row][2] for row in rows}):
                stages = score_task(args, root, task, variant, pool_size)["stages"]
                scoring[f"{task.name} {variant}".strip()] = stages
        for kind in args.budgets.split(","):  # every task under one budget, then the next
            for task in tasks:
                table = results.setdefault(f"{task.name} / {kind}", {})
                for row in rows if kind == "tokens" else docs_rows:
                    table[row] = select_row(args, root, task, row, budget_of[kind], pool_size)
                    if evaluator is not None:
                        seeds = range(args.eval_first_seed, args.eval_first_seed + args.eval_seeds)
                        evaluation = evaluate_row(evaluator, task, table[row], seeds, short)
                        table[row].update(evaluation)
                        harness.progress(
                            f"{task.name} {row}.{kind}", f"loss {evaluation['loss']:.4f}"
                        )
                harness.write_json(args.json, {"args": vars(args), "results": compact(results)})
    report(args, tasks, pool_size, budget_of, results, scoring, time.perf_counter() - began)


def report(
    args: argparse.Namespace,
    tasks: list[Task],
    pool_size: int,
    budget_of: dict[str, dict[str, int]],
    results: dict[str, dict[str, dict[str, Any]]],
    scoring: dict[str, dict[str, Any]],
    seconds: float,
) -> None:
    print(
        f"pool {pool_size} docs ({args.per_domain} per domain file, {args.news} news) | budgets "
        f"{budget_of['docs']['docs']} docs ({args.docs_share:.0%}), "
        f"{budget_of['tokens']['tokens']:,} tokens ({args.tokens_share:.0%}) | targets "
        f"{args.target_size}, held out {args.heldout_size} | eval proxies "
        f"{args.eval_train_tokens:,} tokens, {args.eval_seeds} seeds from {args.eval_first_seed} | "
        f"seed {args.seed} | "
        f"{os.cpu_count()}-core CPU"
    )
    for name, stages in scoring.items():
        seconds_by = ", ".join(
            f"{k} {v.get('seconds', 0):.0f}" for k, v in stages.items() if isinstance(v, dict)
        )
        print(f"{name} scoring s: {seconds_by}")
    if args.no_eval:
        return
    for name, table in results.items():
        harness.print_table(COLUMNS, [table_row(r, v) for r, v in table.items()], title=name)
    header = ["row", "mean rank", "mean loss", "vs random +/=/-", "vs best cheap +/=/-"]
    for kind in args.budgets.split(","):
        tables = {name: t for name, t in results.items() if name.endswith(f"/ {kind}")}
        harness.print_table(header, summary_rows(tables), title=f"summary, {kind} budget")
    harness.print_table(
        ["evaluation metric", "mean Spearman with −loss", "sign agrees with loss vs random"],
        metric_rows(results),
        title="does the run's evaluation rank selections as the held-out loss does? (every table)",
    )
    tokens = {name: t for name, t in results.items() if name.endswith("/ tokens")}
    if tokens:  # the goals are set under the token budget
        print("\ngoals (token budget):")
        for line in goal_lines(tokens, tasks):
            print(f"  {line}")
    print(f"\ntotal {seconds:.0f} s")
    harness.write_json(args.json, {"args": vars(args), "results": compact(results)})


def spearman(a: list[float], b: list[float]) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def metric_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
    """Per evaluation metric: its mean rank correlation with −loss over the tables, and how often
    its sign (a selection against random) agrees with the loss's."""
    rows = []
    for key, name in (
        ("xent_reduction", "bigram xent reduction"),
        ("kl_reduction", "KL reduction"),
    ):
        correlations, agree, total = [], 0, 0
        for table in results.values():
            rows_with = [r for r in table if table[r].get(key) is not None]
            if len(rows_with) > 2:
                values = [table[r][key] for r in rows_with]
                correlations.append(spearman(values, [-table[r]["loss"] for r in rows_with]))
            for r in rows_with:
                if r != "random" and "random" in table:
                    gain = table["random"]["loss"] - table[r]["loss"]
                    agree += (gain > 0) == (table[r][key] > 0)
                    total += 1
        mean = f"{np.mean(correlations):+.2f}" if correlations else "-"
        rows.append([name, mean, f"{agree}/{total}"])
    return rows


DEFAULT_ROW_OF = {"dsir": "dsir", "classifier": "classifier", "similarity": "similarity"}
DEFAULT_ROW_OF.update(quad="quad", influence="influence", mig="mig", diversify="diversify")
GOAL_RANDOM_SDS, GOAL_DEFAULT_GAP, GOAL_QUAD_GAP, GOAL_QUAD_SCORED, GOAL_PRECISION = (
    2,
    0.05,
    0.03,
    0.10,
    0.9,
)


KEPT = (
    "loss",
    "loss_sd",
    "losses",
    "precision",
    "short_share",
    "kl_reduction",
    "xent_reduction",
    "evaluated_share",
    "clusters_covered",
    "nn_distance",
    "selected_docs",
    "selected_tokens_approx",
    "selected_by_group",
    "wall_seconds",
)


def compact(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """What the tables show, per table and row (the runs' manifests hold the rest)."""
    return {
        name: {row: {k: r.get(k) for k in KEPT} for row, r in table.items()}
        for name, table in results.items()
    }


def diversity_goal(tables: dict[str, dict[str, dict[str, Any]]], row: str) -> str:
    """Issue 26's goal for a diversity selector: a lower loss than random on the task-style
    tasks, more clusters covered than the classifier's top-k everywhere."""
    tasks = {n: t for n, t in tables.items() if n.startswith("task-")}
    lower = [n for n, t in tasks.items() if t[row]["loss"] < t["random"]["loss"]]
    clear = [n for n, t in tasks.items() if beats(t[row], t["random"]) == 1]
    wider = [
        n
        for n, t in tables.items()
        if (t[row].get("clusters_covered") or 0) > (t["classifier"].get("clusters_covered") or 0)
    ]
    return (
        f"{row} below random's loss on the task-style tasks: "
        f"{verdict(len(lower) == len(tasks))} ({len(lower)}/{len(tasks)}, by > "
        f"{GOAL_RANDOM_SDS} sd on {len(clear)}); more clusters than the classifier's top-k: "
        f"{verdict(len(wider) == len(tables))} ({len(wider)}/{len(tables)})"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goal_lines(tables: dict[str, dict[str, dict[str, Any]]], tasks: list[Task]) -> list[str]:
    """The issue's goals, each with its figures."""
    lines = []
    defaults = [row for row in DEFAULT_ROW_OF.values() if all(row in t for t in tables.values())]
    for row in defaults:
        misses = [n for n, t in tables.items() if beats(t[row], t["random"]) != 1]
        signs = [
            (t["random"]["loss"] - t[row]["loss"]) * (t[row].get("xent_reduction") or 0) > 0
            for t in tables.values()
        ]
        lines.append(
            f"{row} beats random by > {GOAL_RANDOM_SDS} sd on every task: "
            f"{verdict(not misses)} ({len(tables) - len(misses)}/{len(tables)}"
            f"{'; not: ' + ', '.join(misses) if misses else ''}); the evaluation's sign agrees "
            f"with the loss's on {sum(signs)}/{len(signs)}"
        )
    for method, default in DEFAULT_ROW_OF.items():
        settings = [
            r for r in ROWS if ROWS[r][0] == method and all(r in t for t in tables.values())
        ]
        if default not in settings or len(settings) < 2:
            continue
        mean = {r: np.mean([t[r]["loss"] for t in tables.values()]) for r in settings}
        best = min(mean, key=mean.get)
        gap = mean[default] - mean[best]
        lines.append(
            f"{method} defaults within {GOAL_DEFAULT_GAP} of its best setting ({best}): "
            f"{verdict(gap <= GOAL_DEFAULT_GAP)} (mean loss {mean[default]:.4f} vs "
            f"{mean[best]:.4f})"
        )
    for row in ("mig", "diversify"):
        if all(row in t and "classifier" in t for t in tables.values()):
            lines.append(diversity_goal(tables, row))
    if all("quad" in t for t in tables.values()):
        for name, t in tables.items():
            best = min(t, key=lambda r: t[r]["loss"])
            gap, share = t["quad"]["loss"] - t[best]["loss"], t["quad"].get("evaluated_share")
            ok = gap <= GOAL_QUAD_GAP and share is not None and share <= GOAL_QUAD_SCORED
            lines.append(
                f"quad within {GOAL_QUAD_GAP} of the best row ({best}), scoring <= "
                f"{GOAL_QUAD_SCORED:.0%}, on {name}: {verdict(ok)} (gap {gap:+.4f}, scored "
                f"{fmt(share, '.3f')})"
            )
        for task in (t for t in tasks if t.kind == "topic"):
            t = tables.get(f"{task.name} / tokens")
            if not t or "classifier" not in t:
                continue
            mine, theirs = t["quad"]["precision"], t["classifier"]["precision"]
            lines.append(
                f"quad precision >= {GOAL_PRECISION} x the classifier's on {task.name}: "
                f"{verdict(mine >= GOAL_PRECISION * theirs)} ({mine:.3f} vs {theirs:.3f})"
            )
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
