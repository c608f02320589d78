"""Budgets as a share of the pool: validation, resolution against the pool, a whole run."""

from __future__ import annotations

import math

import pytest
from helpers import base_config, pool_of, read_folder, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core.config import Budget, parse_config
from distsel.core.errors import ConfigError
from distsel.core.executor import LocalExecutor
from distsel.core.selector import budget_section, with_resolved_budget

MINIMAL = {"input": {"paths": ["corpus/"]}, "output": {"path": "out"}}


def config_with(budget, method="random"):
    return parse_config({**MINIMAL, "select": {"method": method, "budget": budget}})


@pytest.mark.parametrize(
    "budget", [{"docs": 5}, {"tokens": 9}, {"docs_share": 0.1}, {"tokens_share": 1}]
)
def test_each_of_the_four_keys_alone_is_a_budget(budget):
    assert config_with(budget).select.budget.model_dump(exclude_none=True) == {
        key: float(value) if key.endswith("share") else value for key, value in budget.items()
    }


@pytest.mark.parametrize(
    "budget",
    [
        {},
        {"docs": 5, "docs_share": 0.1},
        {"tokens": 9, "tokens_share": 0.1},
        {"docs_share": 0.1, "tokens_share": 0.1},
        {"docs": 5, "tokens_share": 0.1},
    ],
)
def test_a_budget_needs_exactly_one_of_the_four_keys(budget):
    with pytest.raises(ConfigError, match=r"select\.budget: .*exactly one of 'docs', 'tokens', "):
        config_with(budget)


@pytest.mark.parametrize("key", ["docs_share", "tokens_share"])
@pytest.mark.parametrize("share", [0, -0.1, 1.5, 10])
def test_a_share_lies_in_0_to_1(key, share):
    with pytest.raises(ConfigError, match=rf"select\.budget\.{key}: Input should be"):
        config_with({key: share})


def test_a_missing_budget_names_the_share_keys_too():
    with pytest.raises(ConfigError, match=r"select: .*needs select\.budget .*tokens_share"):
        parse_config({**MINIMAL, "select": {"method": "random"}})


def test_a_share_resolves_to_the_ceiling_of_its_part_of_the_pool():
    assert Budget(docs_share=0.1).resolved(1001, 5).docs == 101
    assert Budget(tokens_share=0.1).resolved(3, 12_345).tokens == 1235
    assert Budget(docs_share=0.07).resolved(100, 0).docs == 7  # not 8 from 0.07 · 100 = 7.0…01
    assert Budget(docs_share=1).resolved(40, 0).docs == 40
    assert Budget(tokens_share=0.5).resolved(0, 0).tokens == 1  # never a budget of nothing
    given = Budget(docs=5)
    assert given.resolved(1000, 1000) is given


def test_the_resolved_budget_reaches_selectors_and_keeps_its_share():
    pool = pool_of([10, 20, 30, 40])  # 100 tokens
    config = config_with({"tokens_share": 0.25})
    resolved = with_resolved_budget(config, pool)
    assert resolved.select.budget.tokens == 25 and resolved.select.budget.docs is None
    assert budget_section(resolved) == {"tokens": 25, "tokens_share": 0.25}
    assert config.select.budget.tokens is None, "the given configuration is left as it was"
    assert resolved.select.method == "random" and resolved.input == config.input
    assert not pipeline.budget_exceeds_pool(resolved.select.budget, pool)

    by_docs = with_resolved_budget(config_with({"docs_share": 0.5}), pool)
    assert budget_section(by_docs) == {"docs": 2, "docs_share": 0.5}
    plain = config_with({"docs": 3})
    assert with_resolved_budget(plain, pool) is plain


@pytest.mark.parametrize(
    ("budget", "method"), [({"tokens_share": 0.1}, "random"), ({"docs_share": 0.25}, "all")]
)
def test_a_run_selects_its_share_of_the_pool(tmp_path, budget, method):
    paragraphs = stdlib_paragraphs(120)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": p} for p in paragraphs])
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method=method, budget=budget)
    raw["output"]["columns"] = ["tokens_approx"]
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))

    pool_tokens = manifest["pool_tokens_approx"]
    assert pool_tokens == sum(math.ceil(len(p) / 4) for p in paragraphs)
    asked = manifest["config"]["select"]["budget"]
    section = manifest[method]["budget"]
    if "tokens_share" in budget:
        limit = math.ceil(0.1 * pool_tokens)
        assert asked["tokens_share"] == 0.1 and asked["tokens"] == limit
        assert section == {"tokens": limit, "tokens_share": 0.1}
        assert 0.09 * pool_tokens < manifest["selected_tokens_approx"] <= limit
    else:
        assert asked["docs_share"] == 0.25 and asked["docs"] == 30
        assert section == {"docs": 30, "docs_share": 0.25}
        assert manifest["selected_docs"] == 30
    assert manifest["budget_exceeds_pool"] is False
    selected = read_folder(tmp_path / "out" / "selected")
    assert sum(selected.column("tokens_approx").to_pylist()) == manifest["selected_tokens_approx"]
