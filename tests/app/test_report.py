"""The HTML report of a finished run, for the runs of several methods (real small runs)."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    AWS_KEY,
    AWS_REGION,
    AWS_SECRET,
    base_config,
    read_folder,
    s3_get,
    stdlib_paragraphs,
    write_jsonl,
)

from distsel.app import pipeline, report
from distsel.app.report import plots as report_plots
from distsel.app.report import write_report
from distsel.core.config import parse_config
from distsel.core.storage import Store

COOKING = [
    f"Stir the {food} into the pan with butter, then bake the {food} for {m} minutes."
    for food in ("onions", "apples", "carrots", "potatoes", "pears", "leeks", "beans")
    for m in (10, 20, 30, 40, 50)
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Two shards of stdlib prose (domain 'docs') and short recipes (domain 'recipes'); the
    target: more recipes."""
    root = tmp_path_factory.mktemp("report")
    prose = [{"text": p, "domain": "docs"} for p in stdlib_paragraphs(80)]
    recipes = [{"text": t, "domain": "recipes"} for t in COOKING[:20]]
    write_jsonl(root / "corpus" / "a.jsonl", prose[:40] + recipes[:10])
    write_jsonl(root / "corpus" / "b.jsonl", prose[40:] + recipes[10:])
    write_jsonl(root / "target.jsonl", [{"text": t} for t in COOKING[20:]])
    return root / "corpus", root / "target.jsonl"


def config(output: Path | str, corpus: tuple[Path, Path], method: str, **select: Any) -> dict:
    raw = base_config([corpus[0]], output, method=method, **select)
    raw["input"].update(group_field="domain", rows_per_part=30)
    raw["target"] = {"paths": [str(corpus[1])]}
    return raw


