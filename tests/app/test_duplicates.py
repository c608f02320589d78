"""Duplicate ids found group by group agree with a brute-force pass over every id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, write_jsonl

from distsel.app import duplicates, pipeline
from distsel.core.config import parse_config
from distsel.core.errors import InputError
from distsel.core.storage import Store


def write_parts(store: Store, parts: list[list[str]]) -> list[str]:
    names = []
    for index, ids in enumerate(parts):
        name = f"p{index:03d}.parquet"
        store.write_table(f"docs/{name}", pa.table({"id": ids, "text": ["x"] * len(ids)}))
        names.append(name)
    return names


def brute_force(parts: list[list[str]]) -> set[tuple[int, int, str, int, int]]:
    first: dict[str, tuple[int, int]] = {}
    later = set()
    for rank, ids in enumerate(parts):
        for row, doc_id in enumerate(ids):
            if doc_id in first:
                later.add((rank, row, doc_id, *first[doc_id]))
            else:
                first[doc_id] = (rank, row)
    return later


@pytest.mark.parametrize("groups", [1, 3, 16])
def test_groups_find_exactly_the_later_copies(tmp_path, groups):
    rng = np.random.default_rng(5)
    parts = [[f"doc-{v}" for v in rng.integers(0, 300, size=n)] for n in (50, 120, 0, 80)]
    store = Store(str(tmp_path))
    names = write_parts(store, parts)
    for rank, name in enumerate(names):
        duplicates.write_part_ids(store, name, rank, groups)
    found = set()
    for group in range(groups):
        table = duplicates.find_duplicates(store, names, group)
        found |= {tuple(row.values()) for row in table.to_pylist()}
    expected = brute_force(parts)
    assert expected, "the sample holds repeats"
    assert found == expected


def test_an_id_lands_in_the_same_group_in_any_order():
    ids = [f"id-{i}" for i in range(500)]
    groups = duplicates.id_groups(ids, 7)
    assert set(groups.tolist()) == set(range(7))
    assert duplicates.id_groups(ids[::-1], 7).tolist() == groups[::-1].tolist()


def test_group_count_grows_with_the_pool():
    assert duplicates.group_count(10) == 1
    assert duplicates.group_count(5_000_000) == 3
    assert duplicates.group_count(5 * 10**9) == 2_500
    assert duplicates.group_count(10**12) == duplicates.MAX_GROUPS


def duplicated_corpus(root) -> tuple[list, list]:
    first = [{"id": f"d{i}", "text": f"first shard text {i}"} for i in range(12)]
    second = [{"id": f"d{i}", "text": f"second shard text {i}"} for i in range(8, 20)]
    second.append({"id": "d15", "text": "a copy within the same shard"})
    write_jsonl(root / "corpus" / "a.jsonl", first)
    write_jsonl(root / "corpus" / "b.jsonl", second)
    return first, second


def test_later_copies_across_shards_are_quarantined_and_counted(ray_local, tmp_path):
    duplicated_corpus(tmp_path)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="all")
    raw["input"].update(id_field="id", rows_per_part=5)
    manifest = pipeline.run(parse_config(raw))

    assert manifest["input_docs"] == 25
    assert manifest["rejected_by_reason"] == {"duplicate_id": 5}
    assert manifest["accepted_docs"] == 20 == manifest["selected_docs"]
    assert [s["rejected"] for s in manifest["shards"]] == [0, 5]
    selected = pq.read_table(tmp_path / "out" / "selected")
    assert sorted(selected["id"].to_pylist()) == sorted(f"d{i}" for i in range(20))
    first_copies = {r["id"]: r["text"] for r in selected.to_pylist()}
    assert all(first_copies[f"d{i}"].startswith("first shard") for i in range(12))
    assert first_copies["d15"] == "second shard text 15"
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "duplicate_id.parquet").to_pylist()
    assert sorted(r["raw"].decode() for r in rejected) == ["d10", "d11", "d15", "d8", "d9"]
    assert all(r["reason"] == "duplicate_id" and r["shard"] == "b.jsonl" for r in rejected)

    again = pipeline.run(parse_config(raw))
    assert again["rejected_by_reason"] == {"duplicate_id": 5}, "a rerun reuses the check"


def test_strict_mode_refuses_a_duplicate_id(ray_local, tmp_path):
    duplicated_corpus(tmp_path)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="all")
    raw["input"].update(id_field="id", strict=True)
    with pytest.raises(InputError, match=r"b\.jsonl: id 'd8' appears again \(first in a\.jsonl\)"):
        pipeline.run(parse_config(raw))
