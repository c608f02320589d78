"""What the benchmark scripts share: the corpus and its held-out split, the work folder, the
local Ray, one distsel method run through the pipeline and its result read back, evaluation
proxies trained on a selection, the common flags, the table and the result JSON.

Import it before distsel or Ray: it puts the checkout on sys.path and sets the environment
(offline Hugging Face hub, Ray on 127.0.0.1) that they read when first imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the model-loading bars of actors
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1

import argparse
import gzip
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
DEFAULT_CORPUS = DATA / "corpus"

Record = dict[str, Any]
Shards = list[tuple[str, list[Record]]]


# --- corpus -----------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_corpus(corpus: Path) -> Shards:
    """Every (file stem, records) of the corpus's *.jsonl.gz files, records as read."""
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no *.jsonl.gz files in {corpus} (pass --corpus)")
    return [(path.name.removesuffix(".jsonl.gz"), read_jsonl(path)) for path in files]


def split(
    shards: Shards, domain: str, target_size: int, seed: int, limit_per_domain: int | None
) -> tuple[list[Record], Shards]:
    """The held-out target records and the pool's shards (seeded; pool rows keep file order)."""
    rng = np.random.default_rng(seed)
    in_domain = [
        (s, i)
        for s, (_, records) in enumerate(shards)
        for i, record in enumerate(records)
        if record.get("domain") == domain
    ]
    if len(in_domain) <= target_size:
        known = sorted({r.get("domain") for _, records in shards for r in records} - {None})
        raise SystemExit(
            f"domain {domain!r} has {len(in_domain)} docs, need more than {target_size} "
            f"(domains: {', '.join(map(str, known))})"
        )
    held = {in_domain[j] for j in rng.choice(len(in_domain), size=target_size, replace=False)}
    target = [shards[s][1][i] for s, i in sorted(held)]
    pool = []
    for s, (name, records) in enumerate(shards):
        rows = [i for i in range(len(records)) if (s, i) not in held]
        if limit_per_domain is not None and len(rows) > limit_per_domain:
            rows = sorted(rng.choice(rows, size=limit_per_domain, replace=False).tolist())
        pool.append((name, [records[i] for i in rows]))
    return target, pool


@dataclass
class HeldOut:
    """A domain held out as the target; the pool is every other document of the corpus. The
    budget k is the number of the domain's documents left in the pool."""

    domain: str
    target: list[Record]
    pool: Shards
    limit: int | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> list[Record]:
        return [record for _, records in self.pool for record in records]

    @property
    def k(self) -> int:
        return sum(record.get("domain") == self.domain for record in self.records)

    @property
    def target_texts(self) -> list[str]:
        return [record["text"] for record in self.target]

    def header(self) -> str:
        size = len(self.records)
        limit = f", at most {self.limit} per domain" if self.limit else ""
        return (
            f"domain {self.domain} | target {len(self.target)} docs | pool {size} docs{limit} | "
            f"k = {self.k} docs | random expected precision {self.k / size:.3f}"
        )

    def summary(self) -> dict[str, Any]:
        size = len(self.records)
        return {
            "domain": self.domain,
            "target_docs": len(self.target),
            "pool_docs": size,
            "k": self.k,
            "random_expected_precision": self.k / size,
            "limit_per_domain": self.limit,
        }


def held_out(args: argparse.Namespace) -> HeldOut:
    """The split of --corpus by --domain, --target-size, --seed and --limit-per-domain (0 or
    None: no limit)."""
    limit = args.limit_per_domain or None
    shards = load_corpus(args.corpus)
    target, pool = split(shards, args.domain, args.target_size, args.seed, limit)
    settings = {
        "corpus": str(args.corpus.resolve()),
        "domain": args.domain,
        "target_size": args.target_size,
        "seed": args.seed,
        "limit_per_domain": limit,
    }
    held = HeldOut(args.domain, target, pool, limit, settings)
    if held.k == 0:
        raise SystemExit(f"no '{args.domain}' docs left in the pool; lower --target-size")
    return held


# --- work folder ------------------------------------------------------------------------------


