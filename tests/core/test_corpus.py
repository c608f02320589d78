from __future__ import annotations

import gzip
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_config, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core import corpus, records
from distsel.core.config import InputConfig, parse_config
from distsel.core.errors import InputError
from distsel.core.storage import Store

TEXTS = stdlib_paragraphs(6)

BAD_LINES = [
    (b"{not json", "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"text": "caf\xe9 au lait"}', "not_utf8"),
    (b'{"body": "no text field"}', "missing_text"),
    (b'{"text": null}', "null_text"),
    (b'{"text": 42}', "text_not_string"),
    (b'{"text": "   "}', "empty_text"),
    (json.dumps({"text": "x" * 101}).encode(), "text_too_long"),
]


def ingest(path, tmp_path, **options):
    config = InputConfig(paths=[str(path)], max_chars=100, **options)
    (shard,) = corpus.list_shards(config)
    store = Store(str(tmp_path / "out"))
    return records.ingest_shard(shard, config, store), store, shard


def test_each_bad_row_is_quarantined_with_line_and_reason(tmp_path):
    good = [{"text": t[:90], "domain": "docs"} for t in TEXTS[:3]]
    lines = [good[0], *[line for line, _ in BAD_LINES], b"", b"   ", good[1], good[2]]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    result, store, shard = ingest(path, tmp_path)

    assert result.docs_in == 3 + len(BAD_LINES), "blank lines are not documents"
    assert result.accepted == 3 and result.rejected == len(BAD_LINES)
    assert result.docs_in == result.accepted + result.rejected
    rejected = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (2 + i, reason) for i, (_, reason) in enumerate(BAD_LINES)
    ]
    assert all(r["shard"] == "mixed.jsonl" and r["path"] == str(path) for r in rejected)
    assert rejected[0]["raw"] == b"{not json", "the offending line is kept, not lost"
    assert result.reasons == {reason: 1 for _, reason in BAD_LINES}


def test_ids_derive_from_shard_and_line_and_fields_pass_through(tmp_path):
    records = [{"text": TEXTS[0][:90], "domain": "a", "id": "x"}, {"text": TEXTS[1][:90]}]
    path = write_jsonl(tmp_path / "c.jsonl", [records[0], b"", records[1]])
    result, store, _ = ingest(path, tmp_path)
    table = store.read_table(f"docs/{result.parts[0]}")
    assert table.column("id").to_pylist() == ["c.jsonl:1", "c.jsonl:3"]
    assert table.column("domain").to_pylist() == ["a", None]
    assert table.column("input_id").to_pylist() == ["x", None], "reserved names are renamed"
    assert table.column("tokens_approx").to_pylist() == [
        corpus.tokens_approx(len(r["text"])) for r in records
    ]


def test_configured_id_field_is_used_and_required(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"text": "hello there", "uid": 7}, {"text": "no id here"}]
    )
    result, store, _ = ingest(path, tmp_path, id_field="uid")
    assert store.read_table(f"docs/{result.parts[0]}").column("id").to_pylist() == ["7"]
    assert result.reasons == {"missing_id": 1}


def test_mixed_value_types_are_kept_as_json_text(tmp_path):
    records = [{"text": "one two", "label": 1}, {"text": "three four", "label": "pos"}]
    result, store, _ = ingest(write_jsonl(tmp_path / "m.jsonl", records), tmp_path)
    labels = store.read_table(f"docs/{result.parts[0]}").column("label").to_pylist()
    assert labels == ["1", '"pos"']


@pytest.mark.parametrize("compress", [None, "gz", "zst"])
def test_jsonl_compressions_read_the_same(tmp_path, compress):
    records = [{"text": t[:90]} for t in TEXTS]
    suffix = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compress]
    path = write_jsonl(tmp_path / f"c{suffix}", records, compress)
    result, store, _ = ingest(path, tmp_path)
    texts = store.read_table(f"docs/{result.parts[0]}").column("text").to_pylist()
    assert texts == [r["text"] for r in records]


def test_parquet_rows_are_validated_and_addressed_by_row(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({"text": [TEXTS[0][:90], None, "", "y" * 200, TEXTS[1][:90]], "n": range(5)})
    pq.write_table(table, path)
    result, store, shard = ingest(path, tmp_path)
    docs = store.read_table(f"docs/{result.parts[0]}")
    assert docs.column("id").to_pylist() == ["p.parquet:0", "p.parquet:4"]
    assert docs.column("n").to_pylist() == [0, 4]
    rejected = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in rejected] == [
        (1, "null_text"),
        (2, "empty_text"),
        (3, "text_too_long"),
    ]


