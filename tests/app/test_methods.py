"""The target-aware selectors run end to end and agree with direct math: on a real local Ray where
their stages pool actors or the driver sends them work (dsir, influence, Quad with influence), on
the LocalExecutor in this process where the check is the maths alone (Local == Ray:
tests/core/test_executor.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    base_config,
    read_folder,
    stdlib_paragraphs,
    tfidf_by_counting,
    torch_threads,
    write_jsonl,
)

from distsel.algorithms import dsir as dsir_maths
from distsel.app import pipeline
from distsel.core.config import parse_config
from distsel.core.executor import LocalExecutor
from distsel.methods import dsir

PARAGRAPHS = stdlib_paragraphs(160)


@pytest.fixture(scope="module")
def corpus_and_target(tmp_path_factory):
    """A pool of stdlib prose plus short 'recipe' texts; the target is more recipes."""
    root = tmp_path_factory.mktemp("methods")
    cooking = [
        f"Stir the {food} into the pan with butter, then bake the {food} for {m} minutes."
        for food in ("onions", "apples", "carrots", "potatoes", "pears", "leeks", "beans")
        for m in (10, 20, 30, 40, 50)
    ]
    prose = [{"text": p, "domain": "docs", "label": "prose"} for p in PARAGRAPHS[:120]]
    recipes = [{"text": t, "domain": "recipes", "label": "food"} for t in cooking[:30]]
    write_jsonl(root / "corpus" / "a.jsonl", prose[:60] + recipes[:15])
    write_jsonl(root / "corpus" / "b.jsonl", prose[60:] + recipes[15:])
    write_jsonl(root / "target.jsonl", [{"text": t} for t in cooking[30:]])
    return root / "corpus", root / "target.jsonl", prose + recipes, cooking[30:]


def method_config(output, corpus, target, method, **options):
    raw = base_config([corpus], output, method=method, budget={"docs": 15})
    raw["input"].update(group_field="domain", label_field="label", rows_per_part=40)
    raw["target"] = {"paths": [str(target)]}
    raw["select"].update(options)
    return parse_config(raw)


def local_run(config):
    with LocalExecutor().active():
        return pipeline.run(config)


def run(tmp_path, corpus, target, method, **options):
    config = method_config(tmp_path / method, corpus, target, method, **options)
    return config, pipeline.run(config)


@pytest.fixture(scope="module")
def dsir_scored(ray_local, tmp_path_factory, corpus_and_target):
    """The pool scored once by the dsir stage (the scoring phase only)."""
    corpus, target, _, _ = corpus_and_target
    output = tmp_path_factory.mktemp("dsir-scored") / "out"
    pipeline.run(method_config(output, corpus, target, "dsir"), phase="score")
    return output


def select_from(dsir_scored, tmp_path, corpus_and_target, method, **options):
    """The selection phase of `method` on a copy of the dsir-scored pool."""
    corpus, target, _, _ = corpus_and_target
    output = tmp_path / method
    shutil.copytree(dsir_scored, output)
    config = method_config(output, corpus, target, method, **options)
    return config, pipeline.run(config, phase="select")


def test_dsir_weights_and_kl_match_a_direct_computation(tmp_path, corpus_and_target, dsir_scored):
    _, _, pool, target_texts = corpus_and_target
    _, manifest = select_from(
        dsir_scored,
        tmp_path,
        corpus_and_target,
        "dsir",
        dsir={"sampling": "topk", "length_normalize": False},
    )

    texts = [d["text"] for d in pool]
    counts, target_counts = dsir_maths.featurize(texts), dsir_maths.featurize(target_texts)
    log_diff = dsir.fit_log_diff(target_counts, counts)
    expected = dict(zip(texts, dsir_maths.log_importance_weights(counts, log_diff), strict=True))
    scores = read_folder(tmp_path / "dsir" / "scores" / "dsir")
    docs = read_folder(tmp_path / "dsir" / "docs")
    by_id = dict(zip(docs["id"].to_pylist(), docs["text"].to_pylist(), strict=True))
    for doc_id, weight in zip(
        scores["id"].to_pylist(), scores["dsir_log_weight"].to_pylist(), strict=True
    ):
        assert weight == pytest.approx(expected[by_id[doc_id]], rel=1e-9, abs=1e-9)

    selected = read_folder(tmp_path / "dsir" / "selected")
    best = sorted(expected.values(), reverse=True)[:15]
    assert sorted(selected["dsir_log_weight"].to_pylist(), reverse=True) == pytest.approx(best)
    assert manifest["by_group"]["selected"] == {"recipes": 15}
    assert manifest["evaluation"]["labels"]["selected"] == {"food": 1.0}

    chosen = dsir_maths.featurize(selected["text"].to_pylist())
    kl = manifest["evaluation"]["kl"]
    assert kl["kl_target_pool"] == pytest.approx(
        dsir_maths.kl_divergence(target_counts, counts), abs=1e-6
    )
    assert kl["kl_target_selection"] == pytest.approx(
        dsir_maths.kl_divergence(target_counts, chosen), abs=1e-6
    )
    assert kl["kl_reduction"] > 0


def test_dsir_gumbel_sampling_is_seeded(tmp_path, corpus_and_target, dsir_scored):
    gumbel = {"sampling": "gumbel"}
    _, first = select_from(dsir_scored, tmp_path / "1", corpus_and_target, "dsir", dsir=gumbel)
    select_from(dsir_scored, tmp_path / "2", corpus_and_target, "dsir", dsir=gumbel)
    ids = [
        sorted(read_folder(p / "dsir" / "selected")["id"].to_pylist())
        for p in (tmp_path / "1", tmp_path / "2")
    ]
    assert ids[0] == ids[1]
    assert first["dsir"]["sampling"] == "gumbel"


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("topk", {"topk": {"column": "dsir_log_weight"}}),
        ("threshold", {"threshold": {"column": "dsir_log_weight"}}),
        ("stratified", {"stratified": {"column": "dsir_log_weight", "bins": 4}}),
    ],
)
def test_generic_selectors_on_a_score_column(
    tmp_path, corpus_and_target, dsir_scored, method, options
):
    _, manifest = select_from(dsir_scored, tmp_path, corpus_and_target, method, **options)
    selected = read_folder(tmp_path / method / "selected")
    scores = read_folder(tmp_path / method / "scores" / "dsir")["dsir_log_weight"].to_numpy()
    chosen = selected["dsir_log_weight"].to_numpy()
    assert manifest["selected_docs"] == len(chosen) == 15
    if method == "topk":
        assert np.allclose(np.sort(chosen), np.sort(scores)[-15:])
    if method == "threshold":
        median = np.median(scores)
        assert manifest["threshold"]["min_used"] == pytest.approx(median)
        assert (chosen >= median).all()
        assert manifest["threshold"]["passing_docs"] == (scores >= median).sum()
    if method == "stratified":
        edges = np.linspace(scores.min(), scores.max(), 5)
        strata = np.clip(np.searchsorted(edges, chosen, side="right") - 1, 0, 3)
        assert len(set(strata.tolist())) >= 3, "coverage: several strata are represented"


def nearest_share_by_sorting(docs: list[np.ndarray], targets: list[np.ndarray]) -> np.ndarray:
    """The similarity stage's default score, from full sorts of the views' mean cosines: the
    other documents nearer than the nearest target, and the margin between the two nearest."""
    out = []
    for i in range(len(docs[0])):
        to_targets = np.mean([t @ d[i] for d, t in zip(docs, targets, strict=True)], axis=0)
        others = np.mean([np.delete(d, i, axis=0) @ d[i] for d in docs], axis=0)
        nearest, others = np.sort(to_targets)[-1], np.sort(others)[::-1]
        closer = int(np.searchsorted(-others, -nearest, side="left"))
        out.append(1 / (1 + closer + (1 - (nearest - others[0])) / 4))
    return np.array(out)


@pytest.mark.slow
def test_similarity_matches_numpy_and_round_robins_over_tasks(tmp_path, corpus_and_target):
    from distsel.methods.embed import Embedder

    corpus, target, pool, target_texts = corpus_and_target
    second = write_jsonl(tmp_path / "modules.jsonl", [{"text": p} for p in PARAGRAPHS[120:140]])
    raw = base_config([corpus], tmp_path / "sim", method="similarity", budget={"docs": 20})
    raw["input"].update(group_field="domain", rows_per_part=40)
    raw["target"] = {"paths": [str(target), str(second)]}
    # float32 to compare with the brute-force reference at 1e-5; 64 tokens: a quarter of the work
    raw["embed"] = {"dtype": "float32", "max_length": 64}
    manifest = local_run(parse_config(raw))

    embedder = Embedder(num_threads=2, dtype="float32", max_length=64)
    texts = [d["text"] for d in pool]
    docs = embedder.embed(texts)
    # the pool under 5,000 documents: the whole pool is the reference sample (and the IDF's)
    views = [docs.astype(np.float64), tfidf_by_counting(texts, texts, 10_000)]
    expected = {
        task: nearest_share_by_sorting(
            views, [embedder.embed(examples), tfidf_by_counting(examples, texts, 10_000)]
        )
        for task, examples in (("target", target_texts), ("modules", PARAGRAPHS[120:140]))
    }
    scores = read_folder(tmp_path / "sim" / "scores" / "similarity")
    ids = read_folder(tmp_path / "sim" / "docs")
    text_of = dict(zip(ids["id"].to_pylist(), ids["text"].to_pylist(), strict=True))
    position = {t: i for i, t in enumerate(texts)}
    rows = [position[text_of[i]] for i in scores["id"].to_pylist()]
    for task, values in expected.items():
        got = scores[f"similarity_task_{task}"].to_numpy()
        assert np.allclose(got, values[rows], atol=1e-5)
    assert np.allclose(
        scores["similarity"].to_numpy(), np.maximum(*expected.values())[rows], atol=1e-5
    )

    selected = set(read_folder(tmp_path / "sim" / "selected")["text"].to_pylist())
    for task, values in expected.items():
        best_three = {texts[i] for i in np.argsort(-values)[:3]}
        assert best_three <= selected, f"round-robin takes the best of task {task}"
    assert manifest["by_group"]["selected"]["recipes"] >= 8
    assert manifest["similarity"]["columns"] == [
        "similarity_task_modules",
        "similarity_task_target",
    ]


@pytest.mark.slow
def test_betr_scores_the_pool_from_an_embedded_sample(tmp_path, corpus_and_target):
    corpus, target, _, _ = corpus_and_target
    raw = base_config([corpus], tmp_path / "betr", method="similarity", budget={"docs": 15})
    raw["input"].update(group_field="domain")
    raw["target"] = {"paths": [str(target)]}
    raw["embed"] = {"max_length": 64}
    raw["select"]["similarity"] = {"betr": True, "betr_sample": 100, "betr_top_fraction": 0.2}
    manifest = local_run(parse_config(raw))
    assert not (tmp_path / "betr" / "scores" / "embed").exists(), "only the sample is embedded"
    assert manifest["stages"]["betr"]["rows"] == 150
    assert manifest["by_group"]["selected"].get("recipes", 0) >= 12


TINY_PROXY = {
    "hidden": 32,
    "layers": 1,
    "heads": 4,
    "vocab_size": 512,
    "train_tokens": 20_000,
    "sample_docs": 200,
    "max_length": 64,
}


@pytest.fixture(scope="module")
def influence_run(ray_local, tmp_path_factory, corpus_and_target):
    """One influence top-k run, which trains its proxy; the other influence tests reuse both."""
    corpus, target, _, _ = corpus_and_target
    output = tmp_path_factory.mktemp("influence") / "inf"
    raw = base_config([corpus], output, method="influence", budget={"docs": 15})
    raw["input"].update(group_field="domain", rows_per_part=40)
    raw["target"] = {"paths": [str(target)]}
    raw["proxy"] = TINY_PROXY
    raw["stages"] = {"influence": {"num_cpus": 1, "pool_size": 1}}
    config = parse_config(raw)
    return config, pipeline.run(config), output


@pytest.mark.slow  # a proxy trained and influence scored in actor pools (the module fixture)
def test_influence_topk_trains_a_proxy_and_matches_a_direct_scorer(
    corpus_and_target, influence_run
):
    from distsel.algorithms.influence import InfluenceScorer
    from distsel.methods.proxy_model import load_proxy

    _, _, pool, target_texts = corpus_and_target
    config, manifest, output = influence_run
    proxy = manifest["stages"]["influence"]["summary"]["proxy"]
    assert proxy["params"] > 0 and proxy["train_tokens"] >= 20_000 and proxy["final_loss"] > 0
    texts = [d["text"] for d in pool]
    with torch_threads(1):
        model, tokenizer = load_proxy(str(output / "proxy"))
        scorer = InfluenceScorer(model, tokenizer, config.stage_options("influence"), 64, "cpu")
        raw, normalized = scorer.fit(target_texts).score_both(texts)
    scores = read_folder(output / "scores" / "influence")
    docs = read_folder(output / "docs")
    text_of = dict(zip(docs["id"].to_pylist(), docs["text"].to_pylist(), strict=True))
    for column, values in (("influence", raw), ("influence_normalized", normalized)):
        expected = dict(zip(texts, values, strict=True))
        got = [expected[text_of[i]] for i in scores["id"].to_pylist()]
        assert np.allclose(scores[column].to_numpy(), got, rtol=1e-4, atol=1e-6)
    assert config.select.options("influence").normalize, "the default ranks by normalised influence"
    chosen = read_folder(output / "selected")["influence_normalized"].to_numpy()
    best = np.sort(scores["influence_normalized"].to_numpy())[-15:]
    assert np.allclose(np.sort(chosen), best)


@pytest.mark.slow
def test_influence_pool_scores_groups_like_the_stage(corpus_and_target, influence_run):
    from distsel.core.runner import StagePool
    from distsel.core.stage import Resources, StageContext
    from distsel.core.storage import Store
    from distsel.methods.influence import InfluenceStage

    _, _, pool, _ = corpus_and_target
    config, _, output = influence_run
    store = Store(str(output))
    stage = InfluenceStage(Resources(num_cpus=1, pool_size=2), config)
    stage.prepare(StageContext(config, store, store.list("docs", ".parquet")))
    service = StagePool(stage, "influence")
    groups = [[d["text"] for d in pool[:3]], [d["text"] for d in pool[3:7]]]
    first, second = service.score(groups)
    service.close()
    scores = read_folder(output / "scores" / "influence")
    docs = read_folder(output / "docs")
    by_text = dict(zip(docs["text"].to_pylist(), scores["influence"].to_numpy(), strict=True))
    assert np.allclose(first, [by_text[t] for t in groups[0]], rtol=1e-4, atol=1e-6)
    assert np.allclose(second, [by_text[t] for t in groups[1]], rtol=1e-4, atol=1e-6)
    assert service.evaluated == 7


@pytest.mark.slow
def test_quad_selects_with_influence_on_draws_only(tmp_path, corpus_and_target, influence_run):
    corpus, target, _, _ = corpus_and_target
    raw = base_config([corpus], tmp_path / "quad", method="quad", budget={"docs": 15})
    raw["input"].update(group_field="domain", rows_per_part=40)
    raw["target"] = {"paths": [str(target)]}
    raw["embed"] = {"max_length": 64}
    raw["proxy"] = {**TINY_PROXY, "path": str(influence_run[2] / "proxy")}
    raw["select"]["quad"] = {
        "clusters": 6,
        "arms_per_round": 2,
        "draws_per_arm": 3,
        "docs_per_accept": 5,
        "max_evaluated": 0.1,
    }
    manifest = pipeline.run(parse_config(raw))
    quad = manifest["quad"]
    assert manifest["selected_docs"] == 15 and quad["within_cluster"] == "predicted"
    assert manifest["stages"]["select"]["held_docs"] == 15, "the driver held the selection only"
    assert quad["clusters"] == 6 and quad["evaluation_allowance_docs"] == 15
    draws = sum(len(h["arms"]) for h in quad["history"])
    assert quad["influence_evaluated_docs"] <= 3 * draws and quad["influence_evaluated_docs"] <= 15
    assert quad["stopped"].startswith(("budget reached", "evaluation allowance spent"))
    assert quad["score_column"] == "influence_normalized"
    assert not (tmp_path / "quad" / "scores" / "influence").exists(), "no full influence pass"
    assert sum(quad["selected_per_cluster"].values()) == 15
    assert [h["round"] for h in quad["history"]] == list(range(1, quad["rounds"] + 1))
    assert quad["influence"]["proxy"]["params"] > 0
    clusters = read_folder(tmp_path / "quad" / "selected")["cluster"].to_numpy()
    counts = np.bincount(clusters, minlength=6)
    assert {str(i): int(c) for i, c in enumerate(counts) if c} == quad["selected_per_cluster"]

    from distsel.app.report import write_report

    page = Path(write_report(str(tmp_path / "quad"))).read_text(encoding="utf-8")
    assert "<figcaption>Quad: reward per arm over rounds</figcaption>" in page
    assert "<figcaption>Quad: selected documents per cluster</figcaption>" in page


def test_classifier_scores_match_a_single_process_fit(ray_local, tmp_path, corpus_and_target):
    """Positives: the target; negatives: the pool documents with the smallest seeded keys. The
    stage's scores equal scikit-learn's decision function fitted here on the same rows."""
    from sklearn.linear_model import LogisticRegression

    from distsel.core.pool import random_keys
    from distsel.methods.similarity import ngram_features

    corpus, target, _, target_texts = corpus_and_target
    options = {"negatives": 50, "num_buckets": 4096}
    config, manifest = run(tmp_path, corpus, target, "classifier", classifier=options)
    docs = read_folder(tmp_path / "classifier" / "docs")
    ids, texts = docs["id"].to_pylist(), docs["text"].to_pylist()
    keys = random_keys(ids, config.seed)
    negatives = [texts[i] for i in np.argsort(keys, kind="stable")[:50]]
    features = ngram_features(target_texts + negatives, 4096, 2)
    labels = np.r_[np.ones(len(target_texts)), np.zeros(50)]
    reference = LogisticRegression(class_weight="balanced", random_state=config.seed)
    reference.fit(features, labels)
    decisions = reference.decision_function(ngram_features(texts, 4096, 2))
    expected = dict(zip(ids, decisions, strict=True))
    scored = read_folder(tmp_path / "classifier" / "scores" / "classifier")
    got = dict(zip(scored["id"].to_pylist(), scored["classifier_score"].to_pylist(), strict=True))
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[i] for i in ids], [expected[i] for i in ids], rtol=1e-6)
    assert manifest["stages"]["classifier"]["summary"]["positive_docs"] == len(target_texts)
    assert manifest["by_group"]["selected"]["recipes"] == 15, "every pick a recipe"


@pytest.mark.slow
def test_quad_puts_any_costlier_text_stage_behind_its_rewards(tmp_path, corpus_and_target):
    """`scorer: dsir`: the bandit computes the dsir column on its draws only, and its model and
    fill still find the target's documents."""
    corpus, target, _, _ = corpus_and_target
    raw = base_config([corpus], tmp_path / "quad-dsir", method="quad", budget={"docs": 15})
    raw["input"].update(group_field="domain", rows_per_part=40)
    raw["target"] = {"paths": [str(target)]}
    raw["embed"] = {"max_length": 64}
    raw["select"]["quad"] = {
        "clusters": 6,
        "scorer": "dsir",
        "score_column": "dsir_log_weight_per_ngram",
        "max_evaluated": 0.2,
    }
    manifest = local_run(parse_config(raw))
    quad = manifest["quad"]
    assert quad["score_column"] == "dsir_log_weight_per_ngram" and "dsir" in quad
    assert 0 < quad["influence_evaluated_docs"] <= quad["evaluation_allowance_docs"] == 30
    assert not (tmp_path / "quad-dsir" / "scores" / "dsir").exists(), "draws only"
    assert manifest["selected_docs"] == 15
    assert manifest["by_group"]["selected"].get("recipes", 0) >= 12
