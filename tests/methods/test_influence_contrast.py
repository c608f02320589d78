"""Contrastive influence (`contrast: pool`) on a synthetic topic-level target: a tiny Llama that
knows the topics but not the target's style, and the influence stage's pool sample and fit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import base_config, train_tiny_llama, write_jsonl
from scipy.stats import rankdata

from distsel.algorithms.influence import InfluenceScorer
from distsel.core.config import parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.stage import Resources, StageContext, prepare_stage
from distsel.core.storage import Store
from distsel.methods import proxy as proxy_stage
from distsel.methods import proxy_model
from distsel.methods.influence import InfluenceOptions, InfluenceStage
from distsel.methods.similarity import sample_texts

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOPICS, TOPIC_WORDS, COMMON_WORDS = 4, 24, 16
# A sentence: four style words around five content words, 70% from the document's topic.
STYLES = {"target": ("the", "of", "and", "."), "other": ("a", "in", "or", ";")}
TOPICAL = 0.7
MAX_LENGTH = 128


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def document(rng: np.random.Generator, topic: int, style: str) -> str:
    first, second, third, end = STYLES[style]

    def word() -> str:
        if rng.random() < TOPICAL:
            return f"t{topic}w{rng.integers(TOPIC_WORDS)}"
        return f"c{rng.integers(COMMON_WORDS)}"

    words: list[str] = []
    for _ in range(rng.integers(3, 7)):
        words += [first, word(), second, word(), word(), third, word(), end]
    return " ".join(words)


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"t{k}w{i}" for k in range(TOPICS) for i in range(TOPIC_WORDS)]
    words += [f"c{i}" for i in range(COMMON_WORDS)] + [w for s in STYLES.values() for w in s]
    vocab = {word: index for index, word in enumerate(["<pad>", "<unk>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")


@pytest.fixture(scope="module")
def proxy() -> dict:
    """A tiny Llama trained (200 AdamW steps) on documents of all topics in the other style only:
    the target's style words are new to it, so they dominate its target gradient."""
    tokenizer = word_tokenizer()
    rng = np.random.default_rng(1)
    texts = [document(rng, int(rng.integers(TOPICS)), "other") for _ in range(800)]
    model, _ = train_tiny_llama(tokenizer, texts, steps=200)
    return {"model": model, "tokenizer": tokenizer}


