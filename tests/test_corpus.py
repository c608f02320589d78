from __future__ import annotations

import gzip
import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import stdlib_paragraphs, write_jsonl

from distsel import corpus
from distsel.config import InputConfig
from distsel.errors import InputError
from distsel.storage import Store

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
    return corpus.ingest_shard(shard, config, store), store, shard


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


def test_rows_are_split_into_parts(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"document {i}"} for i in range(25)])
    result, store, _ = ingest(path, tmp_path, rows_per_part=10)
    assert result.parts == [f"big.jsonl-{i:05d}.parquet" for i in range(3)]
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
        corpus.ingest_shard(shard, config, Store(str(tmp_path / "out")))


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

    def rewrite():
        for round_ in range(30):
            store.write_table("docs/a.parquet", tables[round_ % 2])
        stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not stop.is_set():
        table = pq.read_table(tmp_path / "out" / "docs" / "a.parquet")
        assert table.num_rows == 400_000 and len(set(table.column("x").to_pylist()[:10])) == 1
        reads += 1
    writer.join()
    assert reads > 5
    assert store.list("docs") == ["a.parquet"]