@contextmanager
def work_folder(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """`workdir` (created if missing), else a temporary folder removed on leaving."""
    if workdir is not None:
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


@dataclass(frozen=True)
class Workspace:
    """A work folder of a held-out split: pool/ (one jsonl.gz per domain file), the target
    jsonl and runs/<name>/ (one pipeline output per run)."""

    root: Path
    target_name: str = "target.jsonl"

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def target(self) -> Path:
        return self.root / self.target_name

    def prepare(self, held: HeldOut, resume: bool = False) -> None:
        """Write the pool and the target, replacing pool/ and runs/; with `resume`, an existing
        pool and runs are kept (where split.json names another split, that is an error)."""
        if resume and self.pool.exists():
            self.check_split(held.settings)
        else:
            shutil.rmtree(self.pool, ignore_errors=True)
            if not resume:
                shutil.rmtree(self.runs, ignore_errors=True)
            for name, records in held.pool:
                if records:
                    write_jsonl(self.pool / f"{name}.jsonl.gz", records)
            (self.root / "split.json").write_text(json.dumps(held.settings) + "\n")
        write_jsonl(self.target, held.target)

    def check_split(self, settings: dict[str, Any]) -> None:
        path = self.root / "split.json"
        previous = json.loads(path.read_text()) if path.exists() else settings
        if previous != settings:
            raise SystemExit(f"--resume: {self.root} holds another split ({previous})")


# --- Ray --------------------------------------------------------------------------------------


def setup_logging(verbose: bool = False) -> None:
    if not verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # "Dataset ... finished" lines
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )


def quiet_ray_data() -> None:
    """No progress bars or execution plans from Ray Data in the benchmark's output."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A local Ray on 127.0.0.1 with `num_cpus` CPUs (default: the machine's), no dashboard."""
    import ray

    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    quiet_ray_data()
    try:
        yield
    finally:
        ray.shutdown()


# --- pipeline runs ----------------------------------------------------------------------------


