from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, cli_env, read_folder, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core.config import parse_config
from distsel.core.errors import DistselError, InputError

PARAGRAPHS = stdlib_paragraphs(120)


def make_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    news = [{"text": p, "domain": "news"} for p in PARAGRAPHS[:60]]
    code = [{"text": p, "domain": "code"} for p in PARAGRAPHS[60:100]]
    write_jsonl(corpus / "news.jsonl.gz", [*news[:30], b"{oops", *news[30:]], "gz")
    write_jsonl(corpus / "code.jsonl", [*code, {"text": ""}, [1]])
    pq.write_table(
        pa.table({"text": PARAGRAPHS[100:120], "domain": ["legal"] * 20}), corpus / "legal.parquet"
    )
    return corpus


def test_random_selection_end_to_end(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "out", method="random", budget={"docs": 25})
    raw["input"]["group_field"] = "domain"
    raw["stages"] = {"stats": {"pool_size": 2}}
    raw["output"]["columns"] = ["tokens_approx", "n_chars"]  # distsel's own, on request
    manifest = pipeline.run(parse_config(raw))

    assert manifest["input_docs"] == 60 + 1 + 40 + 2 + 20
    assert manifest["accepted_docs"] == 120
    assert manifest["rejected_docs"] == 3
    assert manifest["rejected_by_reason"] == {
        "empty_text": 1,
        "invalid_json": 1,
        "not_an_object": 1,
    }
    assert manifest["selected_docs"] == 25
    assert manifest["by_group"]["pool"] == {"code": 40, "legal": 20, "news": 60}
    assert sum(manifest["by_group"]["selected"].values()) == 25
    assert manifest["stages"]["stats"]["rows"] == 120

    selected = read_folder(tmp_path / "out" / "selected")
    assert selected.num_rows == 25 == len(set(selected.column("id").to_pylist()))
    assert manifest["selected_tokens_approx"] == sum(selected.column("tokens_approx").to_pylist())
    texts = {p for p in PARAGRAPHS}
    for row in selected.to_pylist():
        assert row["text"] in texts
        assert row["n_chars"] == len(row["text"]), "stage scores stay aligned with their rows"
    rejected = read_folder(tmp_path / "out" / "rejected")
    pairs = zip(rejected["shard"].to_pylist(), rejected["reason"].to_pylist(), strict=True)
    assert sorted(pairs) == [
        ("code.jsonl", "empty_text"),
        ("code.jsonl", "not_an_object"),
        ("news.jsonl.gz", "invalid_json"),
    ]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["selected_docs"] == 25 and on_disk["versions"]["ray"]


def test_token_budget_is_never_exceeded(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "out", method="random", budget={"tokens": 3000})
    manifest = pipeline.run(parse_config(raw))
    assert 2500 < manifest["selected_tokens_approx"] <= 3000


def test_same_seed_same_selection_and_rerun_resumes(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    ids = []
    for output, seed in (("a", 1), ("b", 1), ("c", 2)):
        raw = base_config([corpus], tmp_path / output, method="random", budget={"docs": 30})
        raw["seed"] = seed
        pipeline.run(parse_config(raw))
        ids.append(sorted(read_folder(tmp_path / output / "selected").column("id").to_pylist()))
    assert ids[0] == ids[1] and ids[0] != ids[2]

    again = pipeline.run(parse_config({**raw, "seed": 1}))
    assert again["stages"]["ingest"]["resumed_shards"] == 3
    assert sorted(read_folder(tmp_path / "c" / "selected").column("id").to_pylist()) == ids[0]


def test_stage_pool_scores_parts_once_and_reruns_skip_them(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "out")
    raw["input"]["rows_per_part"] = 16
    raw["stages"] = {"stats": {"pool_size": 2, "batch_size": 7}}
    first = pipeline.run(parse_config(raw))
    parts = sorted((tmp_path / "out" / "scores" / "stats").glob("*.parquet"))
    assert len(parts) == 4 + 3 + 2  # 60 news, 40 code, 20 legal rows in parts of 16
    assert first["stages"]["stats"]["resumed_parts"] == 0
    stamps = [p.stat().st_mtime_ns for p in parts]
    second = pipeline.run(parse_config(raw))
    assert second["stages"]["stats"]["resumed_parts"] == len(parts)
    assert [p.stat().st_mtime_ns for p in parts] == stamps, "finished parts are not rewritten"
    assert second["selected_docs"] == first["selected_docs"] == 120


def test_score_then_select_phases_equal_one_whole_run(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "phased", method="dsir", budget={"docs": 20})
    raw["target"] = {"paths": [str(corpus / "legal.parquet")]}
    config = parse_config(raw)
    with pytest.raises(DistselError, match="selection only: ingest: 3 of 3 not done yet"):
        pipeline.run(config, phase="select")

    scoring = pipeline.run(config, phase="score")
    out = tmp_path / "phased"
    assert scoring["stages"]["dsir"]["rows"] == scoring["accepted_docs"] == 120
    assert json.loads((out / "scoring.json").read_text())["phase"] == "score"
    assert not (out / "manifest.json").exists() and not (out / "selected").exists()
    (out / "_state" / "dsir" / sorted(os.listdir(out / "scores" / "dsir"))[0]).with_suffix(
        ".parquet.json"
    ).unlink()
    with pytest.raises(DistselError, match="the dsir stage's parts: 1 of 3 not done yet"):
        pipeline.run(config, phase="select")

    pipeline.run(config, phase="score")
    phased = pipeline.run(config, phase="select")
    whole = pipeline.run(parse_config({**raw, "output": {"path": str(tmp_path / "whole")}}))
    assert phased["stages"]["dsir"]["resumed_parts"] == 3
    assert phased["selected_docs"] == whole["selected_docs"] == 20
    assert read_folder(out / "selected").equals(read_folder(tmp_path / "whole" / "selected"))


def test_strict_mode_stops_with_file_and_line(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus / "news.jsonl.gz"], tmp_path / "out")
    raw["input"]["strict"] = True
    with pytest.raises(InputError, match=r"news\.jsonl\.gz: line 31: invalid json"):
        pipeline.run(parse_config(raw))


