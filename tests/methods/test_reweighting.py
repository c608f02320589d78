"""Loss-based weights (Sow et al. 2025) against the paper's formula worked by hand, and the
`weight` column `output.weights: loss` writes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel.algorithms.reweighting import lin_upper, loss_weights, normalised_losses


def test_weights_follow_the_formula_by_hand():
    """Losses 2, 3, 4, 6: ℓ̂ = −1, −0.5, 0, 1; LinUpper f = 0, 0.5, 1, 1; at r = 0.5,
    w = 4 · e^(2f) / Σ e^(2f) = 4 · (1, e, e², e²) / (1 + e + 2e²)."""
    losses = np.array([2.0, 3.0, 4.0, 6.0])
    assert normalised_losses(losses).tolist() == [-1.0, -0.5, 0.0, 1.0]
    assert lin_upper(normalised_losses(losses)).tolist() == [0.0, 0.5, 1.0, 1.0]
    e = math.e
    expected = 4 * np.array([1, e, e**2, e**2]) / (1 + e + 2 * e**2)
    assert loss_weights(losses, 0.5) == pytest.approx(expected)
    assert loss_weights(losses, 0.5).mean() == pytest.approx(1.0)


def test_equal_or_missing_losses_weigh_one_or_the_median():
    assert loss_weights(np.array([3.0, 3.0, 3.0])).tolist() == [1.0, 1.0, 1.0]
    weights = loss_weights(np.array([1.0, np.nan, 3.0, 2.0]), 1.0)
    assert weights[1] == pytest.approx(weights[3]), "NaN takes the median f (that of loss 2)"
    assert weights[0] < weights[3] == pytest.approx(weights[2])
    assert loss_weights(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="temperature"):
        loss_weights(np.array([1.0]), 0.0)


@pytest.mark.slow
def test_output_weights_add_the_proxy_loss_weight_column(tmp_path):
    from distsel.app import pipeline
    from distsel.core.config import parse_config
    from distsel.core.executor import LocalExecutor

    texts = stdlib_paragraphs(80)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": t} for t in texts])
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="random")
    raw["select"]["budget"] = {"docs": 30}
    raw["output"]["weights"] = "loss"
    raw["proxy"] = {
        "hidden": 32,
        "layers": 1,
        "heads": 2,
        "vocab_size": 512,
        "max_length": 64,
        "train_tokens": 4096,
        "tokenizer": "bpe",
    }
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))
    assert "perplexity" in manifest["stages"]
    selected = pq.read_table(tmp_path / "out" / "selected")
    assert selected.column_names[-1] == "weight" and selected.num_rows == 30
    scores = {
        r["id"]: r["perplexity_loss"]
        for r in pq.read_table(tmp_path / "out" / "scores" / "perplexity").to_pylist()
    }
    losses = np.array([scores[i] for i in selected["id"].to_pylist()])
    assert selected["weight"].to_numpy() == pytest.approx(loss_weights(losses, 0.5))
