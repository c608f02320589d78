from __future__ import annotations

import json
import logging
import re

import pytest
from helpers import run_cli as distsel
from helpers import write_jsonl


@pytest.mark.slow
def test_demo_runs_end_to_end_on_standard_library_text(tmp_path):
    output = tmp_path / "demo"
    result = distsel("demo", str(output), own_ray=True)  # as a new user runs it
    assert result.returncode == 0, result.stderr
    assert f"output in {output}" in result.stdout
    assert "documents in" in result.stdout and "selected" in result.stdout
    assert f"report written to {output / 'report.html'}" in result.stdout
    assert (output / "report.html").stat().st_size > 0
    assert "topic share" in result.stdout and "KL(target" in result.stdout
    assert re.search(r"^ +networking +\d+\.\d% +\d+\.\d%$", result.stdout, re.M)
    assert "bigram xent" in result.stdout

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["input_docs"] == manifest["accepted_docs"] + manifest["rejected_docs"]
    assert manifest["rejected_by_reason"]["empty_text"] > 0, "modules without docstrings"
    assert manifest["config"]["select"]["method"] == "dsir"
    shares = manifest["evaluation"]["labels"]
    assert shares["field"] == "topic"
    assert shares["selected"]["networking"] > 2 * shares["pool"]["networking"]
    assert manifest["evaluation"]["kl"]["kl_reduction"] > 0
    assert list((output / "selected").glob("*.parquet"))

    # Without -v only distsel's lines reach stderr, none of Ray's (its C++ core's included).
    assert [line for line in result.stderr.splitlines() if not line.startswith("distsel: ")] == []
    assert re.search(r"^distsel: dsir: (\d+)/\1 parts done in .* parts/s\)$", result.stderr, re.M)


def test_configuration_errors_name_the_key_without_a_traceback(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("input: {paths: [x], max_chars: lots}\noutput: {path: out}\nsedd: 3\n")
    result = distsel("run", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        f"distsel: error: {config}: invalid configuration: input.max_chars: Input should be a "
        "valid integer, unable to parse string as an integer; sedd: unknown key\n"
    )


@pytest.mark.slow
def test_strict_mode_error_names_file_and_line(ray_local, tmp_path):
    shard = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine"}, b"{broken"])
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps({"input": {"paths": [str(shard)], "strict": True}, "output": {"path": "o"}})
    )
    result = distsel("run", str(config), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # 2 is for usage and configuration errors
    assert f"distsel: error: {shard}: line 2: invalid json" in result.stderr
    assert "Traceback" not in result.stderr


def test_progress_lines_give_count_rate_and_eta_then_the_time_taken(caplog):
    from distsel.core.runner import _Progress

    caplog.set_level(logging.INFO, logger="distsel")
    for label, every in (("embed", 0.0), ("dsir", 5.0)):
        progress = _Progress(label, 3, "parts", every=every)
        for _ in range(3):
            progress.advance()
    number, ending = r"[\d.e+-]+", r"done in [\d.e+-]+ s \([\d.e+-]+ parts/s\)"
    assert [record.getMessage() for record in caplog.records] == [
        Matches(rf"embed: 1/3 parts, {number} parts/s, ETA {number} s"),
        Matches(rf"embed: 2/3 parts, {number} parts/s, ETA {number} s"),
        Matches(rf"embed: 3/3 parts {ending}"),
        Matches(rf"dsir: 3/3 parts {ending}"),  # nothing between: at most every 5 s
    ]


class Matches(str):
    """Equal to the strings that the regular expression matches in full."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(self, other) is not None

    __hash__ = str.__hash__