def test_parquet_binary_text_that_is_not_utf8_is_rejected(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"fine text", b"\xff\xfe bad"], pa.binary())}), path)
    result, _, _ = ingest(path, tmp_path)
    assert (result.accepted, result.reasons) == (1, {"not_utf8": 1})


def test_parquet_without_the_text_column_is_an_error_naming_it(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(InputError, match=r"b\.parquet: no column 'text' \(columns: body\)"):
        ingest(path, tmp_path)


def test_strict_mode_stops_at_the_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "good"}, {"text": None}, b"{bad"])
    with pytest.raises(InputError, match=r"s\.jsonl: line 2: null text"):
        ingest(path, tmp_path, strict=True)


def test_a_line_nested_10000_levels_deep_is_quarantined(tmp_path):
    deep = b'{"text": "deep", "meta": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "before"}, deep, {"text": "after"}])
    result, store, shard = ingest(path, tmp_path)
    assert (result.docs_in, result.accepted, result.reasons) == (3, 2, {"too_deep": 1})
    (rejected,) = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert (rejected["line"], rejected["raw"]) == (2, deep)
    assert rejected["detail"] == f"nested more than {corpus.MAX_DEPTH} levels"


def test_a_line_nested_past_the_limit_is_quarantined_wherever_the_parser_stops(tmp_path):
    levels = corpus.MAX_DEPTH + 1
    line = b'{"text": "deep", "meta": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    fits = b'{"text": "fits", "meta": ' + b"[" * (levels - 2) + b"]" * (levels - 2) + b"}"
    result, _, _ = ingest(write_jsonl(tmp_path / "d.jsonl", [line, fits]), tmp_path)
    assert (result.accepted, result.reasons) == (1, {"too_deep": 1})


@pytest.mark.parametrize("compress", [None, "gz"])
def test_a_utf8_byte_order_mark_may_start_a_jsonl_file(tmp_path, compress):
    lines = b'{"text": "first"}\n{"text": "second"}\n\xef\xbb\xbf{"text": "third"}\n'
    data = corpus.UTF8_BOM + lines
    path = tmp_path / ("bom.jsonl.gz" if compress else "bom.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    result, store, _ = ingest(path, tmp_path)
    assert store.read_table(f"docs/{result.parts[0]}").column("text").to_pylist() == [
        "first",
        "second",
    ]
    assert result.reasons == {"invalid_json": 1}, "only the file may start with a BOM"


def test_a_lone_surrogate_escape_is_quarantined_and_a_pair_is_kept(tmp_path):
    lines = [b'{"text": "half \\ud83d of a pair"}', b'{"text": "a pair \\ud83d\\ude00"}']
    result, store, shard = ingest(write_jsonl(tmp_path / "s.jsonl", lines), tmp_path)
    assert store.read_table(f"docs/{result.parts[0]}").column("text").to_pylist() == [
        "a pair \N{GRINNING FACE}"
    ]
    (rejected,) = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert (rejected["line"], rejected["reason"]) == (1, "not_utf8")


def test_an_integer_python_will_not_read_is_quarantined(tmp_path):
    huge = b'{"text": "big number", "n": ' + b"9" * 5000 + b"}"
    result, store, shard = ingest(write_jsonl(tmp_path / "n.jsonl", [huge]), tmp_path)
    (rejected,) = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert (result.docs_in, result.accepted, rejected["reason"]) == (1, 0, "invalid_json")
    assert "4300 digits" in rejected["detail"]


def deeply_nested_list(levels: int) -> Any:
    nested: Any = 1
    for _ in range(levels):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    "meta",
    [
        {},
        deeply_nested_list(60),
    ],  # Parquet has no empty struct; it writes this list, cannot read it
    ids=["empty-object", "list-60-deep"],
)
def test_values_parquet_cannot_store_or_read_back_are_kept_as_json_text(tmp_path, meta):
    records = [{"text": "one", "meta": meta}, {"text": "two", "meta": meta}]
    result, store, _ = ingest(write_jsonl(tmp_path / "v.jsonl", records), tmp_path)
    assert result.accepted == 2
    stored = store.read_table(f"docs/{result.parts[0]}").column("meta").to_pylist()
    assert [json.loads(value) for value in stored] == [meta, meta]


def test_parquet_values_python_cannot_hold_quarantine_their_row(tmp_path):
    path = tmp_path / "t.parquet"
    days = pa.array([0, 2**30, 1], pa.date32())  # 2**30 days is past the year 9999
    pq.write_table(pa.table({"text": ["first row", "second row", "third row"], "day": days}), path)
    result, store, shard = ingest(path, tmp_path)
    docs = store.read_table(f"docs/{result.parts[0]}")
    assert docs.column("text").to_pylist() == ["first row", "third row"]
    (rejected,) = store.read_table(f"rejected/{shard.safe_key}.parquet").to_pylist()
    assert (rejected["row"], rejected["reason"]) == (1, "invalid_value")
    assert rejected["detail"].startswith("column 'day': OverflowError")
    assert json.loads(rejected["raw"]) == {"text": "second row", "day": None}


def test_rows_are_split_into_parts(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"document {i}"} for i in range(25)])
    result, store, shard = ingest(path, tmp_path, rows_per_part=10)
    assert result.parts == [f"{shard.safe_key}-{i:05d}.parquet" for i in range(3)]
    sizes = [store.read_table(f"docs/{p}").num_rows for p in result.parts]
    assert sizes == [10, 10, 5]