def progress(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


def contains(whole: Any, part: Any) -> bool:
    """Every key of `part` is in `whole` with the same value (recursively into mappings)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and contains(whole[key], value) for key, value in part.items()
        )
    return whole == part


def finished_manifest(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished run in raw's output whose configuration has every setting
    of `raw` (keys distsel added since then, with their defaults, do not matter)."""
    path = Path(raw["output"]["path"]) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if contains(manifest.get("config"), raw) else None


def run_method(
    name: str,
    raw: dict[str, Any],
    domain: str,
    pool_size: int = 0,
    resume: bool = False,
    interrupted: bool = False,
) -> dict[str, Any]:
    """One pipeline run of configuration `raw` (or, with `resume`, its finished manifest read
    back); `interrupted`: its output already held an unfinished run, which this one resumes.
    A failure is reported in the result (key `error`), so the other runs go on."""
    import distsel
    from distsel.core.config import parse_config

    began = time.perf_counter()
    manifest = finished_manifest(raw) if resume else None
    reused = manifest is not None
    try:
        if manifest is None:
            manifest = distsel.run(parse_config(raw, f"{name} configuration")).manifest
    except Exception as error:
        traceback.print_exc()
        return {
            "method": name,
            "config": raw,
            "error": f"{type(error).__name__}: {error}",
            "seconds": round(time.perf_counter() - began, 3),
        }
    result = manifest_result(name, raw, manifest, domain, pool_size)
    # --resume: the finished run's manifest was read back (its wall s is that run's), or an
    # interrupted run was resumed (its wall s counts only the resumed part)
    result.update(reused_manifest=reused, resumed_partial_run=not reused and interrupted)
    return result


def manifest_result(
    name: str, raw: dict[str, Any], manifest: dict[str, Any], domain: str, pool_size: int
) -> dict[str, Any]:
    """What a finished run's manifest says of its selection; precision on `domain`."""
    selected = manifest["selected_docs"]
    by_group = manifest["by_group"] or {}
    hits = by_group.get("selected", {}).get(domain, 0)
    kl = (manifest.get("evaluation") or {}).get("kl") or {}
    result: dict[str, Any] = {
        "method": name,
        "output": raw["output"]["path"],
        "config": raw,
        "selected_docs": selected,
        "selected_tokens_approx": manifest.get("selected_tokens_approx"),
        "hits": hits,
        "precision": hits / selected if selected else None,
        "kl_reduction": kl.get("kl_reduction"),
        "kl": kl,
        "wall_seconds": manifest["wall_seconds"],
        "stages": manifest["stages"],
        "pool_by_group": by_group.get("pool"),
        "selected_by_group": by_group.get("selected"),
        "accepted_docs": manifest.get("accepted_docs"),
        "rejected_docs": manifest.get("rejected_docs"),
    }
    result.update(evaluated(raw["select"]["method"], manifest, pool_size))
    return result


def evaluated(method: str, manifest: dict[str, Any], pool_size: int) -> dict[str, Any]:
    """The share of the pool whose influence a run computed, with the proxy and the Quad
    section where the run has them."""
    if method == "influence":
        summary = (manifest["stages"].get("influence") or {}).get("summary") or {}
        return {"evaluated_share": 1.0, "proxy": summary.get("proxy")}
    if method == "quad":
        section = manifest["quad"]
        share = section["influence_evaluated_docs"] / pool_size if pool_size else None
        return {"evaluated_share": share, "quad": section}
    return {"evaluated_share": 0.0}


def copy_scored(source: Path, destination: Path) -> None:
    """A run folder with `source`'s ingest and stage outputs but no selection or bandit state,
    so a second quad run skips embedding and clustering (their done markers travel along)."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(
        source,
        destination,
        ignore=lambda folder, names: [
            n
            for n in names
            if (Path(folder) == source and n in ("selected", "manifest.json", "report.html"))
            or (Path(folder) == source / "_state" and n == "quad")
        ],
    )


def read_parts(folder: Path, columns: list[str]) -> dict[str, list[Any]]:
    """`columns` over the parquet parts of a folder, in part order."""
    import pyarrow.parquet as pq

    found: dict[str, list[Any]] = {name: [] for name in columns}
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path, columns=columns)
        for name in columns:
            found[name] += table.column(name).to_pylist()
    return found


def read_column(folder: Path, column: str) -> dict[str, Any]:
    """id -> `column` over the parquet parts of a scores folder."""
    values = read_parts(folder, ["id", column])
    return dict(zip(values["id"], values[column], strict=True))


def read_selection(output: Path) -> dict[str, list[Any]]:
    """Ids, texts and domains of a run's selected/*.parquet, in part order."""
    return read_parts(output / "selected", ["id", "text", "domain"])


# --- evaluation proxies -----------------------------------------------------------------------


def eval_proxy_config(args: argparse.Namespace, pipeline_raw: dict[str, Any]) -> Any:
    """The pipeline proxy's settings, with --eval-train-tokens and --eval-tokenizer."""
    from distsel.core.config import ProxyConfig, parse_config

    proxy = parse_config(pipeline_raw, "evaluation proxy configuration").proxy
    fields = proxy.model_dump(exclude={"path"})
    fields.update(train_tokens=args.eval_train_tokens, tokenizer=args.eval_tokenizer)
    return ProxyConfig(**fields)


def evaluate_selection(
    texts: list[str], config: Any, seed: int, target_texts: list[str], control_texts: list[str]
) -> dict[str, Any]:
    """A fresh proxy trained on `texts`: its mean loss (nats/token) on the target and on the
    control texts."""
    from distsel.methods.proxy_model import document_losses, train_proxy

    model, tokenizer, info = train_proxy(texts, config, seed, "cpu")
    began = time.perf_counter()
    target = document_losses(model, tokenizer, target_texts, config.max_length)
    control = document_losses(model, tokenizer, control_texts, config.max_length)
    return {
        "target_loss": float(np.nanmean(target)),
        "pool_slice_loss": float(np.nanmean(control)),
        "target_docs_scored": int(np.isfinite(target).sum()),
        "pool_slice_docs_scored": int(np.isfinite(control).sum()),
        "loss_seconds": round(time.perf_counter() - began, 3),
        "train": info,
    }


def try_evaluate(name: str, texts: list[str], *args: Any) -> dict[str, Any]:
    """evaluate_selection, a failure reported under `error`."""
    progress(name, "training the evaluation proxy ...")
    try:
        return evaluate_selection(texts, *args)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def eval_key(ids: list[str], config: Any, seed: int) -> str:
    """What an evaluation proxy's loss depends on: the selection, its settings and the seed."""
    text = json.dumps([sorted(ids), config.model_dump(), seed], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_target_loss(
    name: str, cache: Path, selection: dict[str, list[Any]], config: Any, seed: int, target: list
) -> float:
    """The target loss of an evaluation proxy trained on `selection`, kept in `cache` (a JSON
    file) and reused while the selection, the settings and the seed stay the same."""
    key = eval_key(selection["id"], config, seed)
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") != key:
        progress(name, "training the evaluation proxy ...")
        evaluation = evaluate_selection(selection["text"], config, seed, target, target[:1])
        cached = {"key": key, "target_loss": evaluation["target_loss"]}
        cache.write_text(json.dumps(cached) + "\n")
    return cached["target_loss"]


def control_slice(records: list[Record], chosen: set[str], size: int, seed: int) -> list[Record]:
    """`size` pool records whose text is in no selection (seeded draw, pool order)."""
    rest = [i for i, record in enumerate(records) if record["text"] not in chosen]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rest), min(size, len(rest)), replace=False))
    return [records[rest[i]] for i in pick]


