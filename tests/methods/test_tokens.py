"""Tokenize once: the tokens stage's ids are the tokenizer's, they round-trip through Arrow, and
the embed stage embeds them as it would the texts, without reading the texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel.algorithms.tokens import document_ids
from distsel.app import pipeline
from distsel.core.config import parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.stage import Resources
from distsel.methods.embed import Embedder, EmbedStage
from distsel.methods.tokens import (
    TokensStage,
    end_tokens,
    id_rows,
    ids_array,
    truncated,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ids_round_trip_through_arrow_also_when_sliced() -> None:
    rows = [[101, 7, 102], [], [5], list(range(300))]
    column = ids_array(rows)
    assert column.type == pa.list_(pa.int32())
    assert [list(r) for r in id_rows(column)] == rows
    assert [list(r) for r in id_rows(column.slice(1, 2))] == rows[1:3]
    chunked = pa.chunked_array([ids_array(rows[:2]), ids_array(rows[2:])])
    assert [list(r) for r in id_rows(chunked)] == rows


def test_tokens_stage_writes_the_tokenizers_truncated_ids() -> None:
    config = parse_config({**base_config(["in.jsonl"], "out"), "embed": {"max_length": 32}})
    stage = TokensStage.from_config(config, TokensStage.default_resources)
    stage.setup()
    texts = stdlib_paragraphs(12) + ["", "word " * 1000]
    out = stage(pa.table({"text": texts}))
    expected = stage.tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    assert [list(r) for r in id_rows(out["token_ids"])] == [list(r) for r in expected]
    assert out["n_tokens"].tolist() == [len(r) for r in expected]
    assert max(out["n_tokens"]) == 32


def test_embed_stage_embeds_token_ids_as_it_embeds_texts() -> None:
    config = parse_config(
        {**base_config(["in.jsonl"], "out"), "embed": {"max_length": 48, "dtype": "float32"}}
    )
    tokens = TokensStage.from_config(config, TokensStage.default_resources)
    embed = EmbedStage(Resources(batch_size=64), config.embed)
    tokens.setup()
    embed.setup()
    texts = stdlib_paragraphs(20)
    ids = tokens(pa.table({"text": texts}))["token_ids"]
    from_ids = embed(pa.table({"id": [str(i) for i in range(20)], "token_ids": ids}))
    from_texts = embed(pa.table({"text": texts}))
    vectors = np.stack(from_ids["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(
        vectors, np.stack(from_texts["embedding"].to_numpy(zero_copy_only=False)), atol=1e-6
    )
    reference = Embedder(max_length=48, device="cpu", batch_size=8, dtype="float32").embed(texts)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_a_similarity_run_tokenizes_once_and_embeds_the_stored_ids(tmp_path: Path) -> None:
    texts = stdlib_paragraphs(40)
    corpus = write_jsonl(tmp_path / "pool.jsonl", [{"text": t} for t in texts])
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t in texts[:3]])
    raw = base_config([corpus], tmp_path / "out", method="similarity", budget={"docs": 5})
    raw.update(target={"paths": [str(target)]}, embed={"max_length": 40, "dtype": "float32"})
    raw["input"]["rows_per_part"] = 15
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))
    assert manifest["stages"]["tokens"]["rows"] == 40
    token_parts = sorted((tmp_path / "out" / "scores" / "tokens").glob("*.parquet"))
    assert len(token_parts) == 3
    stored = pa.concat_tables([pq.read_table(p) for p in token_parts])
    embedder = Embedder(max_length=40, device="cpu", dtype="float32")
    assert [list(r) for r in id_rows(stored["token_ids"])] == embedder.tokenize(texts)
    embedded = pa.concat_tables(
        [pq.read_table(p) for p in sorted((tmp_path / "out" / "scores" / "embed").glob("*"))]
    )
    vectors = np.stack(embedded["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)


def test_document_ids_cut_as_the_tokenizer_truncates() -> None:
    """The proxy_tokens stage's ids, cut by `truncated`, equal the tokenizer's own truncation,
    for a tokenizer with an end token (WordPiece: [CLS] … [SEP]) and one without (BPE)."""
    from distsel.methods.proxy_model import minilm_tokenizer, train_bpe_tokenizer

    texts = stdlib_paragraphs(30)
    cases = ["", "one", " ".join(texts[:10]), *texts]
    for tokenizer in (minilm_tokenizer(), train_bpe_tokenizer(texts, 400, 64)):
        end = end_tokens(tokenizer)
        for max_length, chunks in ((8, 1), (16, 4), (64, 2)):
            rows = document_ids(tokenizer, cases, max_length * chunks)
            expected = tokenizer(cases, truncation=True, max_length=max_length)["input_ids"]
            got = [list(truncated(row, max_length, end)) for row in rows]
            assert got == [list(row) for row in expected]
