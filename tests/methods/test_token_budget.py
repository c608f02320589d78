"""Under a token budget no selector prefers a document for its length alone: each short text
also sits in the pool four times over as a long document, and a length-free ranking takes the
short and the long copy alike."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import stdlib_paragraphs

from distsel.algorithms import dsir as dsir_maths
from distsel.core.config import parse_config
from distsel.core.pool import Pool, random_keys
from distsel.core.selector import with_resolved_budget
from distsel.methods import dsir
from distsel.methods.classifier import ClassifierSelector, fit_target_classifier
from distsel.methods.dsir import DsirSelector
from distsel.methods.similarity import ngram_features

REPEATS = 4
TARGET = [
    "The socket connects to the server over TCP and sends an HTTP request with headers.",
    "Parse the URL, open a connection, and read the response body from the server.",
]


def pool_of(paragraphs: list[str]) -> tuple[list[str], Pool]:
    """Each paragraph once (short) and four times over (long), interleaved."""
    texts = [copy for p in paragraphs for copy in (p, " ".join([p] * REPEATS))]
    count = len(texts)
    pool = Pool(
        parts=["p"],
        part_index=np.zeros(count, dtype=np.int64),
        row_index=np.arange(count),
        tokens=np.asarray([-(-len(t) // 4) for t in texts], dtype=np.int64),
        random_key=random_keys([str(i) for i in range(count)], 0),
    )
    return texts, pool


def config(method: str, **options) -> object:
    raw = {
        "input": {"paths": ["in/"]},
        "output": {"path": "out"},
        "target": {"paths": ["target.jsonl"]},
        "select": {"method": method, "budget": {"tokens_share": 0.2}, **options},
    }
    return parse_config(raw)


def short_share(chosen: np.ndarray) -> float:
    """The share of chosen documents that are the short copy."""
    return float(np.mean(np.asarray(chosen) % 2 == 0))


def dsir_scores(texts: list[str], pool: Pool) -> None:
    counts, target = dsir_maths.featurize(texts), dsir_maths.featurize(TARGET)
    log_diff = dsir.fit_log_diff(target, counts)
    pool.scores["dsir_log_weight"] = dsir_maths.log_importance_weights(counts, log_diff)
    pool.scores["dsir_log_weight_per_ngram"] = dsir_maths.log_importance_weights(
        counts, log_diff, length_normalize=True
    )


def classifier_scores(texts: list[str], pool: Pool) -> None:
    options = parse_config({"input": {"paths": ["in/"]}, "output": {"path": "out"}}).stage_options(
        "classifier"
    )
    scorer = fit_target_classifier(TARGET * 5, texts[::7], options, seed=0)
    features = ngram_features(texts, options.num_buckets, options.ngrams)
    pool.scores["classifier_score"] = np.asarray(
        features @ scorer.coef + scorer.intercept, dtype=np.float64
    ).ravel()


@pytest.fixture(scope="module")
def pool_and_texts():
    return pool_of(stdlib_paragraphs(150))


def test_dsir_at_its_defaults_takes_short_and_long_copies_alike(pool_and_texts):
    texts, pool = pool_and_texts
    dsir_scores(texts, pool)
    cfg = with_resolved_budget(config("dsir"), pool)
    chosen, _ = DsirSelector().select(pool, cfg, None)
    assert 0.35 <= short_share(chosen) <= 0.65


def test_unnormalised_dsir_weights_fill_a_token_budget_with_short_copies(pool_and_texts):
    """What the test above guards against: Σ log_diff over an off-target document's n-grams is
    negative and grows with its length, so the short copies rank first."""
    texts, pool = pool_and_texts
    dsir_scores(texts, pool)
    plain = config("dsir", dsir={"length_normalize": False, "sampling": "topk"})
    cfg = with_resolved_budget(plain, pool)
    chosen, _ = DsirSelector().select(pool, cfg, None)
    assert short_share(chosen) > 0.7


def test_the_classifier_takes_short_and_long_copies_alike(pool_and_texts):
    texts, pool = pool_and_texts
    classifier_scores(texts, pool)
    cfg = with_resolved_budget(config("classifier"), pool)
    chosen, _ = ClassifierSelector().select(pool, cfg, None)
    assert 0.35 <= short_share(chosen) <= 0.65
