"""The command line's habits: --version, --help, --set, `distsel validate`, the report after
`distsel run`, and relative outputs refused in a Ray job.

Most tests call `distsel.app.cli.main` in this process, with the pipeline on a LocalExecutor (a real
run, without Ray); one runs the whole command in a subprocess on Ray."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
from helpers import REPO, run_cli, write_small_run

from distsel.app import cli, pipeline, report
from distsel.core import console
from distsel.core.executor import LocalExecutor

WRITE_REPORT = report.write_report


@pytest.fixture
def runs(monkeypatch) -> list:
    """`distsel run` on a LocalExecutor; the configurations it ran. The console stays as
    pytest set it up (cli.main would move file descriptor 2 aside)."""
    ran = []
    real = pipeline.run

    def run(config, address=None, phase="all", executor=None, on_output=None):
        ran.append(config)
        return real(config, phase=phase, executor=LocalExecutor(), on_output=on_output)

    def quick_report(output, storage_options=None):  # the report's own test draws it
        (Path(output) / "report.html").write_text("<!doctype html>")
        return str(Path(output) / "report.html")

    monkeypatch.setattr(pipeline, "run", run)
    monkeypatch.setattr(report, "write_report", quick_report)
    monkeypatch.setattr(console, "configure", lambda verbose: None)
    return ran


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"distsel {metadata.version('distsel')}\n"


def test_help_says_what_distsel_is_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "distsel selects the training data for a language model" in text
    assert re.search(r"^example:\n  distsel run run\.yaml .+$", text, re.M)
    for command in ("run", "validate", "status", "report", "demo"):
        assert re.search(rf"^    {command} ", text, re.M)


def test_set_overrides_keys_with_yaml_values_before_validation(tmp_path, runs, capsys):
    config = write_small_run(tmp_path)
    status = cli.main(
        [
            "run",
            str(config),
            "--set",
            "select.budget.docs=7",
            "--set",
            "seed=3",
            "--set",
            "input.strict=true",
            "--set",
            "select.dsir.sampling=gumbel",
            "--set",
            "input.group_field=null",
            "--set",
            f"input.paths=[{tmp_path / 'corpus' / 'a.jsonl'}]",
            "--set",
            "output.path=elsewhere",
            "--output",
            str(tmp_path / "out"),  # --output wins over --set output.path
        ]
    )
    assert status == 0, capsys.readouterr().err
    (ran,) = runs
    assert ran.select.budget.docs == 7 and ran.seed == 3 and ran.input.strict is True
    assert ran.select.options("dsir").sampling == "gumbel" and ran.input.group_field is None
    assert ran.input.paths == [str(tmp_path / "corpus" / "a.jsonl")]
    assert ran.output.path == str(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["selected_docs"] == 7


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("select.budget.dcos=5", "select.budget.dcos: unknown key"),
        ("sedd=3", "sedd: unknown key"),
        ("seed=many", "seed: Input should be a valid integer"),
        ("seed", "--set seed: expected KEY=VALUE"),
        ("select..method=all", "--set select..method=all: expected KEY=VALUE"),
        ("seed=[1", "--set seed=[1: not a YAML value"),
    ],
)
def test_bad_settings_are_configuration_errors(tmp_path, runs, capsys, setting, message):
    config = write_small_run(tmp_path)
    for command in ("run", "validate"):
        assert cli.main([command, str(config), "--set", setting]) == 2
        error = capsys.readouterr().err
        assert error.startswith("distsel: error: ") and message in error
        assert error.count("\n") == 1
    assert runs == [] and not (tmp_path / "out").exists()


def test_validate_checks_without_running(tmp_path, runs, capsys):
    config = write_small_run(tmp_path, tmp_path / "new" / "deeper" / "out")
    assert cli.main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"distsel: OK: {config}: 2 input shards, 1 target file, output "
        f"{tmp_path / 'new' / 'deeper' / 'out'} writable; dsir with stages stats, dsir\n"
    )
    assert runs == [] and not (tmp_path / "new").exists(), "nothing left behind"

    (tmp_path / "out").mkdir()
    assert cli.main(["validate", str(config), "--output", str(tmp_path / "out")]) == 0
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("input.paths=[/no/such/corpus]", "/no/such/corpus: no such file or folder"),
        ("target.paths=[/no/such/target.jsonl]", "/no/such/target.jsonl: no such file"),
        ("output.path={root}/run.yaml/out", "output {root}/run.yaml/out: cannot write there"),
        ("output.path={root}/corpus/out", "lies inside input path"),
        ("stages.nonesuch={{}}", "stages.nonesuch: unknown stage"),
    ],
)
def test_validate_names_what_is_wrong(tmp_path, runs, capsys, setting, message):
    config = write_small_run(tmp_path)
    setting, message = setting.format(root=tmp_path), message.format(root=tmp_path)
    assert cli.main(["validate", str(config), "--set", setting]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("distsel: error: ") and message in captured.err


def test_run_writes_the_report_and_prints_its_path(tmp_path, runs, capsys, monkeypatch):
    monkeypatch.setattr(report, "write_report", WRITE_REPORT)
    assert cli.main(["run", str(write_small_run(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"distsel: report written to {tmp_path / 'out' / 'report.html'}"
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<img" in page


def test_a_report_that_fails_is_one_warning_and_the_run_succeeds(
    tmp_path, runs, capsys, monkeypatch
):
    def broken(output, storage_options=None):
        raise RuntimeError("matplotlib is missing\nsecond line")

    monkeypatch.setattr(report, "write_report", broken)
    assert cli.main(["run", str(write_small_run(tmp_path))]) == 0
    captured = capsys.readouterr()
    assert "distsel: done in" in captured.out and "report written" not in captured.out
    assert captured.err == (
        "distsel: warning: no report written (RuntimeError: matplotlib is missing); "
        f"`distsel report {tmp_path / 'out'}` tries again\n"
    )
    assert (tmp_path / "out" / "manifest.json").exists()


# Ray 2.60's job supervisor gives the driver of a submitted job its JobConfig in this variable.
JOB_CONFIG = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}})


def test_a_ray_job_refuses_a_relative_output(tmp_path, runs, capsys, monkeypatch):
    config = write_small_run(tmp_path, "out")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", JOB_CONFIG)
    monkeypatch.setattr("sys.argv", ["jobs/pipeline.py", "--config", str(config)])
    assert cli.job_main("all") == 2
    error = capsys.readouterr().err
    assert error.startswith(
        "distsel: error: output.path out is relative, and this run is a Ray job"
    )
    assert "an absolute path" in error and "s3://" in error and error.count("\n") == 1
    assert runs == [] and not (tmp_path / "out").exists()

    absolute = tmp_path / "kept"
    monkeypatch.setattr(
        "sys.argv", ["jobs/pipeline.py", "--config", str(config), "--output", str(absolute)]
    )
    assert cli.job_main("all") == 0
    assert f"output in {absolute}" in capsys.readouterr().out

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")  # outside a job, relative is fine
    assert cli.main(["run", str(config)]) == 0
    assert (tmp_path / "out" / "manifest.json").exists()


def test_readme_job_submit_stops_only_the_head_it_started():
    text = (REPO / "README.md").read_text()
    section = text[text.index("**2. A Ray cluster, through `ray job submit`.**") :]
    block = section[section.index("```bash") : section.index("```", section.index("```bash") + 3)]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert not any(command.startswith("ray stop") for command in commands)
    start = next(command for command in commands if command.startswith("ray start --head"))
    assert "--block" in start and "--temp-dir" in block
    assert 'kill "$HEAD_PID"' in block


@pytest.mark.slow
def test_distsel_run_then_status(ray_local, tmp_path):
    """The whole command on Ray: the run, its report, its run record, and status after it."""
    config = write_small_run(tmp_path)
    result = run_cli("run", str(config), "--set", "select.budget.docs=9")
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out"
    assert f"distsel: report written to {output / 'report.html'}" in result.stdout
    assert (output / "report.html").stat().st_size > 0
    record = json.loads((output / "_state" / "run.json").read_text())
    assert (record["state"], record["phase"], record["stages"]) == (
        "done",
        "all",
        ["stats", "dsir"],
    )

    shown = run_cli("status", str(output))
    assert shown.returncode == 0, shown.stderr
    assert "phase     done: selection finished" in shown.stdout
    assert "ended done" in shown.stdout and "selected  9 documents" in shown.stdout


def test_readme_names_the_new_commands():
    text = (REPO / "README.md").read_text()
    for phrase in ("distsel validate", "distsel status", "--set", "distsel --version"):
        assert phrase in text, phrase
