"""Nothing lost, nothing leaked: every failure a user can cause ends as one line
`distsel: error: ...` without credentials, and nothing a run writes is read back as its input.

The command-line cases run `python -m distsel.app.cli` in a subprocess and fail before Ray starts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import base_config, run_cli, stdlib_paragraphs, write_jsonl

from distsel.app import cli, pipeline
from distsel.core import errors, registry
from distsel.core.config import parse_config
from distsel.core.errors import ConfigError, InputError
from distsel.core.pool import Pool
from distsel.core.storage import StorageError, reads_inside

KEY, SECRET = "AKIAERRORTESTKEY", "error-test-secret-value"


def distsel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=120)


def error_line(result: subprocess.CompletedProcess, status: int) -> str:
    """The one line of stderr, checked: `distsel: error: ...`, no traceback, no credentials."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr and SECRET not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distsel: error: "), result.stderr
    return lines[0]


def write_config(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": t} for t in stdlib_paragraphs(20)])
    return tmp_path / "data"


# output inside an input


def test_output_inside_the_input_folder_is_refused_before_any_work(tmp_path, corpus):
    config = write_config(tmp_path / "run.yaml", base_config([corpus], "elsewhere"))
    before = sorted(corpus.rglob("*"))
    result = distsel("run", str(config), "--output", str(corpus / "out"))
    line = error_line(result, 2)
    assert line == (
        f"distsel: error: output {corpus / 'out'} lies inside input path {corpus}; a rerun "
        "would read the output back as input: choose an output location outside it"
    )
    assert sorted(corpus.rglob("*")) == before, "nothing was written"


@pytest.mark.parametrize(
    ("given", "output"),
    [
        ("data", "data"),  # equal
        ("data/", "./data/sub/../out"),  # inside, spelled another way
        ("link", "data/out"),  # inside, through a symbolic link
        ("data/*.jsonl", "data"),  # the folder a glob reads
        ("data/**/*.jsonl", "data/deep/out"),  # a recursive glob reaches any depth
    ],
)
def test_output_inside_or_equal_to_an_input_is_refused(
    tmp_path, corpus, monkeypatch, given, output
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(corpus)
    with pytest.raises(
        ConfigError, match=re.escape(f"output {output} lies inside input path {given};")
    ):
        pipeline.run(parse_config(base_config([given], output)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "link"]


def test_output_inside_a_target_folder_is_refused(tmp_path, corpus):
    raw = base_config([corpus], tmp_path / "targets" / "out")
    raw["target"] = {"paths": [str(tmp_path / "targets")]}
    with pytest.raises(ConfigError, match="lies inside target path"):
        pipeline.run(parse_config(raw))


@pytest.mark.parametrize(
    ("given", "output", "inside"),
    [
        ("s3://b/data", "s3://b/data/out", True),
        ("s3://b/data/", "s3://b/data", True),
        ("s3://b/data", "s3://b/data2", False),  # a prefix, but not on a path boundary
        ("s3://b/data", "s3://c/data/out", False),
        ("s3://b/data/*.jsonl", "s3://b/data", True),
        ("s3://b/data/*.jsonl", "s3://b/data/out", False),  # `*` stops at '/'
        ("s3://b/data/**", "s3://b/data/x/out", True),
        ("s3://b/data", "/b/data/out", False),
        ("/srv/data", "/srv/data/out", True),
        ("/srv/data", "/srv/database", False),
        ("/srv/data/a.jsonl", "/srv/data/out", False),  # beside an input file: never read
        ("/srv/data/a.jsonl", "/srv/data/a.jsonl", True),
        ("/srv/data", "/srv", False),  # the output may hold the input (as the demo's does)
    ],
)
def test_inside_compares_whole_path_components(given, output, inside):
    assert reads_inside(given, output) is inside


# credentials


@pytest.mark.parametrize("where", ["input", "--output", "report"])
def test_credentials_in_a_url_are_refused_without_repeating_them(tmp_path, corpus, where):
    url = f"s3://{KEY}:{SECRET}@bucket/data/"
    raw = base_config([url if where == "input" else corpus], tmp_path / "out")
    config = write_config(tmp_path / "run.yaml", raw)
    command = {
        "input": ["run", str(config)],
        "--output": ["run", str(config), "--output", url],
        "report": ["report", url],
    }[where]
    line = error_line(distsel(*command), 2)
    assert "s3://***@bucket/data/: credentials in a URL are not accepted" in line


def test_concealed_values_never_appear_in_a_message():
    errors.conceal(SECRET)
    text = f'Invalid bucket name "{KEY}:{SECRET}@b"; see s3://{KEY}:{SECRET}@b/x'
    assert errors.strip_credentials(text) == f'Invalid bucket name "{KEY}:***@b"; see s3://***@b/x'


# unreachable object store


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unreachable_input_config(tmp_path: Path, retry_seconds: float) -> Path:
    raw = base_config(["s3://bucket/data/"], tmp_path / "out")
    raw["input"]["storage_options"] = {
        "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    raw["output"]["retry_seconds"] = retry_seconds
    return write_config(tmp_path / "run.yaml", raw)


def test_an_unreachable_input_endpoint_is_one_line_naming_the_path(tmp_path):
    line = error_line(distsel("run", str(_unreachable_input_config(tmp_path, 0))), 1)
    assert line.startswith(
        "distsel: error: s3://bucket/data/: storage unreachable; gave up after 1 attempts in "
    ), line
    assert "(Could not connect to the endpoint URL: " in line
    assert not (tmp_path / "out").exists()


def test_an_unreachable_input_is_tried_again_and_verbose_shows_the_traceback(tmp_path):
    began = time.monotonic()
    result = distsel("-v", "run", str(_unreachable_input_config(tmp_path, 3)))
    assert time.monotonic() - began < 10
    assert result.returncode == 1
    lines = result.stderr.rstrip().splitlines()
    assert "distsel: s3://bucket/data/: storage unreachable (Could not" in result.stderr
    assert "trying again" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "botocore.exceptions.EndpointConnectionError" in result.stderr
    assert re.match(
        r"distsel: error: s3://bucket/data/: storage unreachable; gave up after [2-9] attempts ",
        lines[-1],
    ), lines[-1]
    assert KEY not in result.stderr and SECRET not in result.stderr


# configuration that is not a mapping


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("just words\n", "expected a mapping at the top level, got str"),
        ("input: {paths: [x]}\noutput: out\n", "output: expected a mapping, got str"),
    ],
)
@pytest.mark.parametrize("override", [True, False])
def test_a_config_that_is_not_a_mapping_is_named(tmp_path, text, problem, override):
    if not override and problem.startswith("output:"):
        problem = "invalid configuration: output: Input should be a valid dictionary"
    config = tmp_path / "run.yaml"
    config.write_text(text)
    extra = ["--output", str(tmp_path / "out")] if override else []
    line = error_line(distsel("run", str(config), *extra), 2)
    assert line.startswith(f"distsel: error: {config}: {problem}"), line


# errors from Ray workers, and unexpected ones


def _fails_in_a_ray_task(ray: Any) -> Exception:
    @ray.remote
    def task() -> None:
        raise InputError(f"s3://{KEY}:{SECRET}@bucket/a.jsonl: unreadable")

    with pytest.raises(Exception) as caught:
        ray.get(task.remote())
    return caught.value


def _fails_in_ray_data(ray: Any) -> Exception:
    def udf(batch: dict) -> dict:
        raise StorageError("s3://bucket/out/docs/a.parquet: storage unreachable; gave up")

    with pytest.raises(Exception) as caught:
        list(ray.data.from_items([{"a": 1}]).map_batches(udf).iter_rows())
    return caught.value


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_fails_in_a_ray_task, "s3://***@bucket/a.jsonl: unreadable"),
        (_fails_in_ray_data, "s3://bucket/out/docs/a.parquet: storage unreachable; gave up"),
    ],
)
def test_a_ray_worker_s_distsel_error_is_one_line(ray_local, capsys, fail, expected):
    assert cli._fail(fail(ray_local), verbose=False) == 1
    assert capsys.readouterr().err == f"distsel: error: {expected}\n"


