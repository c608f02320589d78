"""The proxy LM: tokenizers, sizes, training, save/load, per-document losses, reuse on a store."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import stdlib_paragraphs, write_jsonl

from distsel.core import corpus, records
from distsel.core.config import InputConfig, ProxyConfig, parse_config
from distsel.core.errors import DistselError
from distsel.core.stage import StageContext
from distsel.core.storage import Store
from distsel.methods import proxy
from distsel.methods.proxy import (
    PerplexityStage,
    ProxyTokensStage,
    ensure_proxy,
    training_resources,
)
from distsel.methods.proxy_model import (
    BOS,
    EOS,
    INFO_FILE,
    document_losses,
    load_proxy,
    make_tokenizer,
    save_proxy,
    train_proxy,
)
from distsel.methods.tokens import encode
from distsel.methods.training import build_proxy, default_intermediate, learning_rate_factor

TINY = {"hidden": 32, "layers": 2, "heads": 4, "vocab_size": 512}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expected_params(vocab: int, hidden: int, layers: int, intermediate: int) -> int:
    """Tied Llama: V·h + L·(4h² + 3h·I + 2h) + h."""
    return (
        vocab * hidden + layers * (4 * hidden**2 + 3 * hidden * intermediate + 2 * hidden) + hidden
    )


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    return stdlib_paragraphs(400)


@pytest.fixture(scope="module")
def texts(paragraphs) -> list[str]:
    return paragraphs[:300]


@pytest.fixture(scope="module")
def trained(texts):
    config = ProxyConfig(
        **TINY, max_length=64, batch_size=8, train_tokens=50_000, learning_rate=1e-2
    )
    model, tokenizer, info = train_proxy(texts, config, seed=7)
    return config, model, tokenizer, info


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_bpe_tokenizer_trains_on_text_and_round_trips(texts):
    config = ProxyConfig(vocab_size=512, max_length=64)
    tokenizer = make_tokenizer(config, texts)
    assert len(tokenizer) == 512
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    samples = [texts[0], "Grüße, 世界!\tcode:  x = f(y)\n\n  end ", "<|bos|> as plain text?"]
    for text in samples[:2]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Learned merges: ordinary prose takes clearly fewer tokens than bytes.
    assert len(tokenizer(texts[0])["input_ids"]) < 0.6 * len(texts[0].encode())
    again = make_tokenizer(config, texts)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_minilm_tokenizer_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = make_tokenizer(ProxyConfig(tokenizer="minilm"), [])
    ids = tokenizer("Hello world")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.cls_token_id
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.sep_token_id
    assert tokenizer.pad_token_id is not None
    assert len(tokenizer) == 30522


# ---------------------------------------------------------------------------------------------
# Sizes


def test_parameter_count_matches_the_formula():
    config = ProxyConfig(hidden=32, layers=2, heads=4)
    model = build_proxy(config, vocab_size=512)
    assert default_intermediate(32) == 88  # 8/3 · 32 = 85.3 → 88
    assert model.config.intermediate_size == 88
    assert model.lm_head.weight is model.model.embed_tokens.weight
    by_hand = 512 * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 88 + 2 * 32) + 32
    assert sum(p.numel() for p in model.parameters()) == by_hand == 41_632


@pytest.mark.parametrize(
    ("options", "vocab", "low", "high"),
    [
        ({}, 8192, 1e6, 2e6),  # the defaults: about a million parameters
        ({"hidden": 768, "layers": 12, "heads": 12, "intermediate": 2048}, 32000, 1e8, 1.2e8),
    ],
)
def test_small_and_large_proxies_build(options, vocab, low, high):
    config = ProxyConfig(**options)
    with torch.device("meta"):  # shapes only: no memory for the 100M model
        model = build_proxy(config, vocab)
    count = sum(p.numel() for p in model.parameters())
    intermediate = config.intermediate or default_intermediate(config.hidden)
    assert count == expected_params(vocab, config.hidden, config.layers, intermediate)
    assert low < count < high
    assert model.config.max_position_embeddings >= config.max_length


# ---------------------------------------------------------------------------------------------
# Training


def test_learning_rate_warms_up_then_decays():
    factors = [learning_rate_factor(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=0.01)


def test_training_lowers_the_loss(trained):
    config, model, _, info = trained
    assert info["steps"] == math.ceil(50_000 / (8 * 64))
    assert info["train_tokens"] == info["steps"] * 8 * 64 >= 50_000
    assert info["initial_loss"] == pytest.approx(math.log(512), abs=0.5)
    assert info["final_loss"] < info["initial_loss"] - 0.8
    assert info["data_repeats"] > 1  # 300 paragraphs hold fewer than 50k tokens: data repeated
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert (info["layers"], info["hidden"], info["vocab"]) == (2, 32, 512)
    assert not model.training


def test_the_trained_proxy_predicts_unseen_text_better_than_an_untrained_one(trained, paragraphs):
    config, model, tokenizer, _ = trained
    held_out = paragraphs[300:]  # training saw the first 300
    untrained = build_proxy(config, len(tokenizer)).eval()
    after = document_losses(model, tokenizer, held_out, max_length=64)
    before = document_losses(untrained, tokenizer, held_out, max_length=64)
    assert np.mean(after) < np.mean(before) - 0.5


def test_same_seed_gives_identical_weights(texts, trained):
    config, model, _, info = trained
    again, _, info_again = train_proxy(texts, config, seed=7)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert info_again["final_loss"] == info["final_loss"]
    other, _, _ = train_proxy(texts, config.model_copy(update={"train_tokens": 2000}), seed=8)
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------------------
# Saving and loading


def test_save_load_round_trip_gives_identical_logits(tmp_path, trained, texts):
    _, model, tokenizer, info = trained
    written = save_proxy(model, tokenizer, info, str(tmp_path / "proxy"))
    files = sorted(p.name for p in (tmp_path / "proxy").iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files and INFO_FILE in files
    assert not [name for name in files if Path(name).suffix in PICKLE_SUFFIXES]
    assert len(written["weights_sha256"]) == 64

    loaded, loaded_tokenizer = load_proxy(str(tmp_path / "proxy"))
    assert not loaded.training
    ids = torch.tensor([tokenizer(texts[3], truncation=True, max_length=64)["input_ids"]])
    assert loaded_tokenizer(texts[3])["input_ids"] == tokenizer(texts[3])["input_ids"]
    assert (loaded_tokenizer.bos_token, loaded_tokenizer.eos_token) == (BOS, EOS)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_plain_hugging_face_folder_loads_and_gets_a_pad_token(tmp_path, trained):
    _, model, tokenizer, _ = trained
    tokenizer = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token=EOS)
    assert tokenizer.pad_token is None
    model.save_pretrained(tmp_path / "user")
    tokenizer.save_pretrained(tmp_path / "user")
    loaded, loaded_tokenizer = load_proxy(str(tmp_path / "user"))
    assert loaded_tokenizer.pad_token == EOS
    assert not loaded.training


def test_a_folder_without_safetensors_is_refused(tmp_path, trained):
    _, model, _, _ = trained
    model.config.save_pretrained(tmp_path / "pickled")
    with pytest.raises(DistselError, match="no .safetensors"):
        load_proxy(str(tmp_path / "pickled"))
    with pytest.raises(DistselError, match="does not exist"):
        load_proxy(str(tmp_path / "missing"))


def test_save_and_load_through_s3(trained, texts, endpoint_options):
    """Against moto's S3 server on loopback: nothing mocked on the client side."""
    options = endpoint_options
    Store("s3://proxies", options).fs.mkdir("proxies")
    _, model, tokenizer, info = trained
    written = save_proxy(model, tokenizer, info, "s3://proxies/run/proxy", options)
    store = Store("s3://proxies/run/proxy", options)
    assert store.read_json(INFO_FILE) == json.loads(json.dumps(written))
    assert "model.safetensors" in store.list("")
    loaded, loaded_tokenizer = load_proxy("s3://proxies/run/proxy", "cpu", options)
    ids = torch.tensor([loaded_tokenizer(texts[5], truncation=True, max_length=64)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------------------------------------
# Per-document losses


def direct_losses(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """One forward per document, torch cross-entropy on its whole (truncated) id sequence."""
    out = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) < 2:
            out.append(np.nan)
            continue
        row = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=row).logits[0, :-1]
        out.append(torch.nn.functional.cross_entropy(logits, row[0, 1:]).item())
    return np.array(out)


def test_document_losses_equal_a_direct_computation(trained, texts):
    _, model, tokenizer, _ = trained
    docs = [texts[10], "", "a", texts[11] * 3, "x y", texts[12][:30], texts[13]]
    expected = direct_losses(model, tokenizer, docs, 64)
    assert np.isnan(expected[1]) and not np.isnan(expected[2])
    for batch_size in (1, 3, 64):
        got = document_losses(model, tokenizer, docs, max_length=64, batch_size=batch_size)
        assert got.shape == (len(docs),)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_long_documents_are_cut_before_tokenizing_without_changing_ids(trained, texts):
    _, model, tokenizer, _ = trained
    long = [texts[20] * 4, "word " * 200, "x" * 500 + " tail", " " * 300 + "end", texts[21]]
    for max_length in (8, 16):
        full = tokenizer(long, truncation=True, max_length=max_length)["input_ids"]
        assert encode(tokenizer, long, max_length) == [list(row) for row in full]
        np.testing.assert_allclose(
            document_losses(model, tokenizer, long, max_length, batch_size=2),
            direct_losses(model, tokenizer, long, max_length),
            atol=1e-5,
            rtol=0,
        )


# ---------------------------------------------------------------------------------------------
# Reuse on a store, through a local Ray


@pytest.fixture
def pool_context(tmp_path, texts):
    def make(**proxy):
        shard_path = write_jsonl(tmp_path / "pool.jsonl", [{"text": t} for t in texts])
        (shard,) = corpus.list_shards(InputConfig(paths=[str(shard_path)], rows_per_part=100))
        store = Store(str(tmp_path / "out"))
        result = records.ingest_shard(
            shard, InputConfig(paths=[str(shard_path)], rows_per_part=100), store
        )
        config = parse_config(
            {
                "input": {"paths": [str(shard_path)]},
                "output": {"path": str(tmp_path / "out")},
                "proxy": proxy,
            }
        )
        return StageContext(config, store, result.parts)

    return make


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: os.stat(p).st_mtime_ns for p in folder.iterdir()}


