"""`dedup: {method: minhash}`: planted near duplicates are quarantined and counted, the first copy
in input order is kept, and the distributed steps agree with one pass over every pair."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, min_label_components, s3_keys, stdlib_paragraphs, write_jsonl

from distsel.algorithms import minhash
from distsel.app import minhash_duplicates, pipeline
from distsel.app.report.gather import pool_parts
from distsel.core import layout
from distsel.core.config import DedupConfig, parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.storage import Store


def near_copy(text: str, rng: random.Random) -> str:
    """A copy with 1 % of its words edited (at least one), its sentences reordered or its
    whitespace changed."""
    kind = rng.choice(["edit", "reorder", "whitespace"])
    if kind == "reorder":
        sentences = re.split(r"(?<=[.!?])\s+", text)
        rng.shuffle(sentences)
        return " ".join(sentences)
    if kind == "whitespace":
        return re.sub(r"\s+", lambda _: rng.choice([" ", "\n", "  ", "\t"]), text)
    words = text.split()
    for index in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[index] = words[index][::-1] + "x"
    return " ".join(words)


def planted_corpus(root, originals: int = 150, copies: int = 40) -> tuple[list[dict], set[str]]:
    """Distinct paragraphs of 40+ words, then near copies of some of them in a later shard."""
    rng = random.Random(11)
    texts = [t for t in stdlib_paragraphs(400) if len(t.split()) >= 40][:originals]
    first = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
    sources = rng.sample(range(len(texts)), copies)
    second = [{"id": f"c{s}", "text": near_copy(texts[s], rng)} for s in sources]
    second.insert(5, {"id": "fresh", "text": "a text unlike any other in this corpus, " * 3})
    write_jsonl(root / "corpus" / "a.jsonl", first)
    write_jsonl(root / "corpus" / "b.jsonl", second)
    return first + second, {f"c{s}" for s in sources}


def test_planted_near_duplicates_are_quarantined_counted_and_kept_once(tmp_path):
    docs, planted = planted_corpus(tmp_path)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="all")
    raw["input"].update(id_field="id", rows_per_part=32)
    raw["dedup"] = {"method": "minhash", "threshold": 0.8}
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))

        rejected = pq.read_table(tmp_path / "out" / layout.REJECTED_NEAR_DUPLICATES).to_pylist()
        found = {r["raw"].decode() for r in rejected}
        assert len(found & planted) / len(planted) >= 0.95
        assert found <= planted | {d["id"] for d in docs if d["id"].startswith("o")}
        assert len(found - planted) <= len(found) * 0.01
        assert all(r["reason"] == "near_duplicate" and "Jaccard" in r["detail"] for r in rejected)
        assert manifest["input_docs"] == len(docs)
        assert manifest["rejected_by_reason"] == {"near_duplicate": len(found)}
        assert manifest["accepted_docs"] == len(docs) - len(found) == manifest["selected_docs"]
        selected = set(pq.read_table(tmp_path / "out" / "selected")["id"].to_pylist())
        assert not selected & found
        assert {f"o{c[1:]}" for c in found & planted} <= selected, "the first copy is kept"

        _, left_out = pool_parts(Store(str(tmp_path / "out")), manifest)
        assert sum(len(rows) for rows in left_out.values()) == len(found), "the report's pool"

        again = pipeline.run(parse_config(raw))
        assert again["rejected_by_reason"] == manifest["rejected_by_reason"]
        assert again["stages"]["dedup"]["reused"]
        assert not list((tmp_path / "out" / "_state" / "minhash").rglob("*.npy"))

        del raw["dedup"]
        plain = pipeline.run(parse_config(raw))
    assert plain["rejected_by_reason"] == {} and plain["selected_docs"] == len(docs)
    assert not (tmp_path / "out" / layout.REJECTED_NEAR_DUPLICATES).exists(), "no stale list"
    assert pool_parts(Store(str(tmp_path / "out")), plain)[1] == {}


def write_parts(store: Store, texts: list[list[str]]) -> list[str]:
    names = []
    for index, part in enumerate(texts):
        name = f"p{index:03d}.parquet"
        ids = [f"{index}-{row}" for row in range(len(part))]
        store.write_table(layout.docs(name), pa.table({"id": ids, "text": part}))
        names.append(name)
    return names


@pytest.mark.parametrize("groups_of", [10**9, 40])
def test_distributed_steps_equal_one_pass_over_all_pairs(tmp_path, monkeypatch, groups_of):
    """Bucket groups, verification per part and the components (by edge group) equal the same
    LSH run over every pair of one signature matrix, and leave no file behind; dropped rows
    take no part."""
    monkeypatch.setattr(minhash_duplicates, "BAND_ROWS_PER_GROUP", groups_of)
    monkeypatch.setattr(minhash_duplicates, "EDGE_ROWS_PER_GROUP", groups_of * 5)
    rng = random.Random(2)
    base = stdlib_paragraphs(90)
    texts = base + [near_copy(rng.choice(base), rng) for _ in range(60)]
    rng.shuffle(texts)
    cuts = [0, 30, 31, 31, 100, len(texts)]
    parts_texts = [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    store = Store(str(tmp_path))
    parts = write_parts(store, parts_texts)
    dropped = {parts[0]: np.array([3, 4])}
    options = DedupConfig(method="minhash", threshold=0.7)
    with LocalExecutor().active():
        found = minhash_duplicates.find_near_duplicates(
            store, parts, options, dropped, "check", 0, len(texts)
        )

    signature = minhash.signatures(texts, options.num_perm, options.ngram, 0)
    signature[[3, 4]] = minhash.NO_SHINGLES
    keys = minhash.band_keys(signature, *minhash.lsh_bands(options.threshold, options.num_perm))
    first, second = [], []
    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            taking = signature[a, 0] != minhash.NO_SHINGLES != signature[b, 0]
            agree = minhash.estimated_jaccard(signature[a], signature[b])[0]
            if taking and (keys[a] == keys[b]).any() and agree >= options.threshold:
                first.append(a)
                second.append(b)
    later, kept = min_label_components(first, second)
    position = np.concatenate([[0], np.cumsum([len(p) for p in parts_texts])])
    nodes = [(int(r), int(w)) for r, w in zip(found["rank"], found["row"], strict=True)]
    firsts = [
        (int(r), int(w)) for r, w in zip(found["first_rank"], found["first_row"], strict=True)
    ]
    as_index = [int(position[r] + w) for r, w in nodes]
    assert len(later) > 20
    assert as_index == later
    assert not [p for p in (tmp_path / "_state").rglob("*") if p.is_file()]
    assert [int(position[r] + w) for r, w in firsts] == kept
    assert (found["similarity"].to_numpy() >= options.threshold).all()


@pytest.mark.slow
def test_semantic_duplicates_are_quarantined_after_the_embedding(tmp_path):
    """dedup semantic runs the embed and cluster stages and quarantines the copies whose
    embedding is all but the original's (case and whitespace changed), keeping one of each."""
    rng = random.Random(5)
    texts = [t for t in stdlib_paragraphs(200) if len(t.split()) >= 20][:60]
    copies = rng.sample(range(len(texts)), 15)
    docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
    docs += [{"id": f"c{i}", "text": "  ".join(texts[i].upper().split())} for i in copies]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", docs)
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="all")
    raw["input"].update(id_field="id", rows_per_part=40)
    raw["dedup"] = {"method": "semantic", "epsilon": 0.02}
    raw["stages"] = {"cluster": {"clusters": 4}}
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))
    assert {"embed", "cluster", "dedup"} <= set(manifest["stages"])
    rejected = pq.read_table(tmp_path / "out" / layout.REJECTED_NEAR_DUPLICATES).to_pylist()
    found = [r["raw"].decode() for r in rejected]
    pairs = {frozenset((f"o{i}", f"c{i}")) for i in copies}
    assert len(found) == len(copies), "one of each pair, nothing else"
    selected = set(pq.read_table(tmp_path / "out" / "selected")["id"].to_pylist())
    assert all(len(pair & selected) == 1 for pair in pairs)
    assert all("cosine" in r["detail"] for r in rejected)
    assert manifest["rejected_by_reason"] == {"near_duplicate": len(copies)}


