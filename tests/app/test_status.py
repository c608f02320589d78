"""`distsel status OUTPUT` on real outputs: a finished run, the same run partly scored (done
markers removed, as a killed run leaves it), during ingest, failed; and on S3 (moto's server).
The runs are real pipeline runs on a LocalExecutor (everything in this process, no Ray)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import run_cli, write_small_run

from distsel.app import pipeline, run_record, status
from distsel.core.config import load_config
from distsel.core.errors import DistselError, InputError
from distsel.core.executor import LocalExecutor


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The output of a finished run: 2 shards, 6 parts, stages stats and dsir, 20 selected."""
    root = tmp_path_factory.mktemp("finished")
    with LocalExecutor().active():
        pipeline.run(load_config(write_small_run(root)))
    return root / "out"


@pytest.fixture
def output(finished, tmp_path) -> Path:
    """A copy of the finished output for one test to change."""
    return Path(shutil.copytree(finished, tmp_path / "out"))


def dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(process.stdout)


def record(output: Path, **fields) -> dict:
    now = time.time()
    written = {
        "state": "running",
        "phase": "all",
        "stages": ["stats", "dsir"],
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": now - 200,
        "heartbeat": now - 5,
        **fields,
    }
    (output / "_state" / "run.json").write_text(json.dumps(written))
    return written


def partly_scored(output: Path, done: int = 4) -> float:
    """Remove manifest.json and the dsir markers of all but `done` parts; the dsir stage
    started 100 s ago and finished a part every 10 s. Returns the stage's start."""
    (output / "manifest.json").unlink()
    folder = output / "_state" / "dsir"
    markers = sorted(folder.glob("*.parquet.json"))
    assert len(markers) == 6
    for marker in markers[done:]:
        marker.unlink()
    began = time.time() - 100
    for path in (output / "_state" / "stats").glob("*.json"):  # scored before dsir began
        os.utime(path, (began - 50, began - 50))
    os.utime(folder / "_fingerprint.json", (began, began))
    for index, marker in enumerate(markers[:done]):
        os.utime(marker, (began + 10 * (index + 1),) * 2)
    return began


def test_a_finished_run_is_done_with_every_part_and_row(finished):
    found = status.collect(str(finished))
    assert found["phase"] == "done"
    assert found["detail"].endswith("manifest.json")
    ingest = found["ingest"]
    assert (ingest["shards_done"], ingest["shards_total"], ingest["parts"]) == (2, 2, 6)
    assert ingest["accepted"] == 120 and ingest["state"] == "done"
    assert [
        (s["name"], s["parts_done"], s["parts_total"], s["state"]) for s in found["stages"]
    ] == [
        ("stats", 6, 6, "done"),
        ("dsir", 6, 6, "done"),
    ]
    assert all(stage["rows_scored"] == stage["rows_total"] == 120 for stage in found["stages"])
    assert found["selected_docs"] == 20
    assert found["run"]["live"] is None  # a run through the Python API keeps no record

    result = run_cli("status", str(finished))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"distsel status: {finished}"
    assert lines[1].startswith("  phase     done: selection finished")
    assert "2/2 shards, 6 parts: 120 documents accepted, 0 rejected" in result.stdout
    assert any(line.split() == ["dsir", "6/6", "120/120", "done"] for line in lines)
    assert "selected  20 documents" in result.stdout

    as_json = run_cli("status", str(finished), "--json")
    assert json.loads(as_json.stdout)["phase"] == "done"


def test_a_partly_scored_run_gives_parts_rows_rate_and_eta(output):
    began = partly_scored(output)
    record(output, started=began - 30)
    now = began + 100

    found = status.collect(str(output), now=now)
    assert found["phase"] == "scoring"
    assert found["detail"] == "dsir 4/6 parts (running)"
    assert found["run"]["live"] is True
    stats, dsir = found["stages"]
    assert stats["state"] == "done"
    assert (dsir["parts_done"], dsir["state"], dsir["rows_total"]) == (4, "running", 120)
    assert 0 < dsir["rows_scored"] < 120
    assert dsir["rate_per_s"] == pytest.approx(4 / 100)
    assert dsir["eta_s"] == pytest.approx(2 / (4 / 100), rel=0.01)
    text = status.render(found, now=now)
    assert "scoring: dsir 4/6 parts (running)" in text
    assert "0.04 parts/s" in text and "ETA 50 s" in text
    assert f"live: pid {os.getpid()} on {socket.gethostname()}" in text