def draw(seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """100 target documents (topic 0, target style) and a pool of 200 in the target's style: 50
    on topic 0, 150 on topics 1–3; and the pool's on-topic mask."""
    rng = np.random.default_rng(100 + seed)
    target = [document(rng, 0, "target") for _ in range(100)]
    pool = [document(rng, 0, "target") for _ in range(50)]
    pool += [document(rng, 1 + i % 3, "target") for i in range(150)]
    return target, pool, np.arange(200) < 50


def auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half."""
    ranks = rankdata(scores)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_contrast_separates_the_target_topic_within_its_style(proxy: dict) -> None:
    """Mean AUC (on-topic vs off-topic pool documents, all in the target's style) over two
    draws; the pool sample for g_P is the scored pool itself.

    Over 12 proxies (training data and torch seeds varied), mean AUC raw/normalised: EK-FAC plain
    0.33–0.91, contrastive 0.98–1.00 in every one; identity raw 0.27–0.73 → 0.64–0.98 (at least
    +0.13), while identity normalised gains less and not always (0.78 → 0.74 once): without
    whitening, the large style direction keeps the sampling noise of the two means. The bounds
    below hold for all 12; this proxy's numbers are reported."""
    measured: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed in range(2):
        target, pool, on_topic = draw(seed)
        for curvature in ("ekfac", "identity"):
            for contrast in ("none", "pool"):
                options = InfluenceOptions(curvature=curvature, contrast=contrast)
                scorer = InfluenceScorer(
                    proxy["model"], proxy["tokenizer"], options, MAX_LENGTH, "cpu"
                )
                scorer.fit(target, pool if contrast == "pool" else None)
                raw, normalized = scorer.score_both(pool)
                values = (auc(raw, on_topic), auc(normalized, on_topic))
                measured.setdefault((curvature, contrast), []).append(values)
    means = {key: np.mean(values, axis=0) for key, values in measured.items()}
    report("\nAUC on-topic vs off-topic, same style, mean of 2 draws (raw, normalised):")
    for (curvature, contrast), (raw, normalized) in means.items():
        report(f"  {curvature:<9} {contrast:<5} {raw:.3f}  {normalized:.3f}")
    plain, contrastive = means["ekfac", "none"], means["ekfac", "pool"]
    assert np.all(contrastive >= 0.95)
    assert np.all(contrastive >= plain + 0.05)
    assert means["identity", "pool"][0] >= means["identity", "none"][0] + 0.1


# ---------------------------------------------------------------- the stage


@pytest.fixture
def run(tmp_path: Path, proxy: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A run folder with three docs parts (the pool of `draw(0)` and documents in the other
    style), a target file, and the proxy stubbed in for the stage."""
    target, pool, _ = draw(0)
    rng = np.random.default_rng(7)
    pool += [document(rng, int(rng.integers(TOPICS)), "other") for _ in range(40)]
    target_path = write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in target])
    store = Store(str(tmp_path / "out"))
    for index, start in enumerate(range(0, len(pool), 40)):
        texts = pool[start : start + 40]
        ids = [f"doc-{start + i}" for i in range(len(texts))]
        store.write_table(f"docs/part-{index:05d}.parquet", pa.table({"id": ids, "text": texts}))
    # where the stage imports them from when it prepares and scores
    monkeypatch.setattr(proxy_stage, "ensure_proxy", lambda context: ("stub", {"params": 1}))
    monkeypatch.setattr(
        proxy_model, "load_proxy", lambda *args, **kwargs: (proxy["model"], proxy["tokenizer"])
    )

    def config(**options: object):
        raw = base_config([target_path], tmp_path / "out", method="influence", budget={"docs": 5})
        raw.update(target={"paths": [str(target_path)]}, proxy={"max_length": 64}, seed=3)
        raw["stages"] = {"influence": options}
        return parse_config(raw)

    return {
        "store": store,
        "parts": store.list("docs", ".parquet"),
        "target": target,
        "config": config,
    }


def prepared(run: dict, **options: object) -> InfluenceStage:
    stage = InfluenceStage(Resources(num_cpus=1), run["config"](**options))
    with LocalExecutor().active():
        stage.prepare(StageContext(stage.config, run["store"], run["parts"]))
    return stage


def test_the_stage_fits_on_a_seeded_pool_sample(run: dict, proxy: dict) -> None:
    options = {"contrast": "pool", "contrast_docs": 30, "curvature": "kfac"}
    stage = prepared(run, **options)
    assert stage.summary["contrast"] == "pool" and stage.summary["contrast_docs"] == 30
    assert stage.contrast_sample["docs"] == 30
    assert stage.fingerprint()["contrast_sample"] == stage.contrast_sample
    with LocalExecutor().active():
        sample = sample_texts(run["store"], run["parts"], 30, seed=3)
    assert len(set(sample)) == 30
    direct = InfluenceScorer(
        proxy["model"], proxy["tokenizer"], stage.options, 64, "cpu", seed=3
    ).fit(run["target"], sample)
    for key, value in direct.state().items():
        np.testing.assert_array_equal(stage.arrays[key], value)
    again = prepared(run, **options)
    assert again.fingerprint() == stage.fingerprint()
    context = StageContext(stage.config, run["store"], run["parts"])
    other = prepared(run, **{**options, "contrast_docs": 20})
    assert other.fit_inputs(context) != stage.fit_inputs(context)
    assert other.fingerprint()["contrast_sample"] != stage.contrast_sample
    assert any(not np.array_equal(other.arrays[k], v) for k, v in stage.arrays.items())
    plain = prepared(run, curvature="kfac")
    assert "contrast_sample" not in plain.fingerprint()
    assert "contrast" not in plain.fingerprint()["options"], "earlier fingerprints hold"
    assert plain.summary["contrast"] == "none" and "contrast_docs" not in plain.summary


def test_the_stage_saves_and_restores_its_contrastive_fit(run: dict) -> None:
    config = run["config"](contrast="pool", contrast_docs=25, curvature="identity")
    context = StageContext(config, run["store"], run["parts"])
    first = InfluenceStage(Resources(num_cpus=1), config)
    with LocalExecutor().active():
        assert prepare_stage(first, context) is False
        restored = InfluenceStage(Resources(num_cpus=1), config)
        assert prepare_stage(restored, context) is True
        changed = run["config"](contrast="pool", contrast_docs=26, curvature="identity")
        assert prepare_stage(InfluenceStage(Resources(num_cpus=1), changed), context) is False
    assert restored.fingerprint() == first.fingerprint()
    assert restored.contrast_sample == first.contrast_sample
    for key, value in first.arrays.items():
        np.testing.assert_array_equal(restored.arrays[key], value)
