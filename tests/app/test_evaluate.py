"""The evaluation of a selection: the bigram model behind `evaluation.ngram_lm`, its counts summed
part by part, the warning when the selection fits the target worse than the pool, and the
evaluation lines of the run's summary."""

from __future__ import annotations

import logging
import math
import re
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel.algorithms.dsir import TOKEN_PATTERN, kl_divergence, ngram_hash, total_ngram_counts
from distsel.app import evaluate, pipeline
from distsel.app.cli import summary
from distsel.app.evaluate import (
    BigramCounts,
    BigramQuery,
    NgramJob,
    bigram_counts,
    bigram_log_prob,
    cross_entropy,
    pool_text_counts,
    unigram_log_prob,
)
from distsel.core.config import parse_config
from distsel.core.executor import LocalExecutor, RayExecutor
from distsel.core.pool import Pool
from distsel.core.storage import Store
from distsel.methods.dsir import pool_ngram_counts, target_ngram_counts

PROSE = stdlib_paragraphs(300)


def python_code(count: int) -> list[str]:
    """Blocks of the standard library's source code: text unlike its docstrings' prose."""
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    source = re.sub(r'""".*?"""', "", source, flags=re.S)
    blocks = [b.strip() for b in source.split("\n\n") if len(b.strip()) > 40]
    assert len(blocks) >= count
    return blocks[:count]


def brute_force_model(texts: list[str], buckets: int, prior: float) -> np.ndarray:
    """P[v, w] = P(w | v) from the docstrings' formulas, counted token by token in Python."""
    unigrams, pairs = Counter(), Counter()
    for text in texts:
        words = [ngram_hash(t) % buckets for t in re.findall(TOKEN_PATTERN, text.lower())]
        unigrams.update(words)
        pairs.update(zip(words, words[1:], strict=False))
    total, types = sum(unigrams.values()), len(unigrams)
    uni = [(unigrams[w] + types / buckets) / (total + types) for w in range(buckets)]
    model = np.zeros((buckets, buckets))
    for v in range(buckets):
        context = sum(pairs[v, w] for w in range(buckets))
        for w in range(buckets):
            model[v, w] = (pairs[v, w] + prior * uni[w]) / (context + prior)
    return model


@pytest.mark.parametrize("paragraphs", [20, 300])  # 300: over 64 Ki characters, hashed in chunks
def test_bigram_model_sums_to_one_and_matches_a_brute_force_count(paragraphs):
    buckets, prior, texts = 16, 3.0, PROSE[:paragraphs]
    query = BigramQuery.everything(buckets)
    counts = bigram_counts(texts, query)
    words = np.arange(buckets)
    assert np.exp(unigram_log_prob(counts, words)).sum() == pytest.approx(1, abs=1e-12)
    model = np.array(
        [np.exp(bigram_log_prob(counts, query, np.full(buckets, v), words, prior)) for v in words]
    )
    np.testing.assert_allclose(model.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(model, brute_force_model(texts, buckets, prior), rtol=1e-12)
    # A document's first token has no context: the unigram model.
    start = bigram_log_prob(counts, query, np.full(buckets, -1), words, prior)
    np.testing.assert_allclose(start, unigram_log_prob(counts, words))


def test_model_without_counts_is_uniform_and_a_pair_outside_the_query_is_an_error():
    query = BigramQuery.of(["a b c"], buckets=64)
    empty = BigramCounts.zeros(query)
    np.testing.assert_allclose(cross_entropy(["a b c"], empty, query), math.log(64))
    with pytest.raises(ValueError, match="outside the query"):
        a, z = (ngram_hash(t) % 64 for t in "az")
        bigram_log_prob(bigram_counts(["a z"], query), query, np.array([a]), np.array([z]))


def test_target_is_predicted_best_by_a_model_of_the_same_text():
    target, unrelated = PROSE[:60], python_code(25)
    query = BigramQuery.of(target)
    same = cross_entropy(target, bigram_counts(target, query), query)
    other = cross_entropy(target, bigram_counts(unrelated, query), query)
    alike = cross_entropy(target, bigram_counts(PROSE[60:200], query), query)
    assert same < alike < other
    assert 0 < same < math.log(query.buckets)


@pytest.mark.parametrize("on_ray", [False, True], ids=["local", "ray"])
def test_counts_summed_part_by_part_equal_the_counts_of_the_whole(tmp_path, request, on_ray):
    """Each part is counted in a task of its own (on Ray: in a worker); the sums are exact."""
    texts = PROSE[:100] + python_code(20)
    store = Store(str(tmp_path))
    parts = {"a.parquet": texts[:37], "b.parquet": texts[37:38], "c.parquet": texts[38:]}
    for name, part in parts.items():
        store.write_table(f"docs/{name}", pa.table({"text": part}))
    query = BigramQuery.of(PROSE[200:260], buckets=1 << 12)
    some = [np.array([0, 5, 36]), np.array([], dtype=np.int64), np.array([1, 2, 81])]
    if on_ray:
        request.getfixturevalue("ray_local")
    with (RayExecutor() if on_ray else LocalExecutor()).active():
        job = NgramJob(1 << 10, 2, (some, None))
        (summed, subset), ngrams = pool_text_counts(
            store, sorted(parts), query, row_sets=(None, some), ngrams=job
        )
    whole = bigram_counts(texts, query)
    picked = bigram_counts([texts[i] for i in (0, 5, 36, 39, 40, 119)], query)
    for name in ("unigrams", "contexts", "pairs"):
        np.testing.assert_array_equal(getattr(summed, name), getattr(whole, name))
        np.testing.assert_array_equal(getattr(subset, name), getattr(picked, name))
    assert whole.unigrams.sum() > picked.unigrams.sum() > 0 and picked.pairs.sum() > 0
    assert len(whole.unigrams) == 1 << 12 and len(whole.pairs) == len(query.pairs)
    picked_texts = [texts[i] for i in (0, 5, 36, 39, 40, 119)]
    np.testing.assert_array_equal(ngrams[0], total_ngram_counts(picked_texts, 1 << 10, 2))
    np.testing.assert_array_equal(ngrams[1], total_ngram_counts(texts, 1 << 10, 2))


def target_config(tmp_path: Path, target: list[str], **select):
    texts = PROSE[:120] + python_code(25)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    raw = base_config([corpus], tmp_path / "out", **select)
    path = write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in target])
    raw["target"] = {"paths": [str(path)]}
    return parse_config(raw)


