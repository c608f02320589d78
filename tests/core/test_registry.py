"""A method is one module: a stage and a selector registered with their options, found without
any list to edit, validated under `stages.<name>` and `select.<method>`, and run end to end."""

from __future__ import annotations

import textwrap

import pyarrow.parquet as pq
import pytest
from helpers import base_config, write_jsonl

from distsel.app import pipeline
from distsel.core import registry
from distsel.core.config import parse_config
from distsel.core.errors import ConfigError
from distsel.core.executor import LocalExecutor

PLUGIN = textwrap.dedent(
    '''
    """Vowel share: a toy method, all in one file."""

    import numpy as np
    import pyarrow as pa
    from pydantic import BaseModel, Field

    from distsel.core.registry import register_selector, register_stage
    from distsel.core.selector import budget_section, score_column
    from distsel.core.samplers import descending, fill_budget
    from distsel.core.stage import Resources, Stage


    class VowelStageOptions(BaseModel):
        vowels: str = "aeiou"


    class VowelSelectOptions(BaseModel):
        lowest: bool = False
        scale: float = Field(default=1.0, gt=0)


    @register_stage
    class VowelStage(Stage):
        name = "vowels"
        input_columns = ("text",)
        output_columns = ("vowel_share",)
        options_class = VowelStageOptions
        default_resources = Resources(num_cpus=1, batch_size=64)

        @classmethod
        def from_config(cls, config, resources):
            stage = cls(resources)
            stage.vowels = config.stage_options("vowels").vowels
            return stage

        def __call__(self, batch: pa.Table):
            texts = batch.column("text").to_pylist()
            share = [sum(c in self.vowels for c in t.lower()) / max(len(t), 1) for t in texts]
            return {"vowel_share": np.asarray(share)}


    @register_selector("vowels", options=VowelSelectOptions)
    class VowelSelector:
        def required_stages(self, config):
            return ("vowels",)

        def select(self, pool, config, context):
            options = config.select.options("vowels")
            values = score_column(pool, "vowel_share") * options.scale
            order = descending(-values if options.lowest else values, pool.random_key)
            chosen = fill_budget(order, pool.tokens, config.select.budget)
            return chosen, {"budget": budget_section(config), **options.model_dump()}
    '''
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "vowel_method.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DISTSEL_PLUGINS", "vowel_method")
    registry.declared.cache_clear()
    yield
    registry.declared.cache_clear()


def test_built_in_methods_register_themselves() -> None:
    stages, selectors = registry.declared()
    assert {"dsir", "embed", "cluster", "influence", "classifier", "betr"} <= set(stages)
    assert {"all", "random", "quad", "mixture", "dsir", "classifier"} <= set(selectors)
    assert registry.needs_target("quad") and not registry.needs_target("random")
    assert registry.stage_class("cluster").__name__ == "ClusterStage"
    assert registry.stage_for_column("influence_normalized") == "influence"


def config_for(tmp_path, **select_options):
    write_jsonl(
        tmp_path / "corpus" / "a.jsonl",
        [{"text": t} for t in ("aeiou ai", "xyz qrst", "banana", "rhythm", "queue")],
    )
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="vowels")
    raw["select"].update(budget={"docs": 2}, **select_options)
    raw["stages"] = {"vowels": {"vowels": "aeiouy", "batch_size": 2}}
    return parse_config(raw)


def test_a_method_in_one_module_is_validated_and_runs(plugin, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"select\.vowels\.scale"):
        config_for(tmp_path, vowels={"scale": -1})
    with pytest.raises(ConfigError, match=r"select\.vowelz: unknown key"):
        config_for(tmp_path, vowelz={})
    with pytest.raises(ConfigError, match=r"stages\.vowels\.vowels: Input should be a valid"):
        parse_config({**config_for(tmp_path).model_dump(), "stages": {"vowels": {"vowels": 5}}})
    config = config_for(tmp_path, vowels={"lowest": True})
    assert config.stage_options("vowels").vowels == "aeiouy"
    with LocalExecutor().active():
        manifest = pipeline.run(config)
    chosen = pq.read_table(next((tmp_path / "out" / "selected").glob("*.parquet")))
    assert sorted(chosen.column("text").to_pylist()) == ["rhythm", "xyz qrst"]
    assert manifest["stages"]["vowels"]["rows"] == 5
    assert manifest["vowels"]["lowest"] is True