def test_the_check_on_s3_finds_what_it_finds_locally(tmp_path, s3, endpoint_options):
    """Signatures, bucket groups and pairs written to and read back from an S3 prefix (moto on
    127.0.0.1) give the local check's result, and leave no intermediate file behind."""
    rng = random.Random(3)
    base = stdlib_paragraphs(60)
    texts = base + [near_copy(rng.choice(base), rng) for _ in range(20)]
    cuts = [texts[:40], texts[40:]]
    s3.create_bucket(Bucket="dedup")
    remote = Store("s3://dedup/out", endpoint_options)
    local = Store(str(tmp_path / "out"))
    options = DedupConfig(method="minhash")
    with LocalExecutor().active():
        found = [
            minhash_duplicates.find_near_duplicates(
                store, write_parts(store, cuts), options, {}, "c", 0, len(texts)
            )
            for store in (local, remote)
        ]
    assert found[0].num_rows >= 15
    assert found[0].equals(found[1])
    assert not [k for k in s3_keys(s3, "dedup", "out/_state/minhash")]


def test_fits_leave_the_near_duplicates_out(tmp_path):
    """DSIR's pool counts (a fit) cover the documents the selection can take: with dedup, not
    the quarantined copies; without it, every document, fitted again."""
    from distsel.algorithms.dsir import total_ngram_counts

    docs, planted = planted_corpus(tmp_path, originals=60, copies=20)
    write_jsonl(tmp_path / "target.jsonl", [{"text": d["text"]} for d in docs[:5]])
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method="all")
    raw["input"].update(id_field="id")
    raw["target"] = {"paths": [str(tmp_path / "target.jsonl")]}
    raw["stages"] = {"dsir": {}}
    raw["dedup"] = {"method": "minhash"}

    def pool_counts() -> np.ndarray:
        record = json.loads((tmp_path / "out" / layout.fit_record("dsir")).read_text())
        with np.load(tmp_path / "out" / layout.fit_arrays("dsir")) as arrays:
            return arrays[record["fitted"]["dict"]["pool_counts"]["array"]]

    with LocalExecutor().active():
        pipeline.run(parse_config(raw))
        rejected = pq.read_table(tmp_path / "out" / layout.REJECTED_NEAR_DUPLICATES)
        quarantined = {r.decode() for r in rejected["raw"].to_pylist()}
        kept = [d["text"] for d in docs if d["id"] not in quarantined]
        assert len(quarantined) >= 15
        assert (pool_counts() == total_ngram_counts(kept, 10_000, 2)).all()
        del raw["dedup"]
        pipeline.run(parse_config(raw))
    every = total_ngram_counts([d["text"] for d in docs], 10_000, 2)
    assert (pool_counts() == every).all(), "fitted again on every document"
