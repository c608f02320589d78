"""End to end over the real corpora in ../shared/data (skipped only where the folder is absent)."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from helpers import SHARED_DATA, base_config

from distsel.app import pipeline
from distsel.core.config import parse_config

CORPUS = SHARED_DATA / "corpus"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is absent"),
]


def count_input(files):
    lines, domains = 0, Counter()
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    lines += 1
                    domains[json.loads(line)["domain"]] += 1
    return lines, domains


def test_random_selection_over_the_shared_corpus(ray_local, tmp_path, capsys):
    raw = base_config([CORPUS], tmp_path / "out", method="random", budget={"docs": 5000})
    raw["input"]["group_field"] = "domain"
    began = time.perf_counter()
    manifest = pipeline.run(parse_config(raw))
    wall = time.perf_counter() - began

    lines, domains = count_input(sorted(CORPUS.glob("*.jsonl.gz")))
    assert manifest["input_docs"] == lines
    assert manifest["accepted_docs"] + manifest["rejected_docs"] == lines
    assert manifest["by_group"]["pool"] == dict(sorted(domains.items()))
    assert manifest["selected_docs"] == 5000
    selected = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out/selected").glob("*"))
    assert selected == 5000
    with capsys.disabled():
        print(f"\n[e2e] {lines:,} docs from {CORPUS} in {wall:.1f} s (Ray already up)")