@pytest.fixture
def plot_axes(monkeypatch) -> list[dict[str, Any]]:
    """The title, axis labels and legend of every visible axes of every plot the report draws."""
    found: list[dict[str, Any]] = []
    original = report_plots._png

    def recording(figure):
        for axis in figure.axes:
            if axis.get_visible():
                legend = axis.get_legend()
                found.append(
                    {
                        "title": axis.get_title(),
                        "x": axis.get_xlabel(),
                        "y": axis.get_ylabel(),
                        "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                    }
                )
        return original(figure)

    monkeypatch.setattr(report_plots, "_png", recording)
    return found


def assert_labelled(axes: list[dict[str, Any]]) -> None:
    assert axes
    for axis in axes:
        assert axis["x"].strip() and axis["y"].strip(), axis


def examples(page: str, kind: str) -> list[dict[str, str]]:
    """The rows of one examples table, unescaped, by column name."""
    table = re.search(rf'<table class="examples" id="examples-{kind}">(.*?)</table>', page, re.S)
    assert table, f"no {kind} examples"
    rows = re.findall(r"<tr>(.*?)</tr>", table[1], re.S)
    head = re.findall(r"<th>(.*?)</th>", rows[0])
    return [
        dict(
            zip(
                head,
                [
                    html.unescape(re.sub(r" <em>.*?</em>$", "", cell))
                    for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
                ],
                strict=True,
            )
        )
        for row in rows[1:]
    ]


def shares(page: str) -> tuple[str, dict[str, tuple[float, float]]]:
    """The unit of the group-share table and each group's (pool, selected) shares."""
    table = re.search(r'<table class="shares" data-unit="(\w+)">(.*?)</table>', page, re.S)
    assert table, "no group shares"
    rows = re.findall(r"<tr><th>([^<]*)</th><td>([\d.]+)</td><td>([\d.]+)</td></tr>", table[2])
    return table[1], {html.unescape(n): (float(p), float(s)) for n, p, s in rows}


def ranked(folder: Path, stage: str, column: str) -> tuple[list[str], np.ndarray]:
    """The pool's ids and scores (parts in name order, as the report reads them)."""
    scores = read_folder(folder / "scores" / stage)
    return scores["id"].to_pylist(), scores[column].to_numpy().astype(float)


def best_first(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def local_run(config):
    """A run on the LocalExecutor: what a report shows does not depend on the executor."""
    from distsel.core.executor import LocalExecutor

    with LocalExecutor().active():
        return pipeline.run(config)


def test_score_columns_and_budget_unit_come_from_the_manifest():
    def manifest(method: str, section: dict | None = None, **options: Any) -> dict:
        select = {"method": method, "budget": {"docs": None, "tokens": 10}, method: options}
        return {"config": {"select": select}, method: section or {}}

    stages = {"similarity": ["id", "similarity_task_a", "similarity_task_b"]}
    assert report.score_columns(manifest("random"), stages) == []
    assert report.score_columns(manifest("mixture"), stages) == []
    assert report.score_columns(manifest("dsir", {"column": "dsir_log_weight"}), stages) == [
        "dsir_log_weight"
    ]
    assert report.score_columns(manifest("dsir"), stages) == ["dsir_log_weight_per_ngram"]
    assert report.score_columns(manifest("classifier"), stages) == ["classifier_score"]
    assert report.score_columns(manifest("similarity"), stages) == [
        "similarity_task_a",
        "similarity_task_b",
    ]
    assert report.score_columns(manifest("similarity", betr=True), stages) == ["betr_score"]
    assert report.score_columns(manifest("quad", {"score_column": "influence"}), stages) == [
        "influence"
    ]
    assert report.score_columns(manifest("topk", column="n_chars"), stages) == ["n_chars"]
    assert report.budget_unit(manifest("random")) == "tokens"
    docs = {"config": {"select": {"budget": {"docs_share": 0.5, "tokens_share": None}}}}
    assert report.budget_unit(docs) == "documents"


@pytest.mark.slow
def test_random_run_report_has_plots_shares_and_says_it_has_no_score(tmp_path, plot_axes):
    texts = stdlib_paragraphs(40)
    records = [{"text": t, "kind": "even" if i % 2 else "odd"} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "corpus" / "c.jsonl", records)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="random", budget={"docs": 10})
    raw["input"]["group_field"] = "kind"
    raw["stages"] = {"stats": {}, "embed": {"pool_size": 1}}
    manifest = local_run(parse_config(raw))

    path = write_report(str(tmp_path / "out"))
    page = Path(path).read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert "share of documents per kind" in captions
    assert "stats: n_chars" in captions and "embeddings (PCA)" in captions
    assert "tokens: n_tokens" in captions
    assert len(images) == len(captions) == 1 + 4 + 1 + 1
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "<th>selected_docs</th><td>10</td>" in page
    assert 'src="http' not in page, "nothing is loaded from elsewhere"
    assert_labelled(plot_axes)

    assert "random has no score column" in page
    selected = set(read_folder(tmp_path / "out" / "selected")["id"].to_pylist())
    shown = examples(page, "selected")
    assert shown and all(row["id"] in selected and row["selected"] == "yes" for row in shown)
    assert "examples-top" not in page

    unit, found = shares(page)
    groups = manifest["by_group"]
    assert unit == "documents"
    for name, (pool, chosen) in found.items():
        assert pool == pytest.approx(groups["pool"][name] / 40, abs=1e-4)
        assert chosen == pytest.approx(groups["selected"].get(name, 0) / 10, abs=1e-4)
    legends = [entry for axis in plot_axes for entry in axis["legend"]]
    assert not any(entry.startswith("target") for entry in legends), "the run has no target"


@pytest.mark.slow
def test_dsir_report_under_a_token_budget(tmp_path, corpus, plot_axes):
    """Token shares from tokens; the top, borderline and bottom examples by the dsir column;
    the target on the embedding map."""
    output = tmp_path / "dsir"
    raw = config(output, corpus, "dsir", budget={"tokens": 600})
    raw["stages"] = {"embed": {"pool_size": 1}}
    manifest = local_run(parse_config(raw))
    assert manifest["dsir"]["column"] == "dsir_log_weight_per_ngram"

    page = Path(write_report(str(output))).read_text(encoding="utf-8")
    assert_labelled(plot_axes)

    # Group shares in tokens (tokens_approx), not documents.
    docs = read_folder(output / "docs")
    chosen = read_folder(output / "selected")
    unit, found = shares(page)
    assert unit == "tokens" and "share of tokens per domain" in page
    for name, (pool, picked) in found.items():
        in_pool = np.array(docs["domain"].to_pylist()) == name
        in_selection = np.array(chosen["domain"].to_pylist()) == name
        pool_tokens = docs["tokens_approx"].to_numpy()
        tokens_of = dict(zip(docs["id"].to_pylist(), pool_tokens.tolist(), strict=True))
        chosen_tokens = np.array([tokens_of[i] for i in chosen["id"].to_pylist()])
        assert pool == pytest.approx(pool_tokens[in_pool].sum() / pool_tokens.sum(), abs=1e-4)
        expected = chosen_tokens[in_selection].sum() / chosen_tokens.sum()
        assert picked == pytest.approx(expected, abs=1e-4)
    assert sum(p for p, _ in found.values()) == pytest.approx(1, abs=1e-3)
    assert sum(s for _, s in found.values()) == pytest.approx(1, abs=1e-3)
    by_docs = manifest["by_group"]["selected"]["recipes"] / manifest["selected_docs"]
    assert found["recipes"][1] != pytest.approx(by_docs, abs=0.01), "tokens, not documents"

    # Examples by the selector's score column.
    ids, scores = ranked(output, "dsir", "dsir_log_weight_per_ngram")
    order = best_first(scores)
    selected = set(chosen["id"].to_pylist())
    picked = [i for i in order if ids[i] in selected]
    top = examples(page, "top")
    assert [row["id"] for row in top] == [ids[i] for i in picked[:5]]
    assert top[0]["selected"] == "yes" and float(top[0]["score"]) == pytest.approx(
        chosen["dsir_log_weight_per_ngram"].to_numpy().max(), rel=1e-5
    )
    assert int(top[0]["rank"]) == list(order).index(picked[0]) + 1
    k = len(selected)
    borderline = examples(page, "borderline")
    assert [row["id"] for row in borderline] == [ids[i] for i in order[k - 3 : k + 3]]
    assert [row["selected"] == "yes" for row in borderline] == [
        ids[i] in selected for i in order[k - 3 : k + 3]
    ]
    bottom = examples(page, "bottom")
    assert [row["id"] for row in bottom] == [ids[i] for i in order[-5:]]
    assert float(bottom[-1]["score"]) == pytest.approx(scores.min(), rel=1e-5)
    texts = dict(zip(docs["id"].to_pylist(), docs["text"].to_pylist(), strict=True))
    assert texts[top[0]["id"]].startswith(top[0]["text"].removesuffix(" …"))
    assert "dsir_log_weight_per_ngram</code> (scores/dsir)" in page

    # The target on the map, embedded with the run's model.
    assert "<figcaption>embeddings (PCA)</figcaption>" in page
    (map_axes,) = [axis for axis in plot_axes if axis["title"].startswith("embedding map")]
    assert "target: target (15)" in map_axes["legend"]
    assert map_axes["x"].startswith("principal component 1")


@pytest.mark.slow
def test_classifier_report_without_embeddings(tmp_path, corpus, plot_axes):
    output = tmp_path / "classifier"
    raw = config(output, corpus, "classifier", budget={"docs": 15})
    raw["stages"] = {"classifier": {"negatives": 40, "num_buckets": 4096}}
    manifest = local_run(parse_config(raw))

    page = Path(write_report(str(output))).read_text(encoding="utf-8")
    assert_labelled(plot_axes)
    assert "no embedding map: the run has no embed stage output" in page
    ids, scores = ranked(output, "classifier", "classifier_score")
    order = best_first(scores)
    selected = set(read_folder(output / "selected")["id"].to_pylist())
    top = examples(page, "top")
    assert top[0]["id"] == ids[order[0]] and top[0]["rank"] == "1", "a top-k selector"
    # Under a document budget the top-k's cut-off lies between ranks 15 and 16.
    borderline = examples(page, "borderline")
    assert [row["selected"] for row in borderline] == ["yes"] * 3 + ["no"] * 3
    assert [int(row["rank"]) for row in borderline] == [13, 14, 15, 16, 17, 18]
    assert {ids[i] for i in order[:15]} == selected
    unit, found = shares(page)
    assert unit == "documents"
    assert found["recipes"][1] == pytest.approx(
        manifest["by_group"]["selected"].get("recipes", 0) / 15, abs=1e-4
    )


@pytest.fixture
def storage_options(endpoint_options) -> dict[str, Any]:
    """Credentials in the options as well (Ray workers started before the env was set)."""
    return {
        **endpoint_options,
        "key": AWS_KEY,
        "secret": AWS_SECRET,
        "client_kwargs": {"region_name": AWS_REGION},
    }


@pytest.mark.slow
def test_similarity_report_on_s3(s3, corpus, storage_options, plot_axes):
    """Output and target on S3; the manifest hides the target's credentials, so the report
    reads the target with the options it was given."""
    bucket = f"distsel-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="target/recipes.jsonl", Body=corpus[1].read_bytes())
    output = f"s3://{bucket}/out"
    raw = config(output, corpus, "similarity", budget={"docs": 12})
    raw["output"]["storage_options"] = storage_options
    raw["target"] = {"paths": [f"s3://{bucket}/target/recipes.jsonl"]}
    raw["target"]["storage_options"] = storage_options
    raw["stages"] = {"embed": {"pool_size": 1}}
    manifest = local_run(parse_config(raw))
    assert manifest["similarity"]["columns"] == ["similarity_task_recipes"]

    assert write_report(output, storage_options).endswith("/out/report.html")
    page = s3_get(s3, bucket, "out/report.html").decode("utf-8")
    assert_labelled(plot_axes)
    store = Store(output, storage_options)
    parts = store.list("selected", ".parquet")
    chosen = [store.read_table(f"selected/{p}") for p in parts]
    best = max(max(t["similarity_task_recipes"].to_pylist()) for t in chosen)
    top = examples(page, "top")
    assert float(top[0]["score"]) == pytest.approx(best, rel=1e-5)
    assert top[0]["rank"] == "1"
    (map_axes,) = [axis for axis in plot_axes if axis["title"].startswith("embedding map")]
    assert "target: recipes (15)" in map_axes["legend"]
    assert "target examples not shown" not in page
    assert AWS_SECRET not in json.dumps(manifest["config"]), "the manifest hides it"


@pytest.mark.slow
def test_quad_report(tmp_path, corpus, plot_axes):
    """Quad with the classifier behind its rewards and its model: the classifier stage scored
    the whole pool, so the examples rank by it; with a column scored on draws only, the report
    says so."""
    output = tmp_path / "quad"
    raw = config(output, corpus, "quad", budget={"docs": 15})
    raw["stages"] = {"embed": {"pool_size": 1}, "cluster": {"clusters": 4}}
    raw["stages"]["classifier"] = {"negatives": 40, "num_buckets": 4096}
    raw["select"]["quad"] = {"scorer": "classifier", "max_evaluated": 0.3}
    manifest = local_run(parse_config(raw))
    assert manifest["quad"]["score_column"] == "classifier_score"

    page = Path(write_report(str(output))).read_text(encoding="utf-8")
    assert_labelled(plot_axes)
    assert "<figcaption>Quad: reward per arm over rounds</figcaption>" in page
    assert "<figcaption>embeddings (PCA)</figcaption>" in page
    ids, scores = ranked(output, "classifier", "classifier_score")
    selected = read_folder(output / "selected")
    top = examples(page, "top")
    assert float(top[0]["score"]) == pytest.approx(
        selected["classifier_score"].to_numpy().max(), rel=1e-5
    )
    assert top[0]["id"] in set(selected["id"].to_pylist())

    # The same run as if its rewards came from a column scored only on the draws.
    copy = output.parent / "quad-draws"
    shutil.copytree(output, copy)
    saved = json.loads((copy / "manifest.json").read_text())
    saved["quad"]["score_column"] = "influence_normalized"
    (copy / "manifest.json").write_text(json.dumps(saved))
    page = Path(write_report(str(copy))).read_text(encoding="utf-8")
    evaluated = saved["quad"]["influence_evaluated_docs"]
    assert f"only on the {evaluated} documents it draws" in page
    assert "examples-top" not in page and "examples-selected" in page


@pytest.mark.slow
def test_report_escapes_html_in_texts_ids_and_groups(tmp_path, plot_axes):
    """Texts, ids and group names full of markup (and a '$' that matplotlib would read as
    maths) come out as text; a duplicate id stays out of the shares, as out of the pool."""
    payload = "<script>alert('x')</script></td></tr></table><img src=x onerror=alert(1)>"
    group = "<b>web</b> $x"
    prose = [
        {"doc": f"d{i}", "text": t, "kind": "plain"} for i, t in enumerate(stdlib_paragraphs(20))
    ]
    longest = {"doc": "<i>id</i>", "text": f"{payload} " * 40, "kind": group}
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [*prose[:10], longest])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", [*prose[10:], {**prose[0], "kind": group}])
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="topk", budget={"docs": 4})
    raw["input"].update(group_field="kind", id_field="doc")
    raw["select"]["topk"] = {"column": "n_chars"}
    raw["stages"] = {"stats": {}}
    manifest = local_run(parse_config(raw))
    assert manifest["rejected_by_reason"] == {"duplicate_id": 1}

    page = Path(write_report(str(tmp_path / "out"))).read_text(encoding="utf-8")
    assert_labelled(plot_axes)
    assert "<script" not in page and "<img src=x" not in page and "<i>id</i>" not in page
    assert "<b>web</b>" not in page
    top = examples(page, "top")
    assert top[0]["id"] == "<i>id</i>" and top[0]["kind"] == group
    assert top[0]["text"].startswith(payload)
    assert html.escape(payload) in page
    _, found = shares(page)
    assert found[group] == pytest.approx((1 / 21, 1 / 4), abs=1e-4)
    assert found["plain"][0] == pytest.approx(20 / 21, abs=1e-4)
    assert manifest["by_group"]["pool"] == {group: 1, "plain": 20}
