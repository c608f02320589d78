"""The executor layer: a LocalExecutor runs the pipeline's stages in this process with the same
results as Ray; Ray is used from one place; what stages fit is saved and reused."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core.config import parse_config
from distsel.core.executor import LocalExecutor, RayExecutor

PACKAGE = Path(__file__).resolve().parents[2] / "distsel"


def imports_ray(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_ray_is_imported_by_at_most_two_modules() -> None:
    modules = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if imports_ray(p))
    assert "core/executor.py" in modules
    assert len(modules) <= 2, modules


def sums(values: np.ndarray, scale: float) -> np.ndarray:
    return values * scale


def power(base: int, exponent: int) -> int:
    return base**exponent


def add(*arrays: np.ndarray) -> np.ndarray:
    total = np.array(arrays[0], dtype=np.float64)
    for array in arrays[1:]:
        total = total + array
    return total


class Counter:
    def __init__(self, start: int) -> None:
        self.start = start

    def plus(self, value: int) -> int:
        return self.start + value


def test_local_and_ray_executors_give_identical_results(ray_local) -> None:
    """map keeps order, map_reduce adds in the same tree (bit-identical floats), actors answer
    in call order, as_completed yields every result once."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    rng = np.random.default_rng(0)
    calls = [(rng.normal(size=5) * 10.0 ** rng.integers(-8, 8), 1.5) for _ in range(40)]
    local, remote = LocalExecutor(), RayExecutor()
    assert [r.tolist() for r in local.map(sums, calls)] == [
        r.tolist() for r in remote.map(sums, calls)
    ]
    got = [e.map_reduce(sums, calls, add, fanin=3) for e in (local, remote)]
    assert got[0].tobytes() == got[1].tobytes()
    for executor in (local, remote):
        assert sorted(executor.as_completed(power, [(2, n) for n in range(20)])) == [
            2**n for n in range(20)
        ]
        group = executor.actors(Counter, (100,), size=2)
        assert group.call("plus", [(i,) for i in range(5)]) == [100, 101, 102, 103, 104]
        group.close()
        assert executor.call(power, 3, 4) == 81


def quad_config(root: Path, output: Path, stages: dict | None = None):
    recipes = [
        f"Stir the {food} into the pan with butter, then bake the {food} for {m} minutes."
        for food in ("onions", "apples", "carrots", "potatoes", "pears", "leeks")
        for m in (10, 20, 30, 40, 50)
    ]
    prose = stdlib_paragraphs(80)
    if not (root / "corpus").exists():
        docs = [{"text": t, "domain": "docs"} for t in prose]
        docs += [{"text": t, "domain": "recipes"} for t in recipes[:20]]
        write_jsonl(root / "corpus" / "a.jsonl", docs[::2])
        write_jsonl(root / "corpus" / "b.jsonl", docs[1::2])
        write_jsonl(root / "target.jsonl", [{"text": t} for t in recipes[20:]])
    raw = base_config([root / "corpus"], output, method="quad", budget={"docs": 10})
    raw["input"].update(group_field="domain", rows_per_part=25)
    raw["target"] = {"paths": [str(root / "target.jsonl")]}
    raw["stages"] = stages or {}
    raw["embed"] = {"max_length": 64}  # a quarter of the default's work; truncation is no matter
    raw["select"]["quad"] = {
        "clusters": 4,
        "scorer": "dsir",
        "score_column": "dsir_log_weight_per_ngram",
    }
    return parse_config(raw)


def selected_ids(output: Path) -> list[str]:
    tables = [pq.read_table(p, columns=["id"]) for p in sorted((output / "selected").glob("*"))]
    return sorted(i for t in tables for i in t.column("id").to_pylist())


@pytest.mark.slow
def test_local_executor_selects_as_ray_and_a_rerun_fits_nothing(
    ray_local, tmp_path, monkeypatch
) -> None:
    """Quad over embedded, clustered parts with a dsir scorer on actors: every kind of work the
    pipeline hands out. In-process, the run selects what the Ray run selects. k-means, the
    classifier and the dsir scorer are fitted once: a rerun and a selection-only run restore
    them (any fit now fails) and select the same; a changed setting fits again."""
    from distsel.methods.classifier import ClassifierStage
    from distsel.methods.cluster import ClusterStage
    from distsel.methods.dsir import DsirStage

    config = quad_config(tmp_path, tmp_path / "ray")
    first = pipeline.run(config)
    with LocalExecutor().active():
        local = pipeline.run(quad_config(tmp_path, tmp_path / "local"))
    chosen = selected_ids(tmp_path / "ray")
    assert selected_ids(tmp_path / "local") == chosen
    assert local["quad"]["influence_evaluated_docs"] == first["quad"]["influence_evaluated_docs"]
    for stage in ("embed", "cluster"):
        assert set(local["stages"][stage]["parts_per_node"]) == {"local"}
        assert "local" not in first["stages"][stage]["parts_per_node"]
    assert not any(first["stages"][s]["fit_reused"] for s in ("cluster", "classifier"))

    def no_fit(self, context):
        raise AssertionError(f"{self.name} fitted again")

    for stage in (ClusterStage, ClassifierStage, DsirStage):
        monkeypatch.setattr(stage, "prepare", no_fit)
    for phase in ("all", "select"):
        again = pipeline.run(config, phase=phase)
        assert all(again["stages"][s]["fit_reused"] for s in ("cluster", "classifier"))
        assert again["stages"]["cluster"]["summary"] == first["stages"]["cluster"]["summary"]
        assert again["quad"]["dsir"] == first["quad"]["dsir"]
        assert selected_ids(tmp_path / "ray") == chosen
    changed = quad_config(tmp_path, tmp_path / "ray", {"classifier": {"c": 0.5}})
    with pytest.raises(AssertionError, match="classifier fitted again"):
        pipeline.run(changed)
