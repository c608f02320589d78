"""Embedder: pooling, normalisation, order, truncation, on the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import stdlib_paragraphs

from distsel.methods.embed import Embedder, cpu_has_native_bf16, default_model_path
from distsel.methods.tokens import CHARS_PER_TOKEN_CUT, _encode

PARAGRAPHS = stdlib_paragraphs(24)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu", batch_size=4, dtype="float32")


@pytest.fixture(scope="module")
def bare():
    """The same model through plain transformers calls."""
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def bare_embed(bare, texts: list[str], weighting: str = "mean") -> np.ndarray:
    tokenizer, model = bare
    enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy().astype(np.float64)
    mask = enc["attention_mask"].numpy().astype(np.float64)
    if weighting == "position_weighted":
        mask = mask * np.arange(1, mask.shape[1] + 1)
    pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def long_sources(count: int) -> list[str]:
    """Standard-library source files longer than the pre-tokenization cut."""
    root = Path(sysconfig.get_paths()["stdlib"])
    limit = 256 * CHARS_PER_TOKEN_CUT
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]
    texts = [t for t in texts if len(t) > 2 * limit]
    assert len(texts) >= count
    return texts[:count]


def test_default_model_is_bundled():
    path = Path(default_model_path())
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_shape_dtype_and_unit_norm(embedder: Embedder):
    vectors = embedder.embed(PARAGRAPHS)
    assert embedder.dim == 384
    assert vectors.shape == (len(PARAGRAPHS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_mean_pooling_matches_bare_forward_pass(embedder: Embedder, bare):
    texts = PARAGRAPHS[:12]
    np.testing.assert_allclose(embedder.embed(texts), bare_embed(bare, texts), atol=1e-5)


def test_position_weighted_pooling_matches_direct_computation(bare):
    weighted = Embedder(device="cpu", batch_size=5, pooling="position_weighted", dtype="float32")
    texts = PARAGRAPHS[:10]
    expected = bare_embed(bare, texts, weighting="position_weighted")
    np.testing.assert_allclose(weighted.embed(texts), expected, atol=1e-5)


def test_order_preserved_despite_length_sorting(embedder: Embedder):
    # Mixed lengths, so that the sorted order differs from the given one.
    texts = [PARAGRAPHS[i][: 30 + 37 * i] for i in range(len(PARAGRAPHS))][::-1]
    texts = texts[::2] + texts[1::2]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_sort_windows_and_pretokenized_ids_give_the_same_vectors(embedder: Embedder):
    texts = PARAGRAPHS[:14]
    whole = embedder.embed(texts)
    windowed = Embedder(device="cpu", batch_size=2, sort_window=3, dtype="float32")
    np.testing.assert_allclose(windowed.embed(texts), whole, atol=1e-5)
    np.testing.assert_allclose(windowed.embed_tokens(windowed.tokenize(texts)), whole, atol=1e-5)


def test_identical_texts_give_identical_vectors(embedder: Embedder):
    text = PARAGRAPHS[3]
    vectors = embedder.embed([text, PARAGRAPHS[0], text, PARAGRAPHS[5], text])
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[0], vectors[4], atol=1e-6)
    np.testing.assert_allclose(vectors[0], embedder.embed([text])[0], atol=1e-5)


def test_related_texts_are_closer_than_unrelated(embedder: Embedder):
    soup, bread, tax = embedder.embed(
        [
            "Simmer the onions and carrots in butter, then add the stock and cook the soup "
            "for twenty minutes before seasoning it with salt and pepper.",
            "Knead the dough until it is smooth, let it rise for an hour, and bake the bread "
            "in a hot oven until the crust is golden brown.",
            "The taxpayer may deduct capital losses against capital gains; any excess loss "
            "is carried forward to later tax years under the statute.",
        ]
    )
    assert soup @ bread > soup @ tax + 0.1
    assert soup @ bread > bread @ tax + 0.1


def test_long_texts_tokenize_as_if_whole(embedder: Embedder):
    texts = long_sources(6)
    # no whitespace near the cut: the prefix cannot be trusted and the text is tokenized again
    texts.append("word " * 300 + "x" * 5000)
    texts.append(" ".join(["α"] * 2000))
    assert embedder.tokenize(texts) == _encode(embedder.tokenizer, texts, embedder.max_length)
    assert all(len(ids) == embedder.max_length for ids in embedder.tokenize(texts))


def test_truncation_to_max_length(embedder: Embedder):
    text = " ".join(PARAGRAPHS)
    ids = embedder.tokenize([text])[0]
    whole = embedder.tokenizer(text, truncation=False)["input_ids"]
    assert len(whole) > 256
    assert ids == whole[:255] + whole[-1:]  # [CLS] + the first 254 tokens + [SEP]


def test_empty_input_and_empty_text(embedder: Embedder):
    assert embedder.embed([]).shape == (0, 384)
    vectors = embedder.embed(["", PARAGRAPHS[0]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_rejects_bad_input(embedder: Embedder):
    with pytest.raises(TypeError, match="text 1"):
        embedder.embed(["fine", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="dtype"):
        Embedder(device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="pooling"):
        Embedder(device="cpu", pooling="cls")
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="sort_window"):
        Embedder(device="cpu", sort_window=0)
    with pytest.raises(ValueError, match="over max_length"):
        embedder.embed_tokens([[101] * 300])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA"):
        Embedder(device="cuda")


def test_cpu_runs_bfloat16_only_where_native_and_stays_close_to_float32(embedder: Embedder):
    assert next(embedder.model.parameters()).dtype == torch.float32, "float32 when asked"
    half = Embedder(device="cpu", batch_size=4, dtype="float16")
    assert next(half.model.parameters()).dtype == torch.float32, "no float16 on a CPU"
    default = Embedder(device="cpu", batch_size=4)
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert next(default.model.parameters()).dtype == expected
    texts = stdlib_paragraphs(16)
    cosines = (default.embed(texts) * embedder.embed(texts)).sum(axis=1)
    assert cosines.min() > 0.999


def test_loading_the_model_prints_no_progress_bar(capfd: pytest.CaptureFixture[str]):
    """transformers' weight-loading bar stays off the console, and its setting is restored."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    Embedder(default_model_path(), dtype="float32")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()