def code_and_prose(tmp_path: Path) -> tuple[Store, Pool, list[str]]:
    """Two parts, 25 blocks of code then 100 paragraphs of prose, and their pool."""
    store = Store(str(tmp_path / "out"))
    parts = {"code.parquet": python_code(25), "prose.parquet": PROSE[:100]}
    for name, texts in parts.items():
        store.write_table(f"docs/{name}", pa.table({"text": texts}))
    texts = [t for part in parts.values() for t in part]
    pool = Pool(
        parts=list(parts),
        part_index=np.repeat([0, 1], [25, 100]),
        row_index=np.r_[np.arange(25), np.arange(100)],
        tokens=np.array([math.ceil(len(t) / 4) for t in texts]),
        random_key=np.random.default_rng(0).integers(0, 2**63, len(texts)).astype(np.uint64),
    )
    return store, pool, texts


def test_the_kl_section_counts_the_pool_and_the_selection_as_dsir_does(tmp_path):
    """KL from the evaluation's one read equals KL from DSIR's own counts of the pool (read
    again) and of the selected texts; with DSIR's pool counts handed over, the same."""
    config = target_config(tmp_path, PROSE[200:260])
    store, pool, texts = code_and_prose(tmp_path)
    chosen = np.r_[3, 30:70]
    buckets, ngrams = config.stage_options("dsir").num_buckets, config.stage_options("dsir").ngrams
    with LocalExecutor().active():
        kl, _ = evaluate.target_sections(config, store, pool, chosen)
        whole = pool_ngram_counts(store, pool.parts, buckets, ngrams)
        handed = evaluate.target_sections(config, store, pool, chosen, pool_counts=whole)[0]
    target = target_ngram_counts(config, buckets, ngrams)
    picked = total_ngram_counts([texts[i] for i in chosen], buckets, ngrams)
    assert kl["kl_target_pool"] == round(kl_divergence(target, whole), 6)
    assert kl["kl_target_selection"] == round(kl_divergence(target, picked), 6)
    assert handed == kl and kl["buckets"] == buckets and kl["ngrams"] == ngrams


def test_a_selection_worse_than_random_gives_one_warning(tmp_path, caplog):
    config = target_config(tmp_path, PROSE[200:260])
    store, pool, _ = code_and_prose(tmp_path)

    def section(chosen: np.ndarray) -> dict:
        return evaluate.target_sections(config, store, pool, chosen)[1]

    caplog.set_level(logging.INFO, logger="distsel")
    with LocalExecutor().active():
        worse = section(np.arange(25))  # all the code
        better = section(np.arange(25, 60))  # some prose
        same = section(np.arange(125))

    assert worse["xent_reduction"] < 0 < better["xent_reduction"]
    assert same["xent_reduction"] == 0 and same["random_tokens"] == same["pool_tokens"]
    assert worse["target_xent_pool"] == better["target_xent_pool"] == same["target_xent_pool"]
    assert worse["target_xent_pool"] < better["target_xent_selection"]  # more text, fewer unknowns
    for result in (worse, better):
        assert 0.8 < result["random_tokens"] / result["selection_tokens"] <= 1.2
    assert worse["buckets"] == evaluate.LM_BUCKETS and worse["prior"] == evaluate.LM_PRIOR
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "warning: the selection looks less like the target than a random selection of its size "
        f"does (target cross-entropy {worse['target_xent_selection']:.2f} vs "
        f"{worse['target_xent_random']:.2f} nats/token under bigram models); check the target "
        "files and the method"
    ]
    assert warnings[0].name == "distsel"


