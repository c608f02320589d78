from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import write_jsonl


def distsel(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run(
        [sys.executable, "-m", "distsel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_on_standard_library_text(tmp_path):
    result = distsel("demo", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert f"output in {tmp_path / 'demo'}" in result.stdout
    assert "documents in" in result.stdout and "selected" in result.stdout
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["input_docs"] == manifest["accepted_docs"] + manifest["rejected_docs"]
    assert manifest["rejected_by_reason"]["empty_text"] > 0, "modules without docstrings"
    assert manifest["selected_docs"] == 300
    assert list((tmp_path / "demo" / "selected").glob("*.parquet"))


def test_configuration_errors_name_the_key_without_a_traceback(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("input: {paths: [x], max_chars: lots}\noutput: {path: out}\nsedd: 3\n")
    result = distsel("run", str(config))
    assert result.returncode == 2
    assert "input.max_chars" in result.stderr and "sedd: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_strict_mode_error_names_file_and_line(tmp_path):
    shard = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine"}, b"{broken"])
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps({"input": {"paths": [str(shard)], "strict": True}, "output": {"path": "o"}})
    )
    result = distsel("run", str(config), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"distsel: error: {shard}: line 2: invalid json" in result.stderr
    assert "Traceback" not in result.stderr
