"""Multi-node behaviour on one machine: `ray.cluster_utils.Cluster` with a head without CPUs and
two one-CPU worker nodes, in a subprocess (tests/deploy/cluster_scenario.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import stdlib_paragraphs, write_jsonl

SCENARIO = Path(__file__).with_name("cluster_scenario.py")
PARTS = 6


def write_config(tmp_path: Path, name: str) -> Path:
    raw = {
        "input": {"paths": [str(tmp_path / "corpus" / "c.jsonl")], "rows_per_part": 15},
        "output": {"path": str(tmp_path / name)},
        "select": {"method": "random", "budget": {"docs": 40}},
        "stages": {"embed": {"batch_size": 5}},  # pool_size: as many as fit (2)
        "embed": {"max_length": 64},
    }
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(raw))
    return config


def scenario(tmp_path: Path, names: list[str], *flags: str) -> list[dict]:
    """Runs `names` one after another on one simulated cluster; the flags act on the last."""
    texts = stdlib_paragraphs(PARTS * 15)
    write_jsonl(tmp_path / "corpus" / "c.jsonl", [{"text": t} for t in texts])
    configs = [str(write_config(tmp_path, name)) for name in names]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, str(SCENARIO), *configs, *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[{")))


def embeddings(folder: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted((folder / "scores" / "embed").glob("*.parquet")):
        table = pq.read_table(path)
        for doc, vector in zip(
            table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True
        ):
            assert doc not in found, f"{doc} written twice"
            found[doc] = np.asarray(vector)
    return found


@pytest.mark.slow
def test_scoring_spreads_over_worker_nodes_and_survives_losing_one(tmp_path):
    clean, faulty = scenario(
        tmp_path, ["clean", "faulty"], "--remove-worker-after", "2", "--stage", "embed"
    )
    per_node = clean["manifest"]["stages"]["embed"]["parts_per_node"]
    assert set(per_node) == set(clean["workers"]), "both workers scored, the CPU-less head none"
    assert sum(per_node.values()) == PARTS

    assert faulty["removed"] == [faulty["workers"][1]]
    reference, survived = embeddings(tmp_path / "clean"), embeddings(tmp_path / "faulty")
    assert sorted(survived) == sorted(reference), "no document lost"
    for doc, vector in reference.items():
        np.testing.assert_allclose(survived[doc], vector, atol=1e-5)
    for key in ("accepted_docs", "selected_docs", "selected_tokens_approx"):
        assert faulty["manifest"][key] == clean["manifest"][key]
    chosen = [
        pq.read_table(tmp_path / n / "selected")["id"].to_pylist() for n in ("clean", "faulty")
    ]
    assert sorted(chosen[0]) == sorted(chosen[1])