def test_training_takes_a_whole_node_up_to_eight_cpus(ray_local):
    assert training_resources() == (min(8, int(ray_local.cluster_resources()["CPU"])), 0)


def test_ensure_proxy_trains_once_then_reuses(ray_local, pool_context, tmp_path, monkeypatch):
    # One thread: a tiny model trains fastest so, and a shared test machine has no idle cores.
    monkeypatch.setattr(proxy, "training_resources", lambda: (1, 0))
    settings = {
        "hidden": 32,
        "layers": 1,
        "heads": 4,
        "train_tokens": 20_000,
        "sample_docs": 200,
        "vocab_size": 512,
    }
    context = pool_context(**settings)
    folder, info = ensure_proxy(context)
    assert folder == f"{context.store.url}/proxy"
    assert info["documents"] == 200 and info["params"] > 0 and info["path"] == folder
    assert info["fingerprint"]["proxy"]["hidden"] == 32
    before = _mtimes(tmp_path / "out" / "proxy")

    again_folder, again = ensure_proxy(pool_context(**settings))
    assert (again_folder, again) == (folder, info)
    assert _mtimes(tmp_path / "out" / "proxy") == before

    changed_folder, changed = ensure_proxy(pool_context(**{**settings, "train_tokens": 4096}))
    assert changed_folder == folder
    assert changed["fingerprint"]["proxy"]["train_tokens"] == 4096 and changed["steps"] == 1
    assert changed["weights_sha256"] != info["weights_sha256"]

    given, given_info = ensure_proxy(pool_context(path=folder))
    assert given == folder and given_info["weights_sha256"] == changed["weights_sha256"]


