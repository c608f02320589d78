"""S3 reading and writing, end to end, against moto's S3 server on 127.0.0.1.

Nothing is mocked on the client side: s3fs (driver and Ray workers) and boto3 talk HTTP to a
real moto server bound to loopback. Each test uses its own bucket.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from helpers import AWS_KEY, AWS_REGION, AWS_SECRET, jsonl_bytes, s3_get, s3_keys  # noqa: E402

from distsel.app import pipeline
from distsel.core.config import parse_config
from distsel.core.corpus import list_shards
from distsel.core.errors import DistselError, InputError
from distsel.core.storage import Store


@pytest.fixture
def storage_options(endpoint_options) -> dict[str, Any]:
    """Storage options for a pipeline run, whose Ray workers also open S3.

    The credentials ride along in the options as well as in the environment: the Ray workers
    were started (possibly by an earlier test module) before monkeypatch set the environment,
    and a worker without credentials would go looking for them at the instance-metadata address.
    """
    return {
        **endpoint_options,
        "key": AWS_KEY,
        "secret": AWS_SECRET,
        "client_kwargs": {"region_name": AWS_REGION},
    }


@pytest.fixture
def bucket(s3) -> str:
    name = f"distsel-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _docs(prefix: str, count: int, source: str) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": f"{prefix}-{i}",
            "text": f"Document {i} of shard {prefix}: {'several plain words ' * (i + 1)}".strip(),
            "source": source,
        }
        for i in range(count)
    ]


BAD_JSON = b'{"doc_id": "a-bad", "text": '


def _upload_corpus(s3, bucket: str) -> dict[str, dict[str, Any]]:
    """Three shards under corpus/ (JSONL with a broken line, gzip JSONL, Parquet); the good docs."""
    a_docs, b_docs, c_docs = _docs("a", 5, "web"), _docs("b", 4, "books"), _docs("c", 3, "code")
    a_lines: list[dict[str, Any] | bytes] = [*a_docs[:2], BAD_JSON, *a_docs[2:]]
    s3.put_object(Bucket=bucket, Key="corpus/a.jsonl", Body=jsonl_bytes(a_lines))
    b_lines = [b_docs[0], {"doc_id": "b-empty", "text": "   "}, *b_docs[1:]]
    s3.put_object(Bucket=bucket, Key="corpus/b.jsonl.gz", Body=gzip.compress(jsonl_bytes(b_lines)))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(c_docs), buffer)
    s3.put_object(Bucket=bucket, Key="corpus/c.parquet", Body=buffer.getvalue())
    s3.put_object(Bucket=bucket, Key="corpus/README.txt", Body=b"not a shard")
    return {doc["doc_id"]: doc for doc in a_docs + b_docs + c_docs}


def _config(bucket: str, options: dict[str, Any], **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "input": {
            "paths": [f"s3://{bucket}/corpus/"],
            "id_field": "doc_id",
            "group_field": "source",
            "storage_options": options,
        },
        "output": {"path": f"s3://{bucket}/out", "storage_options": options},
        "select": {"method": "all"},
        "seed": 7,
    }
    data.update(overrides)
    return parse_config(data)


def _selected(s3, bucket: str) -> pa.Table:
    keys = s3_keys(s3, bucket, "out/selected/")
    assert keys and all(key.endswith(".parquet") for key in keys)
    return pa.concat_tables(
        [pq.read_table(io.BytesIO(s3_get(s3, bucket, key))) for key in keys],
        promote_options="default",
    )


def test_run_reads_shards_from_s3_and_writes_output_to_s3(ray_local, s3, bucket, storage_options):
    uploaded = _upload_corpus(s3, bucket)
    config = _config(bucket, storage_options, stages={"stats": {}})
    config.output.columns.append("n_chars")  # a stage column, on request

    shards = list_shards(config.input)
    assert [(s.key, s.format) for s in shards] == [
        ("a.jsonl", "jsonl"),
        ("b.jsonl.gz", "jsonl"),
        ("c.parquet", "parquet"),
    ]
    assert shards[0].url == f"s3://{bucket}/corpus/a.jsonl"

    manifest = pipeline.run(config)

    assert manifest["input_docs"] == 14
    assert manifest["accepted_docs"] == 12
    assert manifest["rejected_docs"] == 2
    assert manifest["selected_docs"] == 12
    assert manifest["rejected_by_reason"] == {"empty_text": 1, "invalid_json": 1}
    assert manifest["shards"] == [
        {"shard": "a.jsonl", "docs_in": 6, "accepted": 5, "rejected": 1},
        {"shard": "b.jsonl.gz", "docs_in": 5, "accepted": 4, "rejected": 1},
        {"shard": "c.parquet", "docs_in": 3, "accepted": 3, "rejected": 0},
    ]
    assert manifest["by_group"]["selected"] == {"books": 4, "code": 3, "web": 5}
    assert manifest["stages"]["ingest"]["resumed_shards"] == 0

    # Everything the run wrote is in the bucket, under out/.
    # <safe key>-<shard version>-<index>: a changed object's parts get new names
    named = re.compile(r"out/selected/(.+)-[0-9a-f]{12}-00000\.parquet")
    selected_keys = s3_keys(s3, bucket, "out/selected/")
    assert [named.fullmatch(key).group(1) for key in selected_keys] == [
        "a.jsonl-4a976e20f24e",
        "b.jsonl.gz-45e82794e626",
        "c.parquet-ca5b2c59a5de",
    ]
    assert s3_keys(s3, bucket, "out/docs/") == [
        k.replace("selected", "docs") for k in s3_keys(s3, bucket, "out/selected/")
    ]
    assert "out/_state/input.json" in s3_keys(s3, bucket, "out/_state/")
    assert s3_keys(s3, bucket, "out/_state/ingest/") == [
        "out/_state/ingest/a.jsonl-4a976e20f24e.json",
        "out/_state/ingest/b.jsonl.gz-45e82794e626.json",
        "out/_state/ingest/c.parquet-ca5b2c59a5de.json",
    ]
    assert not [k for k in s3_keys(s3, bucket, "out/") if "/.probe-" in k or k.endswith(".tmp")]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    written = json.loads(s3_get(s3, bucket, "out/manifest.json"))
    assert written["selected_docs"] == 12
    assert written["stages"]["ingest"]["rows"] == 14
    # Credentials given as storage options never reach the manifest.
    assert written["config"]["input"]["storage_options"]["secret"] == "***"
    assert written["config"]["output"]["storage_options"]["key"] == "***"
    assert (
        written["config"]["output"]["storage_options"]["endpoint_url"]
        == storage_options["endpoint_url"]
    )

    # The selected documents are exactly the uploaded good ones, text for text.
    selected = _selected(s3, bucket)
    got = dict(
        zip(selected.column("id").to_pylist(), selected.column("text").to_pylist(), strict=True)
    )
    assert got == {doc_id: doc["text"] for doc_id, doc in uploaded.items()}
    sources = dict(
        zip(selected.column("id").to_pylist(), selected.column("source").to_pylist(), strict=True)
    )
    assert sources == {doc_id: doc["source"] for doc_id, doc in uploaded.items()}
    assert selected.column("n_chars").to_pylist() == [
        len(text) for text in selected.column("text").to_pylist()
    ]

    # Each bad line is quarantined on S3 with its shard, line number and reason.
    assert s3_keys(s3, bucket, "out/rejected/") == [
        "out/rejected/a.jsonl-4a976e20f24e.parquet",
        "out/rejected/b.jsonl.gz-45e82794e626.parquet",
    ]
    bad_a = s3_get(s3, bucket, "out/rejected/a.jsonl-4a976e20f24e.parquet")
    bad_a = pq.read_table(io.BytesIO(bad_a)).to_pylist()
    assert len(bad_a) == 1
    assert bad_a[0]["shard"] == "a.jsonl"
    assert bad_a[0]["path"] == f"s3://{bucket}/corpus/a.jsonl"
    assert bad_a[0]["line"] == 3
    assert bad_a[0]["row"] is None
    assert bad_a[0]["reason"] == "invalid_json"
    assert bad_a[0]["raw"].rstrip(b"\n") == BAD_JSON
    bad_b = s3_get(s3, bucket, "out/rejected/b.jsonl.gz-45e82794e626.parquet")
    bad_b = pq.read_table(io.BytesIO(bad_b))
    assert bad_b.select(["shard", "line", "reason"]).to_pylist() == [
        {"shard": "b.jsonl.gz", "line": 2, "reason": "empty_text"}
    ]


def test_s3_keys_that_collide_once_flattened_keep_every_document(
    ray_local, s3, bucket, storage_options
):
    nested, flat = _docs("nested", 7, "web"), _docs("flat", 5, "books")
    s3.put_object(Bucket=bucket, Key="corpus/sub/y.jsonl", Body=jsonl_bytes([*nested, BAD_JSON]))
    s3.put_object(Bucket=bucket, Key="corpus/sub__y.jsonl", Body=jsonl_bytes([*flat, BAD_JSON]))

    manifest = pipeline.run(_config(bucket, storage_options))

    assert manifest["shards"] == [
        {"shard": "sub/y.jsonl", "docs_in": 8, "accepted": 7, "rejected": 1},
        {"shard": "sub__y.jsonl", "docs_in": 6, "accepted": 5, "rejected": 1},
    ]
    selected = _selected(s3, bucket)
    assert manifest["selected_docs"] == selected.num_rows == 12
    got = zip(selected.column("id").to_pylist(), selected.column("text").to_pylist(), strict=True)
    assert dict(got) == {doc["doc_id"]: doc["text"] for doc in nested + flat}
    assert len(s3_keys(s3, bucket, "out/_state/ingest/")) == 2
    assert len(s3_keys(s3, bucket, "out/rejected/")) == 2


def test_glob_input_on_s3(s3, bucket, endpoint_options):
    _upload_corpus(s3, bucket)
    config = _config(bucket, endpoint_options)
    config.input.paths = [f"s3://{bucket}/corpus/*.jsonl*"]
    assert [s.key for s in list_shards(config.input)] == ["a.jsonl", "b.jsonl.gz"]


def test_missing_input_bucket_is_named(ray_local, s3, bucket, storage_options):
    _upload_corpus(s3, bucket)
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/corpus/"
    config = _config(bucket, storage_options)
    config.input.paths = [missing]
    with pytest.raises(InputError) as caught:
        list_shards(config.input)
    assert missing in str(caught.value)
    with pytest.raises(InputError) as caught:
        pipeline.run(config)
    assert missing in str(caught.value)
    assert s3_keys(s3, bucket, "out/") == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("s3://{bucket}/nothing-here/", "no such file or folder"),
        ("s3://{bucket}/corpus/missing.jsonl", "no such file or folder"),
        ("s3://{bucket}/corpus/*.zst", "the pattern matches no file"),
        ("s3://no-such-bucket-zz9/corpus/*.jsonl", "the pattern matches no file"),
    ],
)
def test_missing_input_paths_are_named(s3, bucket, endpoint_options, path, message):
    _upload_corpus(s3, bucket)
    given = path.format(bucket=bucket)
    config = _config(bucket, endpoint_options)
    config.input.paths = [given]
    with pytest.raises(InputError) as caught:
        list_shards(config.input)
    assert str(caught.value) == f"{given}: {message}"


def test_missing_output_bucket_is_named(ray_local, s3, bucket, storage_options):
    _upload_corpus(s3, bucket)
    output = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    config = _config(bucket, storage_options)
    config.output.path = output
    with pytest.raises(DistselError) as caught:
        pipeline.run(config)
    assert isinstance(caught.value, InputError)
    message = str(caught.value)
    assert message.startswith(f"output {output}: cannot write there (")
    assert "bucket" in message.lower()


def test_store_round_trip_on_s3(s3, bucket, endpoint_options):
    store = Store(f"s3://{bucket}/store/", endpoint_options)
    assert store.url == f"s3://{bucket}/store"
    assert not store.is_local
    assert store.list("tables") == []
    assert not store.exists("tables/t.parquet")

    table = pa.table({"id": ["x", "y", "z"], "score": [0.5, 1.5, -2.0], "n": [1, 2, 3]})
    store.write_table("tables/t.parquet", table)
    assert store.exists("tables/t.parquet")
    assert store.read_table("tables/t.parquet").equals(table)
    assert store.read_table("tables/t.parquet", columns=["id"]).equals(table.select(["id"]))
    assert store.list("tables") == ["t.parquet"]
    assert store.list("tables", ".json") == []
    assert s3_keys(s3, bucket, "store/") == ["store/tables/t.parquet"]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    # Overwrites and files written by someone else are seen, despite s3fs's listing cache.
    smaller = table.slice(0, 1)
    store.write_table("tables/t.parquet", smaller)
    assert store.read_table("tables/t.parquet").equals(smaller)
    s3.put_object(Bucket=bucket, Key="store/tables/u.parquet", Body=b"")
    assert store.list("tables") == ["t.parquet", "u.parquet"]

    store.write_json("meta/info.json", {"rows": 3, "name": "t"})
    assert store.read_json("meta/info.json") == {"rows": 3, "name": "t"}
    assert json.loads(s3_get(s3, bucket, "store/meta/info.json")) == {"name": "t", "rows": 3}

    store.remove("tables/t.parquet")
    assert not store.exists("tables/t.parquet")
    assert store.list("tables") == ["u.parquet"]

    store.check_writable()
    assert not [k for k in s3_keys(s3, bucket, "store/") if "probe" in k]


def test_rerun_on_same_s3_output_is_idempotent(ray_local, s3, bucket, storage_options):
    _upload_corpus(s3, bucket)
    config = _config(bucket, storage_options, select={"method": "random", "budget": {"docs": 5}})

    first = pipeline.run(config)
    first_ids = sorted(_selected(s3, bucket).column("id").to_pylist())
    first_objects = {key: s3_get(s3, bucket, key) for key in s3_keys(s3, bucket, "out/selected/")}
    assert first["selected_docs"] == 5 == len(first_ids)
    assert first["stages"]["ingest"]["resumed_shards"] == 0

    second = pipeline.run(config)
    second_ids = sorted(_selected(s3, bucket).column("id").to_pylist())
    assert second["stages"]["ingest"]["resumed_shards"] == 3
    assert second_ids == first_ids
    assert {key: s3_get(s3, bucket, key) for key in s3_keys(s3, bucket, "out/selected/")} == (
        first_objects
    )
    for count in ("input_docs", "accepted_docs", "rejected_docs", "selected_docs", "shards"):
        assert second[count] == first[count]
    written = json.loads(s3_get(s3, bucket, "out/manifest.json"))
    assert written["stages"]["ingest"]["resumed_shards"] == 3


def test_rerun_with_other_input_on_same_s3_output_is_refused(
    ray_local, s3, bucket, storage_options
):
    _upload_corpus(s3, bucket)
    pipeline.run(_config(bucket, storage_options))
    changed = _config(bucket, storage_options)
    changed.input.text_field = "body"
    with pytest.raises(DistselError, match=r"input\.text_field"):
        pipeline.run(changed)


def test_list_shards_sees_objects_uploaded_after_an_earlier_listing(s3, bucket, endpoint_options):
    _upload_corpus(s3, bucket)
    config = _config(bucket, endpoint_options)
    config.input.paths = [f"s3://{bucket}/corpus/*.jsonl*"]
    assert [s.key for s in list_shards(config.input)] == ["a.jsonl", "b.jsonl.gz"]

    s3.put_object(Bucket=bucket, Key="corpus/d.jsonl", Body=jsonl_bytes(_docs("d", 2, "web")))
    assert [s.key for s in list_shards(config.input)] == ["a.jsonl", "b.jsonl.gz", "d.jsonl"]
    config.input.paths = [f"s3://{bucket}/corpus/d.jsonl"]
    assert [s.key for s in list_shards(config.input)] == ["d.jsonl"]


@pytest.mark.slow  # two runs on Ray
def test_an_object_rewritten_with_more_lines_is_read_again(ray_local, s3, bucket, storage_options):
    _upload_corpus(s3, bucket)
    config = _config(bucket, storage_options)
    first = pipeline.run(config)
    body = s3_get(s3, bucket, "corpus/a.jsonl") + jsonl_bytes(_docs("a2", 20, "web"))
    s3.put_object(Bucket=bucket, Key="corpus/a.jsonl", Body=body)
    second = pipeline.run(config)
    assert second["accepted_docs"] == first["accepted_docs"] + 20
    assert second["selected_docs"] == first["selected_docs"] + 20
    assert second["stages"]["ingest"]["resumed_shards"] == 2
    docs = [k for k in s3_keys(s3, bucket, "out/docs/") if k.startswith("out/docs/a.jsonl")]
    assert len(docs) == 1, "the old version's part is removed"


class _Killed(RuntimeError):
    pass


def test_quad_checkpoints_resume_on_s3(s3, bucket, endpoint_options):
    """A Quad bandit killed in its fourth round resumes from its S3 checkpoints to the
    uninterrupted selection; a fresh run of other settings removes those saves first."""
    import numpy as np

    from distsel.core.config import Budget
    from distsel.methods.quad import make_bandit
    from distsel.methods.quad.options import QuadOptions

    rng = np.random.default_rng(0)
    clusters, keys = np.repeat(np.arange(6), 30), rng.integers(0, 2**63, 180).astype(np.uint64)
    influence = rng.standard_normal(180)
    distances = np.ones((6, 6)) - np.eye(6)
    calls = []

    def bandit(docs: int):
        options = QuadOptions(within_cluster="random", docs_per_accept=5)
        return make_bandit(
            clusters, keys, np.full(180, 10), distances, options, Budget(docs=docs), 0
        )

    def scores(groups, dies_at=None):
        calls.append(1)
        if len(calls) == dies_at:
            raise _Killed
        return [influence[g] for g in groups]

    expected = bandit(60).run(scores)
    store = Store(f"s3://{bucket}/out", endpoint_options)
    calls.clear()
    with pytest.raises(_Killed):
        bandit(60).run(lambda groups: scores(groups, dies_at=4), store)
    assert len(s3_keys(s3, bucket, "out/_state/quad/saves/")) == 3
    assert bandit(60).run(scores, store).tolist() == expected.tolist()

    calls.clear()
    with pytest.raises(_Killed):
        bandit(50).run(lambda groups: scores(groups, dies_at=2), store)
    assert len(s3_keys(s3, bucket, "out/_state/quad/saves/")) == 1


def test_markers_and_row_counts_read_many_files_at_once_on_s3(s3, bucket, endpoint_options):
    """Store.markers and Store.row_counts answer in order, None for a missing marker, and see
    a marker written after the folder's listing was cached; Store.remove_many removes exactly
    the files named, missing ones included."""
    store = Store(f"s3://{bucket}/out", endpoint_options)
    names = [f"markers/{i:03d}.json" for i in range(80)]
    for i, name in enumerate(names[:70]):
        store.write_json(name, {"i": i})
    assert len(store.list("markers")) == 70
    s3.put_object(Bucket=bucket, Key="out/markers/075.json", Body=b'{"i": 75}')
    found = store.markers(names)
    assert found[:70] == [{"i": i} for i in range(70)]
    assert found[70:] == [None] * 5 + [{"i": 75}] + [None] * 4

    sizes = [3, 0, 11, 5]
    for i, rows in enumerate(sizes):
        store.write_table(f"parts/{i}.parquet", pa.table({"x": list(range(rows))}))
    assert store.row_counts([f"parts/{i}.parquet" for i in range(4)]) == sizes

    store.remove_many(names[:40] + names[70:75])
    assert store.markers(names) == [None] * 40 + [{"i": i} for i in range(40, 70)] + found[70:]
    assert len(s3_keys(s3, bucket, "out/markers/")) == 31