def test_a_killed_run_is_not_live_and_has_no_eta(output):
    began = partly_scored(output)
    now = began + 100
    record(output, started=began - 30, pid=dead_pid())
    found = status.collect(str(output), now=now)
    assert found["run"]["live"] is False and "is gone" in found["run"]["why"]
    dsir = found["stages"][1]
    assert dsir["state"] == "stopped" and "eta_s" not in dsir
    assert dsir["rate_per_s"] == pytest.approx(4 / 40)  # over the time it was scoring

    # On another host the heartbeat decides.
    record(output, started=began - 30, host="elsewhere", heartbeat=now - 5 * 60)
    assert "no heartbeat for 5 min" in status.collect(str(output), now=now)["run"]["why"]
    record(output, started=began - 30, host="elsewhere", heartbeat=now - 5)
    assert status.collect(str(output), now=now)["run"]["live"] is True


def test_stages_of_an_earlier_run_with_other_settings_do_not_count(output):
    began = partly_scored(output)
    record(output, stages=["stats"], started=began + 200)  # this run scores stats only
    found = status.collect(str(output), now=began + 210)
    assert [(s["name"], s["state"]) for s in found["stages"]] == [
        ("stats", "done"),
        ("dsir", "not in this run"),
    ]
    assert (found["phase"], found["detail"]) == ("selecting", "every stage scored")


def test_parts_marked_under_another_version_are_not_done(output):
    """A marker names the version of the scores it marks; those written since the stage
    started this run give the current version, and a part marked under another is pending."""
    began = partly_scored(output)
    markers = sorted((output / "_state" / "dsir").glob("*.parquet.json"))
    for index, marker in enumerate(markers):
        written = marker.stat().st_mtime
        content = json.loads(marker.read_text())
        marker.write_text(json.dumps({**content, "version": "new" if index >= 2 else "old"}))
        when = written if index >= 2 else began - 60  # the old ones before the stage began
        os.utime(marker, (when, when))
    record(output, started=began - 30)
    dsir = status.collect(str(output), now=began + 100)["stages"][1]
    assert (dsir["parts_done"], dsir["rescoring"]) == (2, 2)
    assert dsir["rows_scored"] == sum(json.loads(m.read_text())["rows"] for m in markers[2:])
    assert dsir["rate_per_s"] == pytest.approx(2 / 100)


def test_without_a_run_record_recent_writes_decide(output):
    partly_scored(output)
    written = time.time()  # the markers' folder was written last, just now
    soon = status.collect(str(output), now=written + 10)
    assert soon["run"]["live"] is None
    assert soon["stages"][1]["state"] == "running" and "eta_s" in soon["stages"][1]
    assert "no run record" in status.render(soon, now=written + 10)
    later = status.collect(str(output), now=written + 10 * 60)
    assert later["stages"][1]["state"] == "stopped" and "eta_s" not in later["stages"][1]


def test_ingest_phase_counts_shards(output):
    (output / "manifest.json").unlink()
    for stage in ("stats", "dsir"):
        shutil.rmtree(output / "_state" / stage)
    sorted((output / "_state" / "ingest").glob("*.json"))[1].unlink()
    record(output)
    found = status.collect(str(output))
    assert (found["phase"], found["detail"]) == ("ingest", "1/2 shards")
    assert found["ingest"]["state"] == "running"
    assert [stage["state"] for stage in found["stages"]] == ["pending", "pending"]


