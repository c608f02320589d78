"""Work sized to the cluster: parts cut to about PARTS_PER_CORE per core from the shards'
estimated rows, pools as large as the cluster holds, and actor threads equal to actor CPUs."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, write_jsonl

from distsel.app import pipeline
from distsel.core import corpus
from distsel.core.config import InputConfig, parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.runner import StagePool
from distsel.core.stage import Resources, Stage


def shards_of(*paths) -> list[corpus.Shard]:
    return corpus.list_shards(InputConfig(paths=[str(p) for p in paths]))


@pytest.mark.parametrize("compress", [None, "gz", "zst"])
def test_rows_of_a_small_json_lines_shard_are_counted_exactly(tmp_path, compress) -> None:
    records = [{"text": f"document {i}"} for i in range(1234)]
    suffix = {"gz": ".gz", "zst": ".zst", None: ""}[compress]
    path = write_jsonl(tmp_path / f"a.jsonl{suffix}", records, compress=compress)
    (shard,) = shards_of(path)
    assert corpus.estimate_rows(shard, {}) == 1234
    unterminated = tmp_path / "b.jsonl"
    unterminated.write_bytes(b'{"text": "x"}\n{"text": "y"}')
    assert corpus.estimate_rows(shards_of(unterminated)[0], {}) == 2


def test_rows_of_a_large_shard_are_estimated_from_its_start(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "ESTIMATE_BYTES", 4 << 20)  # under the file's 16 MB of text
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("abcdefghij"), size=6)) for _ in range(5000)])
    records = [
        {"text": " ".join(rng.choice(words, size=int(n)))} for n in rng.integers(30, 200, 20_000)
    ]
    (shard,) = shards_of(write_jsonl(tmp_path / "big.jsonl.gz", records, compress="gz"))
    estimate = corpus.estimate_rows(shard, {})
    assert abs(estimate - 20_000) / 20_000 < 0.05, estimate

    many = [write_jsonl(tmp_path / "many" / f"{i:02d}.jsonl", records[i::12]) for i in range(12)]
    assert len(many) > corpus.ESTIMATE_SHARDS
    pooled = corpus.estimate_pool_rows(shards_of(tmp_path / "many"), {})
    assert abs(pooled - 20_000) / 20_000 < 0.02, pooled

    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["x"] * 777}), parquet)
    assert corpus.estimate_rows(shards_of(parquet)[0], {}) == 777


def test_part_size_gives_about_four_parts_per_core_within_bounds(tmp_path) -> None:
    one = shards_of(write_jsonl(tmp_path / "one.jsonl", [{"text": "t"}] * 8000))
    assert corpus.auto_rows_per_part(one, {}, cores=2) == 1000
    assert corpus.auto_rows_per_part(one, {}, cores=64) == corpus.MIN_ROWS_PER_PART
    assert corpus.auto_rows_per_part(one, {}, cores=0.1) == 2000
    many = [write_jsonl(tmp_path / "many" / f"{i}.jsonl", [{"text": "t"}]) for i in range(8)]
    shards = shards_of(tmp_path / "many")
    assert len(shards) == len(many)
    assert corpus.auto_rows_per_part(shards, {}, cores=2) == corpus.MAX_ROWS_PER_PART


def test_a_run_sizes_its_parts_to_the_cluster_and_a_resume_keeps_them(tmp_path) -> None:
    records = [{"text": f"document number {i}"} for i in range(1000)]
    corpus_path = write_jsonl(tmp_path / "pool.jsonl", records)
    config = parse_config(base_config([corpus_path], tmp_path / "out"))
    with LocalExecutor(cpus=1).active():
        first = pipeline.run(config)
    parts = sorted((tmp_path / "out" / "docs").glob("*.parquet"))
    assert first["stages"]["ingest"]["parts"] == len(parts) == 4  # 1000 rows / (4 × 1 core)
    assert [pq.read_metadata(p).num_rows for p in parts] == [250] * 4
    state = json.loads((tmp_path / "out" / "_state" / "part_size.json").read_text())
    assert state == {"rows_per_part": 250, "cluster_cpus": 1.0}

    for marker in (tmp_path / "out" / "_state" / "ingest").glob("*.json"):
        marker.unlink()
    with LocalExecutor(cpus=16).active():
        again = pipeline.run(config)
    assert again["stages"]["ingest"]["parts"] == 4, "a resumed run cuts the shards as before"
    assert again["selected_docs"] == first["selected_docs"] == 1000


def test_pools_are_as_large_as_the_cluster_holds_unless_set() -> None:
    executor = LocalExecutor(cpus=6)
    assert executor.pool_size(Resources(num_cpus=1)) == 6
    assert executor.pool_size(Resources(num_cpus=4)) == 1
    assert executor.pool_size(Resources(num_cpus=1, pool_size=3)) == 3
    assert executor.pool_size(Resources(num_cpus=1, num_gpus=1)) == 1, "no GPU: one actor"


class ThreadReport(Stage):
    """Reports, per row, torch's threads × 100 + the tokenizers' Rayon threads."""

    name = "thread_report"

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import torch

        threads = torch.get_num_threads() * 100 + int(os.environ.get("RAYON_NUM_THREADS", 0))
        return {"threads": np.full(batch.num_rows, threads)}


def test_actor_threads_equal_the_actors_cpus(ray_local) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    for cpus in (1, 2):
        pool = StagePool(ThreadReport(Resources(num_cpus=cpus)), "threads")
        try:
            (reported,) = pool.score([["a", "b"]])
        finally:
            pool.close()
        assert reported.tolist() == [cpus * 101] * 2
    assert math.isclose(ray_local.cluster_resources()["CPU"], 2)