def test_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"nothing-here\.jsonl: no such file or folder"):
        corpus.list_shards(InputConfig(paths=[str(tmp_path / "nothing-here.jsonl")]))


def test_empty_glob_and_empty_folder_are_errors(tmp_path):
    with pytest.raises(InputError, match="the pattern matches no file"):
        corpus.list_shards(InputConfig(paths=[str(tmp_path / "*.jsonl")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: the folder holds no file"):
        corpus.list_shards(InputConfig(paths=[str(tmp_path / "empty")]))


def test_folders_and_globs_expand_to_shards_named_below_their_root(tmp_path):
    write_jsonl(tmp_path / "c" / "a.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "c" / "sub" / "b.jsonl.gz", [{"text": "b"}], "gz")
    (tmp_path / "c" / "README.txt").write_text("not a shard")
    shards = corpus.list_shards(InputConfig(paths=[str(tmp_path / "c")]))
    assert [s.key for s in shards] == ["a.jsonl", "sub/b.jsonl.gz"]
    globbed = corpus.list_shards(InputConfig(paths=[str(tmp_path / "c" / "*.jsonl")]))
    assert [s.key for s in globbed] == ["a.jsonl"]


def test_unknown_extension_of_an_explicit_file_asks_for_the_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(InputError, match="set input.format"):
        corpus.list_shards(InputConfig(paths=[str(path)]))
    (shard,) = corpus.list_shards(InputConfig(paths=[str(path)], format="jsonl"))
    assert shard.format == "jsonl"


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in TEXTS * 50))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    config = InputConfig(paths=[str(path)])
    (shard,) = corpus.list_shards(config)
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz: unreadable or corrupt after line \d+"):
        records.ingest_shard(shard, config, Store(str(tmp_path / "out")))


def test_corrupt_files_fail_the_early_check(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    for name in ("bad.parquet", "bad.jsonl.gz"):
        (shard,) = corpus.list_shards(InputConfig(paths=[str(tmp_path / name)]))
        with pytest.raises(InputError, match=rf"{name}: unreadable or corrupt"):
            corpus.check_readable(shard, {})


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "out"))
    store.write_table("docs/a.parquet", pa.table({"x": [1]}))

    def crash(_descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write_table("docs/a.parquet", pa.table({"x": [2, 3]}))
    monkeypatch.undo()
    assert store.read_table("docs/a.parquet").column("x").to_pylist() == [1]
    assert sorted(p.name for p in (tmp_path / "out" / "docs").iterdir()) == ["a.parquet"]


def test_readers_never_see_a_half_written_shard(tmp_path):
    store = Store(str(tmp_path / "out"))
    tables = [pa.table({"x": np.full(400_000, value)}) for value in (1, 2)]
    store.write_table("docs/a.parquet", tables[0])
    stop = threading.Event()
    reads = 0

    def rewrite():
        # at least 30 rewrites, and on until the reader has read 10 times (a busy machine may
        # let the writer run ahead)
        round_ = 0
        while round_ < 30 or (reads < 10 and round_ < 3_000):
            store.write_table("docs/a.parquet", tables[round_ % 2])
            round_ += 1
        stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    while not stop.is_set():
        table = pq.read_table(tmp_path / "out" / "docs" / "a.parquet")
        assert table.num_rows == 400_000 and len(set(table.column("x").to_pylist()[:10])) == 1
        reads += 1
    writer.join()
    assert reads >= 10
    assert store.list("docs") == ["a.parquet"]


def test_shard_names_are_a_safe_stem_and_a_hash_of_the_whole_key():
    def name(key: str) -> str:
        return corpus.Shard("unused", key, "jsonl").safe_key

    assert name("sub/y.jsonl") == "sub__y.jsonl-3bd5d7ee183d", "names stay the same across runs"
    assert name("sub__y.jsonl").startswith("sub__y.jsonl-") and name("sub__y.jsonl") != name(
        "sub/y.jsonl"
    )
    assert name(".hidden/é ü:*?/part 1.jsonl")[:-12] == "hidden_____part_1.jsonl-"
    long = name("folder/" * 100 + "part-00001.jsonl")
    assert len(long) == corpus.NAME_STEM_CHARS + 13 and long[:-13].endswith("__part-00001.jsonl")
    allowed = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-")
    for key in ("_a.jsonl", ".a.jsonl", "日本.jsonl", "x" * 300 + ".jsonl"):
        assert set(name(key)) <= allowed
        assert name(key)[0] not in "._-" and len(name(key)) <= corpus.NAME_STEM_CHARS + 13


def test_keys_whose_names_share_stem_and_hash_are_refused(tmp_path):
    file_name = "n" * 74 + ".jsonl"  # two folders found by a cycle search for equal 48-bit hashes
    for folder in ("a0ddceb5ae8e", "bb3665262b21"):
        write_jsonl(tmp_path / "c" / folder / file_name, [{"text": folder}])
    with pytest.raises(InputError, match=r"would share the file name 'n+\.jsonl-4623ec40a8b3'"):
        corpus.list_shards(InputConfig(paths=[str(tmp_path / "c")]))


def colliding_shards(nested: Path, flat: Path) -> dict[str, list[str]]:
    """7 documents in `nested` ('sub/y.jsonl'), 5 in `flat` ('sub__y.jsonl'), one bad line each."""
    texts = stdlib_paragraphs(12)
    write_jsonl(nested, [*({"text": text} for text in texts[:7]), b"{bad"])
    write_jsonl(flat, [*({"text": text} for text in texts[7:]), b"{bad"])
    return {"sub/y.jsonl": texts[:7], "sub__y.jsonl": texts[7:]}


def assert_every_document_selected(
    inputs: list[Path], output: Path, expected: dict[str, list[str]]
) -> None:
    manifest = pipeline.run(parse_config(base_config(inputs, output)))
    assert manifest["shards"] == [
        {"shard": key, "docs_in": len(texts) + 1, "accepted": len(texts), "rejected": 1}
        for key, texts in expected.items()
    ]
    tables = [pq.read_table(path) for path in sorted((output / "selected").glob("*.parquet"))]
    selected = pa.concat_tables(tables)
    assert manifest["selected_docs"] == selected.num_rows == 12 == manifest["accepted_docs"]
    ids = {
        f"{key}:{line}": text
        for key, texts in expected.items()
        for line, text in enumerate(texts, 1)
    }
    got = zip(selected.column("id").to_pylist(), selected.column("text").to_pylist(), strict=True)
    assert dict(got) == ids
    rejected = pq.read_table(output / "rejected").column("shard").to_pylist()
    assert sorted(rejected) == sorted(expected)


def test_nested_and_flat_names_that_collide_once_flattened_keep_every_document(ray_local, tmp_path):
    corpus_folder = tmp_path / "corpus"
    expected = colliding_shards(corpus_folder / "sub" / "y.jsonl", corpus_folder / "sub__y.jsonl")
    assert_every_document_selected([corpus_folder], tmp_path / "out", expected)


def test_names_that_collide_once_flattened_across_input_paths_keep_every_document(
    ray_local, tmp_path
):
    expected = colliding_shards(tmp_path / "a" / "sub" / "y.jsonl", tmp_path / "b" / "sub__y.jsonl")
    assert_every_document_selected([tmp_path / "a", tmp_path / "b"], tmp_path / "out", expected)
