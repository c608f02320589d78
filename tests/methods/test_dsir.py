"""DSIR scoring checked against direct, one-n-gram-at-a-time computations on small texts."""

from __future__ import annotations

import collections
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distsel.algorithms import dsir as dsir_maths
from distsel.methods import dsir

TOKEN = re.compile(r"\w+|[^\w\s]+")
MASK64 = (1 << 64) - 1
BASE = 0x9E3779B97F4A7C15

TRICKY_TEXTS = [
    "Hello, world!! It's a TEST... of (punctuation) -- runs?!",
    "",
    "   \n\t  ",
    "one",
    "ΣΑΣ ΟΔΟΣ Straße İstanbul — naïve café, 東京は晴れ。",
    "tabs\tand\nnewlines\r\nand\x1fseparators\x0bhere",
    "a\x00b \ud800 lone surrogate",
    "x" * 300 + " " + "=" * 50 + " tail",
    "emoji 🙂🙂 and digits 12,345.67 and under_scores",
]


def stdlib_texts() -> list[str]:
    """Module docstrings that any Python installation ships, one document per paragraph."""
    docs = "\n\n".join(m.__doc__ or "" for m in (json, re, textwrap, collections, subprocess))
    return [p for p in docs.split("\n\n") if p.strip()]


def reference_hash(ngram: str) -> int:
    """The hash written out independently: polynomial over code points, then splitmix64."""
    value = sum((ord(c) + 1) * pow(BASE, j, 1 << 64) for j, c in enumerate(ngram)) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def ngrams_of(text: str, ngrams: int) -> list[str]:
    tokens = TOKEN.findall(text.lower())
    return [
        " ".join(tokens[i : i + n])
        for n in range(1, ngrams + 1)
        for i in range(len(tokens) - n + 1)
    ]


def brute_force_counts(texts: list[str], num_buckets: int, ngrams: int) -> np.ndarray:
    counts = np.zeros((len(texts), num_buckets))
    for row, text in enumerate(texts):
        for gram in ngrams_of(text, ngrams):
            counts[row, reference_hash(gram) % num_buckets] += 1
    return counts


# --- hashing and features ---------------------------------------------------------------------


def test_hash_is_pinned_and_matches_the_written_out_formula():
    # Pinned values: a change here silently moves every bucket of every stored feature.
    assert dsir_maths.ngram_hash("the") == 0xF0E0F33BA7A705CD
    assert dsir_maths.ngram_hash("the cat") == 0x4B147753F6A9B95E
    assert dsir_maths.ngram_hash("straße") == 0xD88760BA10D85D3D
    for text in TRICKY_TEXTS + stdlib_texts()[:20]:
        for gram in ngrams_of(text, 3):
            assert dsir_maths.ngram_hash(gram) == reference_hash(gram)


@pytest.mark.parametrize("num_buckets,ngrams", [(10_000, 2), (97, 1), (97, 3), (1, 2)])
def test_featurize_equals_per_ngram_counting(num_buckets, ngrams):
    texts = TRICKY_TEXTS + stdlib_texts()
    counts = dsir_maths.featurize(texts, num_buckets=num_buckets, ngrams=ngrams)
    assert counts.shape == (len(texts), num_buckets)
    np.testing.assert_array_equal(counts, brute_force_counts(texts, num_buckets, ngrams))


def test_featurize_is_the_same_when_the_batch_is_cut_into_small_chunks(monkeypatch):
    texts = TRICKY_TEXTS + stdlib_texts()
    monkeypatch.setattr(dsir_maths, "_CHUNK_CHARS", 64)  # most chunks hold one or two documents
    np.testing.assert_array_equal(
        dsir_maths.featurize(texts, 997), brute_force_counts(texts, 997, 2)
    )


def test_hashed_ngrams_lists_every_occurrence():
    texts = stdlib_texts()[:10]
    doc_index, bucket = dsir.hashed_ngrams(texts, 1000, 2)
    expected = sorted(
        (row, reference_hash(gram) % 1000)
        for row, text in enumerate(texts)
        for gram in ngrams_of(text, 2)
    )
    assert sorted(zip(doc_index.tolist(), bucket.tolist(), strict=True)) == expected