# --- flags ------------------------------------------------------------------------------------

REQUIRED = object()  # a flag default: the flag must be given
FLAG_TYPES: dict[str, Any] = {
    "corpus": Path,
    "target_size": "positive",
    "limit_per_domain": "count",
    "seed": int,
    "rows_per_part": "positive",
    "num_cpus": "positive",
    "workdir": Path,
    "json": Path,
}
FLAG_HELP = {
    "corpus": "folder of *.jsonl.gz, one domain per file",
    "domain": "domain held out as the target",
    "target_size": "held-out target documents",
    "limit_per_domain": "keep at most N pool docs per domain file (seeded sample); 0: no limit",
    "seed": "split, random keys, proxies",
    "rows_per_part": "input.rows_per_part",
    "num_cpus": "CPUs of the local Ray",
    "workdir": "keep pool, target and run outputs here (its pool/, runs/ and target are "
    "replaced); default: a temporary folder, removed at the end",
    "resume": "with --workdir: keep its pool and runs; a finished run (same configuration) is "
    "read back, not rerun; an interrupted one resumes from its done markers",
    "json": "also save the results here",
    "verbose": "distsel's progress log",
}
SWITCHES = ("resume", "verbose")


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_common_flags(
    parser: argparse.ArgumentParser, helps: dict[str, str] | None = None, **defaults: Any
) -> None:
    """Add the flags named by `defaults` (`corpus`, `domain`, `target_size`,
    `limit_per_domain`, `seed`, `rows_per_part`, `num_cpus`, `workdir`, `resume`, `json`,
    `verbose`), each with the given default (REQUIRED: no default, the flag must be given);
    `helps` replaces help texts."""
    types = {"positive": positive, "count": count}
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        help_text = (helps or {}).get(name, FLAG_HELP[name])
        if name in SWITCHES:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = FLAG_TYPES.get(name, str)
        options: dict[str, Any] = {"type": types.get(kind, kind), "help": help_text}
        if default is REQUIRED:
            options["required"] = True
        else:
            options["default"] = default
        parser.add_argument(flag, **options)


def add_eval_flags(parser: argparse.ArgumentParser, train_tokens: int) -> None:
    """--eval-train-tokens and --eval-tokenizer of the evaluation proxies."""
    group = parser.add_argument_group("evaluation proxies (one per selection)")
    group.add_argument("--eval-train-tokens", type=positive, default=train_tokens)
    group.add_argument(
        "--eval-tokenizer",
        choices=("minilm", "bpe"),
        default="minilm",
        help="minilm: one shared tokenizer, comparable losses (default); bpe: one per selection",
    )


def new_parser(doc: str, first_paragraph: bool = True) -> argparse.ArgumentParser:
    """A parser described by a script's docstring (its first paragraph, or all of it)."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if first_paragraph else doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# --- report -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def print_table(
    header: list[str], rows: list[list[str]], left: int = 1, title: str | None = None
) -> None:
    """A markdown table; its first `left` columns aligned left, the others right."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        aligned = [
            f"{cell:{'<' if i < left else '>'}{width}}"
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(aligned) + " |"

    if title:
        print(f"\n{title}")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def failed_row(result: dict[str, Any], columns: int) -> list[str]:
    """A table row for a failed run: its name, the error, dashes."""
    return [result["method"], f"failed: {result['error'][:60]}"] + ["-"] * (columns - 2)


def write_json(path: Path | None, data: Any) -> None:
    """Save `data` as indented JSON at `path` (folders made), when a path is given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results saved to {path}")