def test_a_failed_run_is_failed_with_its_error(output):
    now = time.time()
    record(output, state="failed", started=now + 1, ended=now + 2, error="x.jsonl: line 3: broken")
    found = status.collect(str(output), now=now + 3)
    assert found["phase"] == "failed"
    assert found["detail"].startswith("x.jsonl: line 3: broken (before it: selection finished")
    text = status.render(found, now=now + 3)
    assert "phase     failed: x.jsonl: line 3: broken" in text
    assert "the last run, pid" in text and "ended failed" in text

    manifest = json.loads((output / "manifest.json").read_text())
    (output / "_state" / "run.json").unlink()
    (output / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    assert status.collect(str(output))["phase"] == "failed"


def test_an_output_without_a_run_is_an_error(tmp_path):
    with pytest.raises(DistselError, match="no distsel run here"):
        status.collect(str(tmp_path))
    result = run_cli("status", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert (
        result.stderr == f"distsel: error: {tmp_path / 'missing'}: no distsel run here "
        "(no manifest.json or _state/)\n"
    )


def test_the_run_record_follows_the_run(tmp_path, monkeypatch, caplog):
    config = load_config(write_small_run(tmp_path))
    monkeypatch.setattr(run_record, "HEARTBEAT_SECONDS", 0.05)
    path = tmp_path / "out" / "_state" / "run.json"
    seen = []

    def work(begin):
        assert not path.exists(), "no record before the run has found its inputs"
        begin()
        seen.append(json.loads(path.read_text()))
        time.sleep(0.3)
        seen.append(json.loads(path.read_text()))
        return "result"

    assert run_record.keeping_record(config, "all", ["stats", "dsir"], work) == "result"
    first, later = seen
    assert first["state"] == "running" and first["pid"] == os.getpid()
    assert first["stages"] == ["stats", "dsir"] and first["phase"] == "all"
    assert later["heartbeat"] > first["heartbeat"]
    ended = json.loads(path.read_text())
    assert ended["state"] == "done" and ended["ended"] >= later["heartbeat"]

    def broken(begin):
        begin()
        raise RuntimeError("wrapped") from InputError("x.jsonl: line 3: invalid json")

    with pytest.raises(RuntimeError):
        run_record.keeping_record(config, "score", [], broken)
    ended = json.loads(path.read_text())
    assert (ended["state"], ended["error"]) == ("failed", "x.jsonl: line 3: invalid json")
    assert ended["phase"] == "score"

    def interrupted(begin):
        begin()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_record.keeping_record(config, "all", [], interrupted)
    assert json.loads(path.read_text())["state"] == "interrupted"

    # A second run on an output a live run holds is told so.
    record(tmp_path / "out", heartbeat=time.time())
    caplog.set_level("WARNING", logger="distsel")
    run_record.keeping_record(config, "all", [], lambda begin: begin())
    assert any("in use by another live run" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# S3


@pytest.fixture
def bucket(s3) -> str:
    name = f"distsel-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.mark.slow  # a run to S3, then the command in a subprocess
def test_status_on_s3(tmp_path, s3, bucket, endpoint_options, s3_endpoint, monkeypatch):
    url = f"s3://{bucket}/out"
    config = load_config(
        write_small_run(tmp_path, url), {"output.storage_options": endpoint_options}
    )
    with LocalExecutor().active():
        pipeline.run(config)

    found = status.collect(url, endpoint_options)
    assert found["phase"] == "done" and found["output"] == url
    assert [(s["name"], s["parts_done"], s["rows_scored"]) for s in found["stages"]] == [
        ("stats", 6, 120),
        ("dsir", 6, 120),
    ]

    s3.delete_object(Bucket=bucket, Key="out/manifest.json")
    markers = sorted(
        item["Key"]
        for item in s3.list_objects_v2(Bucket=bucket, Prefix="out/_state/dsir/")["Contents"]
        if item["Key"].endswith(".parquet.json")
    )
    for key in markers[4:]:
        s3.delete_object(Bucket=bucket, Key=key)
    found = status.collect(url, endpoint_options)
    assert (found["phase"], found["detail"]) == ("scoring", "dsir 4/6 parts (running)")
    assert found["stages"][1]["rows_scored"] == sum(
        json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["rows"]
        for key in markers[:4]
    )
    assert found["ingest"]["shards_total"] == 2  # the local input, listed from _state/input.json

    # The command takes the endpoint from the environment, as boto does.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    result = run_cli("status", url)
    assert result.returncode == 0, result.stderr
    assert "scoring: dsir 4/6 parts" in result.stdout
