"""Outputs a user can trust: shards without documents, changed shards, scores that follow the
fit they were made under, damaged parts, and secrets in URLs (issue 23's defects)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, read_folder, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.app.manifest import credentials
from distsel.core.config import parse_config
from distsel.core.errors import DistselError
from distsel.core.executor import LocalExecutor

PARAGRAPHS = stdlib_paragraphs(200)
TINY_PROXY = {
    "hidden": 32,
    "layers": 1,
    "heads": 4,
    "vocab_size": 512,
    "max_length": 64,
    "batch_size": 8,
    "train_tokens": 20_000,
    "sample_docs": 200,
}


def shards(folder: Path, count: int, per_shard: int = 20) -> list[Path]:
    """`count` shards of stdlib prose, with a few 'recipe' lines in each (the target's kind)."""
    paths = []
    for index in range(count):
        rows = [
            {"text": PARAGRAPHS[(index * per_shard + i) % len(PARAGRAPHS)] + f" [{index}.{i}]"}
            for i in range(per_shard - 2)
        ]
        rows += [
            {"text": f"Stir {index} onions into the pan {i}, then bake them for {i} minutes."}
            for i in range(2)
        ]
        paths.append(write_jsonl(folder / f"s{index}.jsonl", rows))
    return paths


@pytest.fixture(scope="module")
def tiny_proxy(tmp_path_factory) -> Path:
    """A tiny proxy LM, trained once (proxy.path): the influence stage still fits per pool."""
    from distsel.core.config import ProxyConfig
    from distsel.methods.proxy import train_on_cluster

    folder = tmp_path_factory.mktemp("proxy") / "proxy"
    with LocalExecutor().active():
        train_on_cluster(PARAGRAPHS[:100], ProxyConfig(**TINY_PROXY), 0, str(folder))
    return folder


def config_for(inputs: Path, output: Path, target: Path, *stages: str, proxy=None, **select):
    raw = base_config([inputs], output, **(select or {"method": "random", "budget": {"docs": 10}}))
    raw["input"]["rows_per_part"] = 10
    raw["target"] = {"paths": [str(target)]}
    raw["stages"] = {stage: {} for stage in stages}
    if "influence" in stages:
        raw["proxy"] = {**TINY_PROXY, "path": str(proxy)}
        raw["stages"]["influence"] = {"num_cpus": 1, "pool_size": 1}
    return parse_config(raw)


def target_file(folder: Path) -> Path:
    recipes = [f"Bake the {food} for {m} minutes." for food in ("pears", "leeks") for m in (5, 9)]
    return write_jsonl(folder / "target.jsonl", [{"text": t} for t in recipes])


def scores_by_id(output: Path, stage: str) -> dict[str, list]:
    """The stage's scores of every document of the run's current input, by id."""
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["stages"][stage]["rows"] == manifest["accepted_docs"]
    current = {shard["shard"] for shard in manifest["shards"]}
    markers = [json.loads(m.read_text()) for m in (output / "_state" / "ingest").glob("*.json")]
    parts = sorted(p for m in markers if m["shard"] in current for p in m["parts"])
    table = pa.concat_tables([pq.read_table(output / "scores" / stage / p) for p in parts])
    ids = table.column("id").to_pylist()
    columns = [c for c in table.column_names if c != "id"]
    return {i: [table.column(c)[n].as_py() for c in columns] for n, i in enumerate(ids)}


def assert_same_scores(a: dict[str, list], b: dict[str, list]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            np.testing.assert_allclose(
                np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=1e-5, atol=1e-6
            )


# --- 1. shards with no accepted rows -------------------------------------------------------


@pytest.mark.slow  # on Ray
def test_shards_without_accepted_rows_count_and_the_run_goes_on(ray_local, tmp_path):
    inputs = tmp_path / "in"
    write_jsonl(inputs / "good.jsonl", [{"text": p} for p in PARAGRAPHS[:30]])
    (inputs / "empty.jsonl").write_bytes(b"")
    (inputs / "blank.jsonl").write_bytes(b"\n\n   \n")
    write_jsonl(inputs / "bad.jsonl", [{"other": 1}, {"text": 5}, {"text": None}])
    pq.write_table(pa.table({"text": [1, 2, 3]}), inputs / "ints.parquet")
    config = parse_config(
        base_config([inputs], tmp_path / "out", method="random", budget={"docs": 10})
    )
    for _ in range(2):  # the rerun resumes
        manifest = pipeline.run(config)
        assert manifest["selected_docs"] == 10
        assert manifest["accepted_docs"] == 30
        assert manifest["input_docs"] == manifest["accepted_docs"] + manifest["rejected_docs"]
        by_shard = {s["shard"]: s for s in manifest["shards"]}
        assert by_shard["empty.jsonl"]["docs_in"] == 0
        assert by_shard["bad.jsonl"]["rejected"] == 3
        assert by_shard["ints.parquet"]["rejected"] == 3


# --- 2. a changed shard ----------------------------------------------------------------------


@pytest.mark.slow
def test_lines_appended_to_a_shard_are_read_on_rerun(tmp_path):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    paths = shards(inputs, 3)
    config = config_for(inputs, tmp_path / "out", target, "classifier", method="all")
    first = local_run(config)
    added = [{"text": f"Appended paragraph {i}: " + PARAGRAPHS[150 + i]} for i in range(20)]
    with paths[1].open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in added)
    second = local_run(config)
    assert second["accepted_docs"] == first["accepted_docs"] + 20
    assert second["selected_docs"] == first["selected_docs"] + 20
    texts = set(read_folder(tmp_path / "out" / "selected").column("text").to_pylist())
    assert {row["text"] for row in added} <= texts
    clean = local_run(config_for(inputs, tmp_path / "clean", target, "classifier", method="all"))
    assert clean["accepted_docs"] == second["accepted_docs"]
    assert_same_scores(
        scores_by_id(tmp_path / "out", "classifier"), scores_by_id(tmp_path / "clean", "classifier")
    )


def local_run(config, **kwargs):
    """A run on the LocalExecutor (in this process): the fit, damage and output checks below do
    not depend on the executor, and Ray's actor pools would cost most of their time."""
    with LocalExecutor().active():
        return pipeline.run(config, **kwargs)


# --- 3. scores follow the fit ----------------------------------------------------------------

# every stage that fits in `prepare`; the embedding model's and the proxy's are slow on a CPU
FITTED = [
    pytest.param(("dsir", "classifier"), id="dsir+classifier"),
    pytest.param(("cluster", "similarity", "betr"), id="embedding", marks=pytest.mark.slow),
    pytest.param(("influence",), id="influence", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("stages", FITTED)
def test_scores_follow_the_fit_when_a_shard_is_removed(request, tmp_path, stages):
    """Remove one shard of eight: every part is scored under the fit of the seven, as in a
    clean run of them."""
    proxy = request.getfixturevalue("tiny_proxy") if "influence" in stages else None
    inputs, target = tmp_path / "in", target_file(tmp_path)
    paths = shards(inputs, 8, per_shard=12)
    local_run(config_for(inputs, tmp_path / "out", target, *stages, proxy=proxy))
    paths[-1].unlink()
    resumed = local_run(config_for(inputs, tmp_path / "out", target, *stages, proxy=proxy))
    local_run(config_for(inputs, tmp_path / "seven", target, *stages, proxy=proxy))
    for stage in stages:
        assert resumed["stages"][stage]["fit_reused"] is False
        found, clean = (scores_by_id(tmp_path / out, stage) for out in ("out", "seven"))
        assert_same_scores(found, clean)


def test_scores_follow_the_fit_when_a_shard_is_added(tmp_path):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    paths = shards(inputs, 8, per_shard=12)
    moved = paths[-1].rename(tmp_path / paths[-1].name)
    local_run(config_for(inputs, tmp_path / "out", target, "classifier"))
    moved.rename(paths[-1])
    local_run(config_for(inputs, tmp_path / "out", target, "classifier"))
    local_run(config_for(inputs, tmp_path / "eight", target, "classifier"))
    assert_same_scores(
        scores_by_id(tmp_path / "out", "classifier"), scores_by_id(tmp_path / "eight", "classifier")
    )


def test_scores_follow_the_target_files_contents(tmp_path):
    """The same target path with other examples: the fit and every part's scores are redone."""
    inputs, target = tmp_path / "in", target_file(tmp_path)
    shards(inputs, 3)
    local_run(config_for(inputs, tmp_path / "out", target, "dsir", "classifier"))
    write_jsonl(target, [{"text": p} for p in PARAGRAPHS[180:190]])
    resumed = local_run(config_for(inputs, tmp_path / "out", target, "dsir", "classifier"))
    local_run(config_for(inputs, tmp_path / "clean", target, "dsir", "classifier"))
    for stage in ("dsir", "classifier"):
        assert resumed["stages"][stage]["fit_reused"] is False
        found, clean = (scores_by_id(tmp_path / out, stage) for out in ("out", "clean"))
        assert_same_scores(found, clean)


# --- damaged parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["docs", "scores/dsir"])
def test_a_truncated_part_is_named_and_a_rerun_repairs_it(tmp_path, folder):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    shards(inputs, 3)
    config = config_for(
        inputs, tmp_path / "out", target, "dsir", method="dsir", budget={"docs": 10}
    )
    local_run(config)
    selected = read_folder(tmp_path / "out" / "selected").column("id").to_pylist()
    part = sorted((tmp_path / "out" / folder).glob("*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:-40])
    shard = part.name.split("-")[0]  # the selection-only phase names the shard to read again
    with pytest.raises(DistselError, match=f"{part.name}|{shard}"):
        local_run(config, phase="select")
    local_run(config)
    pq.read_table(part)  # rewritten whole
    assert read_folder(tmp_path / "out" / "selected").column("id").to_pylist() == selected


def test_a_corrupt_part_of_the_same_size_is_named(tmp_path):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    shards(inputs, 2)
    config = config_for(
        inputs, tmp_path / "out", target, "dsir", method="dsir", budget={"docs": 10}
    )
    local_run(config)
    part = sorted((tmp_path / "out" / "scores" / "dsir").glob("*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[-12:-8] = b"\xff\xff\xff\x7f"  # the footer's length
    part.write_bytes(bytes(data))
    with pytest.raises(DistselError, match=f"{part.name}: unreadable Parquet"):
        local_run(config)


# --- 5. secrets in URLs ----------------------------------------------------------------------


def test_a_password_in_an_endpoint_url_never_reaches_the_manifest(tmp_path):
    inputs = tmp_path / "in"
    write_jsonl(inputs / "a.jsonl", [{"text": p} for p in PARAGRAPHS[:20]])
    raw = base_config([inputs], tmp_path / "out", method="random", budget={"docs": 5})
    endpoint = "http://alice:pa55word@127.0.0.1:9000/"
    raw["input"]["storage_options"] = {"endpoint_url": endpoint, "anon": False}
    config = parse_config(raw)
    assert {"alice:pa55word", "pa55word"} <= set(credentials(config))
    manifest = local_run(config)
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "pa55word" not in text and "alice" not in text
    options = manifest["config"]["input"]["storage_options"]
    assert options["endpoint_url"] == "http://***@127.0.0.1:9000/"


# --- training-ready output -------------------------------------------------------------------


def test_selected_holds_the_input_fields_and_the_score_it_ranked_by(tmp_path):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    rows = [{"meta": i, "text": p, "source": "stdlib"} for i, p in enumerate(PARAGRAPHS[:40])]
    write_jsonl(inputs / "a.jsonl", rows)
    config = config_for(
        inputs, tmp_path / "out", target, "embed", method="classifier", budget={"docs": 8}
    )
    local_run(config)
    selected = read_folder(tmp_path / "out" / "selected")
    assert selected.column_names == ["id", "text", "meta", "source", "classifier_score"]
    scores = read_folder(tmp_path / "out" / "scores" / "classifier")
    best = sorted(scores.column("classifier_score").to_pylist(), reverse=True)[:8]
    assert sorted(selected.column("classifier_score").to_pylist(), reverse=True) == best


@pytest.mark.parametrize("output_format", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_json_lines_output_replaces_the_parquet_selection(tmp_path, output_format):
    import gzip

    import zstandard

    inputs, target = tmp_path / "in", target_file(tmp_path)
    shards(inputs, 2)
    parquet = config_for(inputs, tmp_path / "out", target, method="random", budget={"docs": 12})
    local_run(parquet)
    expected = read_folder(tmp_path / "out" / "selected").to_pylist()
    raw = parquet.model_dump(mode="json")
    raw["output"]["format"] = output_format
    manifest = local_run(parse_config(raw))
    folder = tmp_path / "out" / "selected"
    assert not list(folder.glob("*.parquet")), "the old format's files are removed"
    found = []
    for path in sorted(folder.glob(f"*.{output_format}")):
        data = path.read_bytes()
        if output_format.endswith(".gz"):
            data = gzip.decompress(data)
        elif output_format.endswith(".zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        found += [json.loads(line) for line in data.splitlines()]
    assert len(found) == manifest["selected_docs"] == 12
    assert found == expected
    assert manifest["evaluation"]["ngram_lm"]["xent_reduction"] is not None


def test_an_unknown_output_column_is_named(tmp_path):
    inputs, target = tmp_path / "in", target_file(tmp_path)
    shards(inputs, 1)
    config = config_for(inputs, tmp_path / "out", target, method="random", budget={"docs": 5})
    raw = config.model_dump(mode="json")
    raw["output"]["columns"] = ["embeddings"]
    with pytest.raises(DistselError, match="output.columns: no column embeddings"):
        local_run(parse_config(raw))