def test_features_do_not_depend_on_the_batch():
    texts = TRICKY_TEXTS + stdlib_texts()
    together = dsir_maths.featurize(texts, 500)
    alone = np.vstack([dsir_maths.featurize([text], 500) for text in texts])
    np.testing.assert_array_equal(together, alone)
    assert dsir_maths.featurize([], 500).shape == (0, 500)
    assert dsir_maths.featurize([""], 500).sum() == 0


def test_features_are_the_same_in_another_process_with_another_hash_seed():
    texts = stdlib_texts()[:15]
    script = (
        "import json, sys; from distsel.algorithms import dsir as dsir_maths; "
        "texts = json.load(sys.stdin); "
        "print(json.dumps(dsir_maths.featurize(texts, 997).astype(int).tolist()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    np.testing.assert_array_equal(
        np.array(json.loads(result.stdout)), dsir_maths.featurize(texts, 997)
    )


# --- model and weights ------------------------------------------------------------------------


def small_model(num_buckets: int = 257):
    target = [p for p in stdlib_texts() if "json" in p.lower() or "JSON" in p]
    raw = stdlib_texts()
    target_counts = dsir_maths.featurize(target, num_buckets)
    raw_counts = dsir_maths.featurize(raw, num_buckets)
    return raw, target_counts, raw_counts


def test_fit_follows_the_reference_formula():
    _, target_counts, raw_counts = small_model()
    t, r = target_counts.sum(axis=0), raw_counts.sum(axis=0)
    expected = [
        math.log(t[b] / t.sum() + 1e-8) - math.log(r[b] / r.sum() + 1e-8) for b in range(len(t))
    ]
    np.testing.assert_allclose(dsir.fit_log_diff(target_counts, raw_counts), expected, rtol=1e-12)
    np.testing.assert_allclose(dsir.fit_log_diff(t, r), expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(dsir_maths.fit_ngram_model(r + 1, smoothing=0.0)).sum(), 1.0)
    with pytest.raises(ValueError):
        dsir_maths.fit_ngram_model(np.zeros(10))


def test_weights_equal_a_dictionary_computation():
    raw, target_counts, raw_counts = small_model()
    log_diff = dsir.fit_log_diff(target_counts, raw_counts)
    counts = dsir_maths.featurize(raw, len(log_diff))
    plain, normalised = [], []
    for text in raw:
        buckets = collections.Counter(reference_hash(g) % len(log_diff) for g in ngrams_of(text, 2))
        weight = sum(n * log_diff[b] for b, n in buckets.items())
        plain.append(weight)
        normalised.append(weight / max(1, sum(buckets.values())))
    assert np.allclose(dsir_maths.log_importance_weights(counts, log_diff), plain)
    assert np.allclose(
        dsir_maths.log_importance_weights(counts, log_diff, length_normalize=True), normalised
    )
    assert np.allclose(dsir_maths.text_log_importance_weights(raw, log_diff), plain)
    assert np.allclose(
        dsir_maths.text_log_importance_weights(raw, log_diff, length_normalize=True), normalised
    )
    np.testing.assert_array_equal(
        dsir.total_ngram_counts(raw, len(log_diff)), raw_counts.sum(axis=0)
    )


def test_length_normalisation_lets_a_short_on_target_document_beat_a_long_one():
    on_target, generic = "the cat purred on the mat", "it was a quiet day in the town"
    off_topic = ["stock prices fell sharply as markets closed", "the court ruled on appeal"]
    target = [on_target, generic]
    raw = off_topic * 5 + [generic] * 4 + [on_target]  # generic n-grams are common in raw too
    log_diff = dsir.fit_log_diff(dsir_maths.featurize(target), dsir_maths.featurize(raw))
    pool = [on_target, " ".join([generic] * 12), *off_topic]
    counts = dsir_maths.featurize(pool)
    plain = dsir_maths.log_importance_weights(counts, log_diff)
    normalised = dsir_maths.log_importance_weights(counts, log_diff, length_normalize=True)
    assert plain[1] > plain[0] > 0 > plain[2]  # unnormalised: the long document wins on length
    assert normalised[0] > normalised[1] > 0 > normalised[2]  # per n-gram: the short one wins
    assert list(dsir_maths.topk(plain, 1)) == [1]
    assert list(dsir_maths.topk(normalised, 1)) == [0]


# --- resampling -------------------------------------------------------------------------------


