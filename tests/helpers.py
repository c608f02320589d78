"""Plain helpers shared by the test modules (no fixtures: those are in conftest.py).

tests/ is on sys.path (pyproject's `pythonpath`), so a module in any folder under it does
`from helpers import ...`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distsel"
# The data and schemas shared between the repository's checkouts, next to the repository.
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def jsonl_bytes(records: list[Any]) -> bytes:
    """Records (dicts, other JSON values, or raw bytes lines) as JSON Lines bytes."""
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def write_jsonl(path: Path, records: list[Any], compress: str | None = None) -> Path:
    """Write records (dicts, other JSON values, or raw bytes lines) as JSON Lines."""
    lines = jsonl_bytes(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        lines = gzip.compress(lines)
    elif compress == "zst":
        import zstandard

        lines = zstandard.ZstdCompressor().compress(lines)
    path.write_bytes(lines)
    return path


def stdlib_paragraphs(count: int) -> list[str]:
    """Real prose: paragraphs of the standard library's module docstrings."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        paragraphs += [p.strip() for p in (doc or "").split("\n\n") if len(p.strip()) > 40]
        if len(paragraphs) >= count:
            break
    assert len(paragraphs) >= count, "not enough stdlib text"
    return paragraphs[:count]


def base_config(inputs: list[Path | str], output: Path | str, **select: Any) -> dict[str, Any]:
    return {
        "input": {"paths": [str(p) for p in inputs]},
        "output": {"path": str(output)},
        "select": select or {"method": "all"},
    }


def pool_of(tokens: list[int], scores: dict[str, Any] | None = None) -> Any:
    """A one-part Pool of documents with these token counts (and score columns)."""
    import numpy as np

    from distsel.core.pool import Pool

    count = len(tokens)
    return Pool(
        parts=["p"],
        part_index=np.zeros(count, dtype=np.int64),
        row_index=np.arange(count),
        tokens=np.asarray(tokens, dtype=np.int64),
        random_key=np.arange(count, dtype=np.uint64),
        scores=dict(scores or {}),
    )


def tfidf_by_counting(texts: list[str], reference: list[str], buckets: int):
    """TF-IDF rows of hashed word uni- and bigrams from Python counts (log counts × IDF from
    `reference`, L2-normalised): the reference for the similarity stage's n-gram view."""
    from collections import Counter

    import numpy as np

    from distsel.algorithms.dsir import hashed_ngrams

    def log_counts(batch: list[str]) -> np.ndarray:
        matrix = np.zeros((len(batch), buckets))
        occurrences = zip(*hashed_ngrams(batch, buckets, 2), strict=True)
        for (doc, bucket), n in Counter(occurrences).items():
            matrix[doc, bucket] = np.log1p(n)
        return matrix

    seen = (log_counts(reference) > 0).sum(axis=0)
    weighted = log_counts(texts) * (np.log((1 + len(reference)) / (1 + seen)) + 1)
    return weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)


def read_folder(folder: Path):
    """The Parquet files of a run's output folder as one table (empty if there are none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(path) for path in sorted(folder.glob("*.parquet"))]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def cli_env(own_ray: bool = False) -> dict[str, str]:
    """The environment of a CLI subprocess: without instance metadata, on the test process's Ray
    when it has one (the `ray_local` fixture's: a run then starts no Ray, as on a cluster), else
    or with `own_ray` on a Ray of its own."""
    import ray

    joins = ray.is_initialized() and not own_ray
    address = ray.get_runtime_context().gcs_address if joins else ""
    return {
        **os.environ,
        "RAY_ADDRESS": address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, own_ray: bool = False):
    """`python -m distsel.app.cli ARGS` in a subprocess (`cli_env`); the completed process
    (text output captured)."""
    env = cli_env(own_ray)
    command = [sys.executable, "-m", "distsel.app.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------
# Torch


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Torch on `count` threads inside the block. Tiny models run fastest on one thread (and do
    not fight other processes for cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# S3: moto's server on loopback

# The dummy credentials of the `aws_env` fixture (conftest.py).
AWS_KEY, AWS_SECRET, AWS_REGION = "testing", "testing", "us-east-1"


class MotoServer:
    """moto's S3 server on 127.0.0.1 (a free port), which can be stopped and started again on
    the same port. moto keeps its buckets in process memory, so they survive a restart."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.running = True

    def stop(self) -> None:
        self._server.stop()  # werkzeug closes the listening socket: connections are refused
        self.running = False

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.running = True

    def refuses_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False


def s3_client(endpoint: str, key: str = AWS_KEY, secret: str = AWS_SECRET):
    """A boto3 S3 client for `endpoint`, with these credentials only."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=AWS_REGION,
    )


def s3_keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def s3_get(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# ---------------------------------------------------------------------------------------------
# Models


def train_tiny_llama(tokenizer: Any, texts: list[str], steps: int) -> tuple[Any, float]:
    """A 2-layer, width-32 Llama trained from seed 0 for `steps` AdamW steps on random 64-token
    windows of the texts' concatenated ids; float64, in eval mode, with its last step's loss."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(config)
    stream = torch.tensor([i for ids in tokenizer(texts)["input_ids"] for i in ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 65, (16,), generator=generator)
        batch = torch.stack([stream[s : s + 64] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.double().eval(), loss.item()


# ---------------------------------------------------------------------------------------------
# A small run (the CLI's and `distsel status`'s tests)


def write_small_run(root: Path, output: Path | str | None = None) -> Path:
    """Two shards of 60 standard-library paragraphs, a target of five of them, and a
    configuration (root/run.yaml) that selects 20 documents with DSIR, scoring `stats` too, in
    parts of 25 rows: 6 parts per stage. Returns the configuration's path."""
    texts = stdlib_paragraphs(120)
    write_jsonl(root / "corpus" / "a.jsonl", [{"text": t} for t in texts[:60]])
    write_jsonl(root / "corpus" / "b.jsonl", [{"text": t} for t in texts[60:]])
    target = write_jsonl(root / "target.jsonl", [{"text": t} for t in texts[:5]])
    config = {
        "input": {"paths": [str(root / "corpus")], "rows_per_part": 25},
        "target": {"paths": [str(target)]},
        "output": {"path": str(output or root / "out")},
        "select": {"method": "dsir", "budget": {"docs": 20}},
        "stages": {"stats": {}},
    }
    path = root / "run.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def min_label_components(first: Any, second: Any) -> tuple[list[int], list[int]]:
    """Reference connected components: min-label propagation over the edges until nothing
    changes. Every node that is not the smallest of its component, with that smallest node,
    sorted by node."""
    edges = list(zip([int(a) for a in first], [int(b) for b in second], strict=True))
    label = {node: node for edge in edges for node in edge}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            low = min(label[a], label[b])
            if label[a] != low or label[b] != low:
                label[a] = label[b] = low
                changed = True
    later = sorted(node for node, first in label.items() if node != first)
    return later, [label[node] for node in later]
