"""The Python API: distsel.select on Ray Datasets, paths and dicts; distsel.run on configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

import distsel
from distsel.core.executor import LocalExecutor

PROSE = stdlib_paragraphs(80)
RECIPES = [
    f"Stir the {food} into the pan, then bake the {food} for {minutes} minutes."
    for food in ("onions", "apples", "carrots", "pears", "leeks")
    for minutes in (10, 20, 30, 40)
]


def documents() -> list[dict]:
    rows = [{"text": p, "source": "stdlib", "n": i} for i, p in enumerate(PROSE[:60])]
    return rows + [
        {"text": r, "source": "kitchen", "n": 100 + i} for i, r in enumerate(RECIPES[:10])
    ]


@pytest.mark.slow  # Ray Data reads and writes
def test_select_takes_a_ray_dataset_and_returns_its_rows(ray_local):
    import ray

    chosen = distsel.select(
        ray.data.from_items(documents()),
        method="dsir",
        target=RECIPES[10:],
        budget={"docs": 10},
    )
    rows = chosen.take_all()
    assert len(rows) == 10
    assert set(rows[0]) == {"id", "text", "source", "n", "dsir_log_weight_per_ngram"}
    assert {row["source"] for row in rows} == {"kitchen"}, "the recipes rank first"
    by_text = {d["text"]: d for d in documents()}
    assert all(by_text[row["text"]]["n"] == row["n"] for row in rows), "fields stay with rows"


@pytest.mark.slow  # Ray Data reads and writes
def test_select_with_an_output_resumes_and_keeps_it(ray_local, tmp_path):
    output = tmp_path / "out"
    first = distsel.select(
        iter(documents()),
        method="classifier",
        target=RECIPES[10:],
        budget={"docs": 8},
        output=str(output),
    )
    ids = sorted(row["id"] for row in first.take_all())
    again = distsel.select(
        iter(documents()),
        method="classifier",
        target=RECIPES[10:],
        budget={"docs": 8},
        output=str(output),
    )
    assert sorted(row["id"] for row in again.take_all()) == ids
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["resumed_shards"] == 1
    assert manifest["stages"]["classifier"]["fit_reused"] is True


@pytest.mark.slow  # Ray Data reads and writes
def test_select_takes_paths_options_and_a_dataset_target(ray_local, tmp_path):
    import ray

    corpus = write_jsonl(tmp_path / "corpus" / "a.jsonl", documents())
    chosen = distsel.select(
        [corpus],
        method="dsir",
        target=ray.data.from_items([{"text": r} for r in RECIPES[10:]]),
        budget={"tokens": 400},
        sampling="gumbel",  # an option of the method: select.dsir.sampling
        seed=3,  # a section of the configuration
    )
    rows = chosen.take_all()
    assert 0 < sum(len(row["text"]) / 4 for row in rows) <= 400 + len(rows)


def test_run_takes_a_mapping_or_a_file_and_returns_the_manifest(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents())
    raw = base_config([corpus], tmp_path / "out", method="random", budget={"docs": 5})
    with LocalExecutor().active():
        result = distsel.run(raw)
        path = tmp_path / "run.yaml"
        path.write_text(json.dumps({**raw, "output": {"path": str(tmp_path / "again")}}))
        again = distsel.run(path)
    assert result.manifest["selected_docs"] == again.manifest["selected_docs"] == 5
    assert result.selected == f"{tmp_path / 'out'}/selected"


def test_bad_data_is_a_clear_error():
    with pytest.raises(distsel.DistselError, match="Ray Dataset, paths or dicts"):
        distsel.select([1, 2], method="random", budget={"docs": 1})


def test_long_target_texts_are_texts_not_paths(tmp_path):
    from distsel.app.api import _target_paths

    long_text = "A question about fractions, " * 40  # longer than any file name may be
    (staged,) = _target_paths([long_text, "short\0text"], str(tmp_path), "text")
    lines = Path(staged).read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == [long_text, "short\0text"]


def test_select_takes_a_dedup_section(ray_local):
    """dedup= is a section: the case- and whitespace-changed copies are never selected, even
    with a budget of every distinct document."""
    docs = [{"text": p, "n": i} for i, p in enumerate(PROSE[:30])]
    copies = [{"text": "  ".join(p.upper().split()), "n": 100 + i} for i, p in enumerate(PROSE[:5])]
    chosen = distsel.select(
        [*docs, *copies], method="random", budget={"docs": 30}, dedup={"method": "minhash"}
    )
    assert sorted(row["n"] for row in chosen.take_all()) == list(range(30))