def test_an_unexpected_error_is_one_line_with_its_type(capsys):
    errors.conceal(SECRET)
    try:
        raise ValueError(f"bad value near {SECRET}\nsecond line")
    except ValueError as exc:
        assert cli._fail(exc, verbose=False) == 1
    assert capsys.readouterr().err == "distsel: error: ValueError: bad value near ***\n"


# budget larger than the pool


def _pool(size: int = 40) -> Pool:
    rng = np.random.default_rng(0)
    scores = {
        name: rng.random(size)
        for name in (
            "similarity",
            "similarity_task_t",
            "dsir_log_weight",
            "dsir_log_weight_per_ngram",
            "influence",
        )
    }
    scores["cluster"] = np.arange(size) % 4
    return Pool(
        parts=["p.parquet"],
        part_index=np.zeros(size, dtype=np.int32),
        row_index=np.arange(size, dtype=np.int64),
        tokens=np.full(size, 10, dtype=np.int64),
        random_key=rng.integers(0, 2**63, size).astype(np.uint64),
        categories={"domain": np.array(["a", "b"] * (size // 2), dtype=object)},
        scores=scores,
    )


@pytest.mark.parametrize("budget", [{"docs": 41}, {"tokens": 401}])
@pytest.mark.parametrize("method", sorted(registry.selector_names()))
def test_a_budget_larger_than_the_pool_selects_all_of_it(caplog, method, budget):
    raw = base_config(["in"], "out", method=method, budget=budget)
    raw["target"] = {"paths": ["t"]}
    raw["input"]["group_field"] = "domain"
    config, pool = parse_config(raw), _pool()
    over = pipeline.budget_exceeds_pool(config.select.budget, pool)
    caplog.set_level(logging.WARNING, logger="distsel")
    selector = registry.selector(method)
    chosen, section = pipeline.choose(selector, pool, config, None, over)  # type: ignore[arg-type]

    assert over
    if method == "threshold":  # the filter still holds: values at or above the median
        values = pool.scores["similarity"]
        assert sorted(chosen) == list(np.flatnonzero(values >= np.median(values)))
    else:
        assert sorted(chosen) == list(range(len(pool)))
    assert section["budget"] == budget
    wanted = f"{budget['docs']} documents" if "docs" in budget else f"{budget['tokens']} tokens"
    held = "40 documents" if "docs" in budget else "~400 tokens"
    taken = "every document that passes the filter" if method == "threshold" else "the whole pool"
    assert [record.getMessage() for record in caplog.records] == [
        f"select: the budget ({wanted}) is larger than the pool ({held}); selecting {taken}"
    ]


@pytest.mark.parametrize("budget", [{"docs": 40}, {"tokens": 400}])
def test_a_budget_within_the_pool_is_not_exceeded(budget):
    assert not pipeline.budget_exceeds_pool(
        parse_config(base_config(["in"], "out", method="random", budget=budget)).select.budget,
        _pool(),
    )


class _Lines(logging.Handler):
    """The distsel logger's messages. (Ray Data resets the root logger's handlers when a
    dataset runs, and with them pytest's caplog.)"""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_manifest_says_when_the_budget_exceeds_the_pool(ray_local, tmp_path, corpus):
    raw = base_config([corpus], tmp_path / "out", method="random", budget={"docs": 1_000})
    lines = _Lines()
    logging.getLogger("distsel").addHandler(lines)
    try:
        manifest = pipeline.run(parse_config(raw))
    finally:
        logging.getLogger("distsel").removeHandler(lines)
    assert manifest["selected_docs"] == manifest["accepted_docs"] == 20
    assert manifest["budget_exceeds_pool"] is True
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["budget_exceeds_pool"] is True
    assert [line for line in lines.messages if "larger than the pool" in line] == [
        "select: the budget (1,000 documents) is larger than the pool (20 documents); "
        "selecting the whole pool"
    ]