def test_changed_input_settings_do_not_mix_into_an_old_output(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "out")
    pipeline.run(parse_config(raw))
    raw["input"]["rows_per_part"] = 5
    with pytest.raises(
        DistselError, match=r"another input configuration \(changed: input\.rows_per_part\)"
    ):
        pipeline.run(parse_config(raw))


def test_credentials_never_reach_the_manifest(ray_local, tmp_path):
    corpus = make_corpus(tmp_path)
    raw = base_config([corpus], tmp_path / "out")
    raw["input"]["storage_options"] = {"secret": "hunter2", "key": "AKIAFAKE", "anon": False}
    manifest = pipeline.run(parse_config(raw))
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "hunter2" not in text and "AKIAFAKE" not in text
    assert manifest["config"]["input"]["storage_options"] == {
        "secret": "***",
        "key": "***",
        "anon": False,
    }


def _cli_run(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distsel.app.cli", "run", str(config_path)],
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _big_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    for shard in range(8):
        records = [
            {
                "text": f"{PARAGRAPHS[(shard * 7 + i) % 120]} ({shard}-{i})",
                "domain": f"d{shard % 3}",
            }
            for i in range(100)
        ]
        write_jsonl(corpus / f"s{shard:02d}.jsonl", [*records, {"text": None}])
    return corpus


def _config_file(root: Path, corpus: Path, output: Path) -> Path:
    raw = base_config([corpus], output, method="random", budget={"docs": 500})
    raw["input"]["rows_per_part"] = 50
    raw["stages"] = {"stats": {"pool_size": 1, "batch_size": 10}}
    path = root / f"{output.name}.yaml"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def clean_cli_run(ray_local, tmp_path_factory) -> tuple[Path, Path]:
    """The corpus of the killed-run test and its uninterrupted run, made once."""
    root = tmp_path_factory.mktemp("clean-run")
    corpus = _big_corpus(root)
    clean = _cli_run(_config_file(root, corpus, root / "clean"))
    assert clean.wait(timeout=300) == 0, clean.stdout.read().decode()
    return corpus, root / "clean"


def _kill_once_marked(config: Path, markers: Path) -> None:
    """Start the run of `config`, and kill it (its process group) once `markers` holds a done
    marker."""
    victim = _cli_run(config)
    deadline = time.monotonic() + 180
    while not (markers.exists() and any(markers.glob("*.json"))):
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


@pytest.mark.slow
def test_a_run_killed_in_ingest_then_in_scoring_resumes_to_the_uninterrupted_result(
    tmp_path, clean_cli_run
):
    corpus, clean_output = clean_cli_run
    killed_output = tmp_path / "killed"
    config = _config_file(tmp_path, corpus, killed_output)
    for kill_when in ("ingest", "stats"):
        _kill_once_marked(config, killed_output / "_state" / kill_when)
        assert not (killed_output / "manifest.json").exists(), f"killed in {kill_when}"

    resumed = _cli_run(config)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    for folder, key in (("selected", "id"), ("rejected", "shard"), ("scores/stats", "id")):
        expected = read_folder(clean_output / folder)
        got = read_folder(killed_output / folder)
        assert got.num_rows == expected.num_rows > 0
        assert got.sort_by(key).equals(expected.sort_by(key)), folder
    manifest = json.loads((killed_output / "manifest.json").read_text())
    assert manifest["input_docs"] == 8 * 101 and manifest["rejected_docs"] == 8
    assert manifest["selected_docs"] == 500