def test_topk_orders_by_weight_and_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 5, size=200).astype(float)
    for k in (0, 1, 7, 50, 199, 200, 500):
        expected = np.argsort(-weights, kind="stable")[:k]
        np.testing.assert_array_equal(dsir_maths.topk(weights, k), expected)
    with pytest.raises(ValueError):
        dsir_maths.topk(np.array([1.0, np.nan]), 1)


def test_gumbel_topk_is_seeded_and_draws_distinct_indices():
    weights = np.random.default_rng(1).normal(size=1000)
    first = dsir_maths.gumbel_topk(weights, 100, seed=7)
    assert len(first) == 100 and len(set(first.tolist())) == 100
    np.testing.assert_array_equal(first, dsir_maths.gumbel_topk(weights, 100, seed=7))
    assert not np.array_equal(first, dsir_maths.gumbel_topk(weights, 100, seed=8))
    assert sorted(dsir_maths.gumbel_topk(weights[:5], 10, seed=0).tolist()) == [0, 1, 2, 3, 4]
    excluded = weights.copy()
    excluded[:10] = -np.inf
    assert not set(dsir_maths.gumbel_topk(excluded, 990, seed=3).tolist()) & set(range(10))


def test_gumbel_topk_samples_without_replacement_in_proportion_to_exp_weight():
    log_weights = np.log(np.array([0.6, 0.3, 0.1]))
    p = np.exp(log_weights) / np.exp(log_weights).sum()
    repeats = 20_000
    pairs = collections.Counter(
        tuple(dsir_maths.gumbel_topk(log_weights, 2, seed=s).tolist()) for s in range(repeats)
    )
    first = np.array([sum(n for (i, _), n in pairs.items() if i == a) for a in range(3)])
    np.testing.assert_allclose(first / repeats, p, atol=0.015)
    for (i, j), n in pairs.items():  # P(i then j) = p_i · p_j / (1 − p_i)
        assert abs(n / repeats - p[i] * p[j] / (1 - p[i])) < 0.015


def test_gumbel_noise_from_keys_is_standard_gumbel():
    keys = np.random.default_rng(2).integers(0, 2**64, size=200_000, dtype=np.uint64)
    noise = dsir.gumbel_noise_from_keys(keys)
    assert np.isfinite(noise).all()
    assert abs(noise.mean() - np.euler_gamma) < 0.01
    assert abs(noise.var() - np.pi**2 / 6) < 0.03
    weights = np.zeros(len(keys))
    np.testing.assert_array_equal(
        dsir_maths.gumbel_topk(weights, 5, noise=noise), np.argsort(-noise, kind="stable")[:5]
    )


# --- KL reduction -----------------------------------------------------------------------------


def loop_kl(p_counts, q_counts, alpha):
    p_total = sum(p_counts) + alpha * len(p_counts)
    q_total = sum(q_counts) + alpha * len(q_counts)
    kl = 0.0
    for a, b in zip(p_counts, q_counts, strict=True):
        p, q = (a + alpha) / p_total, (b + alpha) / q_total
        if p > 0:
            kl += p * math.log(p / q)
    return kl


def test_kl_equals_a_loop_and_the_reduction_rewards_on_target_selections():
    raw, target_counts, raw_counts = small_model(num_buckets=101)
    t, r = target_counts.sum(axis=0).tolist(), raw_counts.sum(axis=0).tolist()
    for alpha in (1.0, 0.01):
        assert math.isclose(
            dsir_maths.kl_divergence(t, r, alpha), loop_kl(t, r, alpha), rel_tol=1e-12
        )
    assert dsir_maths.kl_divergence(t, t) == pytest.approx(0.0, abs=1e-12)
    assert dsir_maths.kl_divergence(target_counts, raw_counts) == pytest.approx(loop_kl(t, r, 1.0))

    log_diff = dsir.fit_log_diff(target_counts, raw_counts)
    weights = dsir_maths.log_importance_weights(raw_counts, log_diff)
    best, worst = dsir_maths.topk(weights, 5), dsir_maths.topk(-weights, 5)
    reduction_best = dsir_maths.kl_reduction(target_counts, raw_counts, raw_counts[best])
    reduction_worst = dsir_maths.kl_reduction(target_counts, raw_counts, raw_counts[worst])
    assert reduction_best > 0 > reduction_worst
    assert reduction_best == pytest.approx(
        loop_kl(t, r, 1.0) - loop_kl(t, raw_counts[best].sum(axis=0).tolist(), 1.0)
    )
