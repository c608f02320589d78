from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

from distsel.core.config import load_config, parse_config
from distsel.core.errors import ConfigError

MINIMAL = {"input": {"paths": ["corpus/"]}, "output": {"path": "out"}}


def test_minimal_config_gets_defaults():
    config = parse_config(MINIMAL)
    assert config.input.text_field == "text"
    assert config.input.max_chars == 1_000_000
    assert config.input.format == "auto"
    assert config.select.method == "all"
    assert config.seed == 0


def test_dedup_is_off_unless_asked_and_its_settings_are_checked():
    assert parse_config(MINIMAL).dedup is None
    dedup = parse_config({**MINIMAL, "dedup": {"method": "minhash"}}).dedup
    assert (dedup.threshold, dedup.num_perm) == (0.8, 112)
    with pytest.raises(ConfigError, match=r"dedup\.threshold: .*less than 1"):
        parse_config({**MINIMAL, "dedup": {"method": "minhash", "threshold": 1.5}})
    with pytest.raises(ConfigError, match=r"dedup\.method: .*'minhash'"):
        parse_config({**MINIMAL, "dedup": {"method": "fuzzy"}})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"input\.text_feild: unknown key"):
        parse_config({**MINIMAL, "input": {"paths": ["x"], "text_feild": "body"}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"input\.max_chars: .*integer"):
        parse_config({**MINIMAL, "input": {"paths": ["x"], "max_chars": "lots"}})


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"output: required key is missing"):
        parse_config({"input": {"paths": ["x"]}})


@pytest.mark.parametrize("budget", [{}, {"docs": 5, "tokens": 9}])
def test_budget_needs_exactly_one_unit(budget):
    with pytest.raises(ConfigError, match=r"select\.budget: .*exactly one"):
        parse_config({**MINIMAL, "select": {"method": "random", "budget": budget}})


def test_random_without_budget_is_an_error():
    with pytest.raises(ConfigError, match=r"select: .*needs select\.budget"):
        parse_config({**MINIMAL, "select": {"method": "random"}})


def test_unknown_method_is_named():
    with pytest.raises(ConfigError, match=r"select\.method: "):
        parse_config({**MINIMAL, "select": {"method": "best", "budget": {"docs": 1}}})


def test_a_single_path_string_becomes_a_list():
    config = parse_config({**MINIMAL, "input": {"paths": "corpus/"}})
    assert config.input.paths == ["corpus/"]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("input:\n  paths: [a\noutput: {path: o}\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_overrides_replace_dotted_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("input: {paths: [a]}\noutput: {path: o}\n")
    assert load_config(path, {"output.path": "elsewhere"}).output.path == "elsewhere"


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_every_problem_is_listed_on_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"input": {"paths": ["x"], "max_chars": "lots"}, "output": {"path": "o"}, "x": 1}
        )
    assert str(caught.value) == (
        "configuration: invalid configuration: input.max_chars: Input should be a valid integer, "
        "unable to parse string as an integer; x: unknown key"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("7\n", "expected a mapping at the top level, got int"),
        ("input: {paths: [a]}\noutput: [o]\n", "output: expected a mapping, got list"),
    ],
)
def test_overrides_need_mappings_to_go_into(tmp_path, text, problem):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {problem}$"):
        load_config(path, {"output.path": "elsewhere"})


def test_an_empty_section_takes_an_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("input: {paths: [a]}\noutput:\n")
    assert load_config(path, {"output.path": "o"}).output.path == "o"


@pytest.mark.parametrize("key", ["input.paths", "target.paths", "output.path"])
def test_credentials_in_a_url_are_refused_without_repeating_them(key):
    data = {"input": {"paths": ["x"]}, "output": {"path": "o"}}
    section, field = key.split(".")
    url = "s3://AKIAKEY:s3cr3t@bucket/data"
    data[section] = {**data.get(section, {}), field: [url] if field == "paths" else url}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    message = str(caught.value)
    assert f"{key}" in message and "s3://***@bucket/data: credentials in a URL" in message
    assert "AKIAKEY" not in message and "s3cr3t" not in message


def test_validating_every_stage_and_selector_imports_neither_torch_nor_transformers():
    """A config is checked without the model libraries: a method's module imports them only
    where a stage scores or trains."""
    script = """
import sys
from distsel.core import registry
from distsel.core.config import parse_config
raw = {"input": {"paths": ["x"]}, "output": {"path": "o"}, "target": {"paths": ["t"]},
       "select": {"method": "quad", "budget": {"docs": 3}},
       "stages": {name: {} for name in registry.stage_names()}}
config = parse_config(raw)
for name in registry.stage_names():
    config.stage_options(name)
for name in registry.selector_names():
    config.select.options(name)
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