def test_perplexity_stage_scores_with_the_proxy(ray_local, pool_context, trained, texts, tmp_path):
    _, model, tokenizer, info = trained
    save_proxy(model, tokenizer, info, str(tmp_path / "mine"))
    context = pool_context(path=str(tmp_path / "mine"), max_length=64)
    stage = PerplexityStage.from_config(context.config, PerplexityStage.default_resources)
    stage.prepare(context)
    assert stage.fingerprint()["weights_sha256"] == stage.info["weights_sha256"]
    stage.setup()
    docs = ["", "A short line of text.", texts[0]]
    scored = stage(pa.table({"text": docs}))["perplexity_loss"]
    np.testing.assert_allclose(scored, direct_losses(model, tokenizer, docs, 64), atol=1e-5)

    tokens = ProxyTokensStage.from_config(context.config, ProxyTokensStage.default_resources)
    tokens.prepare(context)
    tokens.setup()
    docs += [" ".join(texts) * 3]  # far over max_length × max_chunks tokens
    ids = tokens(pa.table({"text": docs}))["proxy_token_ids"]
    assert max(len(row) for row in ids.to_pylist()) == 64 * 4
    from_ids = stage(pa.table({"id": [str(i) for i in range(len(docs))], "proxy_token_ids": ids}))
    np.testing.assert_allclose(
        from_ids["perplexity_loss"], stage(pa.table({"text": docs}))["perplexity_loss"], atol=1e-6
    )