def test_random_baseline_is_the_random_selectors_prefix_of_the_same_tokens():
    pool = Pool(
        parts=["a"],
        part_index=np.zeros(5, dtype=np.int32),
        row_index=np.arange(5),
        tokens=np.array([10, 20, 30, 40, 50]),
        random_key=np.array([4, 2, 0, 3, 1], dtype=np.uint64),
    )
    assert evaluate.random_baseline(pool, np.array([3, 4])).tolist() == [2, 4]  # 30 + 50 ≤ 90
    assert evaluate.random_baseline(pool, np.array([0])).tolist() == []
    assert evaluate.random_baseline(pool, np.arange(5)).tolist() == [2, 4, 1, 3, 0]


def test_rows_per_part_equal_a_filter_per_part():
    rng = np.random.default_rng(3)
    parts = rng.integers(0, 7, 200).astype(np.int32)
    pool = Pool(
        parts=[f"p{i}" for i in range(7)],
        part_index=np.sort(parts),
        row_index=rng.integers(0, 1000, 200),
        tokens=np.ones(200, dtype=np.int64),
        random_key=np.arange(200, dtype=np.uint64),
    )
    chosen = rng.permutation(200)[:80]
    expected = [pool.row_index[chosen][pool.part_index[chosen] == i] for i in range(7)]
    got = evaluate.rows_per_part(pool, chosen)
    assert [r.tolist() for r in got] == [r.tolist() for r in expected]


def test_without_target_there_is_no_section(tmp_path):
    config = parse_config(base_config([tmp_path / "x.jsonl"], tmp_path / "out"))
    assert evaluate.target_sections(config, Store(str(tmp_path)), None, None) == (None, None)


def test_run_reports_the_cross_entropies_in_its_manifest_and_summary(tmp_path, caplog):
    config = target_config(tmp_path, PROSE[200:260], method="dsir", budget={"docs": 30})
    caplog.set_level(logging.INFO, logger="distsel")
    with LocalExecutor().active():
        manifest = pipeline.run(config)
    lm = manifest["evaluation"]["ngram_lm"]
    assert lm["target_xent_random"] - lm["target_xent_selection"] == pytest.approx(
        lm["xent_reduction"], abs=2e-6
    )
    assert lm["xent_reduction"] > 0, "DSIR picks prose for a prose target, random some code"
    assert lm["target_tokens"] > 1000 and manifest["evaluation"]["kl"] is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    sent = [r.getMessage().split(":")[0] for r in caplog.records if "parts sent" in r.getMessage()]
    assert sent == ["select", "evaluate"], "the random baseline's heads are the evaluation's"
    text = summary(manifest, str(tmp_path / "out"))
    assert f"{lm['target_xent_selection']:.3f}" in text and "bigram xent" in text


def test_summary_prints_the_evaluation():
    manifest = {
        "wall_seconds": 12.34,
        "input_docs": 1000,
        "accepted_docs": 990,
        "rejected_docs": 10,
        "rejected_by_reason": {"empty_text": 10},
        "selected_docs": 100,
        "selected_tokens_approx": 25000,
        "evaluation": {
            "kl": {"kl_target_pool": 0.3295, "kl_target_selection": 0.354, "kl_reduction": -0.0245},
            "ngram_lm": {
                "target_xent_pool": 5.7512,
                "target_xent_random": 6.0512,
                "target_xent_selection": 5.8731,
                "xent_reduction": 0.1781,
            },
            "labels": {
                "field": "topic",
                "pool": {"networking": 0.1, "text": 0.9},
                "selected": {"networking": 0.45},
            },
        },
    }
    lines = summary(manifest, "out").splitlines()
    assert lines[-6:] == [
        "  towards the target            pool  selected",
        "    bigram xent (nats/tok)     5.751     5.873   reduction +0.178 from random 6.051",
        "    KL(target ‖ ·)             0.330     0.354   reduction -0.025",
        "  topic share                   pool  selected",
        "    networking                 10.0%     45.0%",
        "    text                       90.0%      0.0%",
    ]
    manifest["similarity"] = {"near_target_tokens": 0.4555}
    lines = summary(manifest, "out").splitlines()
    assert lines[-4] == "    tokens near a target                 45.6%", (
        "the similarity selector's"
    )
    manifest["evaluation"] = {"kl": None, "ngram_lm": None, "labels": None}
    assert "towards the target" not in summary(manifest, "out")
    del manifest["evaluation"]
    assert summary(manifest, "out").splitlines()[-1].startswith("  selected")
