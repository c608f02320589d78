"""S3 faults: the S3 server goes away during a write, and comes back (or does not).

A real moto S3 server on 127.0.0.1 is stopped and started again on the same port; nothing is
mocked on the client side. moto keeps its buckets in process memory, so they survive a restart of
the server thread, as they would survive a restart of an S3 gateway in front of real storage.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from helpers import (  # noqa: E402
    AWS_REGION,
    MotoServer,
    base_config,
    s3_client,
    s3_get,
    s3_keys,
    stdlib_paragraphs,
    write_jsonl,
)

from distsel.app import pipeline
from distsel.core import storage
from distsel.core.config import parse_config
from distsel.core.errors import DistselError
from distsel.core.storage import StorageError, Store

# Distinctive credentials, so a test can check that no error message repeats them.
KEY, SECRET = "AKIDFAULTTESTKEY", "fault-test-secret-value"


@pytest.fixture
def server(aws_env):
    """A moto S3 server of the test's own, which the test stops and starts again."""
    served = MotoServer()
    yield served
    if served.running:
        served.stop()


@pytest.fixture
def options(server) -> dict[str, Any]:
    """Storage options for the driver and the Ray workers (which may predate `aws_env`)."""
    return {
        "endpoint_url": server.endpoint,
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"region_name": AWS_REGION},
    }


@pytest.fixture
def s3(server):
    return s3_client(server.endpoint, KEY, SECRET)


def _new_bucket(s3) -> str:
    name = f"distsel-faults-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3) -> str:
    return _new_bucket(s3)


def _table(rows: int = 20_000) -> pa.Table:
    """A table whose Parquet file is a few hundred KiB, so an upload is not a single packet."""
    rng = np.random.default_rng(0)
    return pa.table(
        {"id": [f"doc-{i:06d}" for i in range(rows)], "score": rng.standard_normal(rows)}
    )


def _read(s3, bucket: str, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3_get(s3, bucket, key)))


class _OnRetry(logging.Handler):
    """Calls `action` (once, in a thread) when the Store logs its first 'trying again'."""

    def __init__(self, action: Any) -> None:
        super().__init__(logging.WARNING)
        self.action, self.messages = action, []
        self.thread: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.thread is None and "trying again" in record.getMessage():
            self.thread = threading.Thread(target=self.action)
            self.thread.start()


def test_write_succeeds_when_the_server_is_back_within_the_retry_window(
    server, s3, bucket, options
):
    store = Store(f"s3://{bucket}/out", options)
    table, key = _table(), "scores/stats/a.jsonl-00000.parquet"
    server.stop()
    assert server.refuses_connections()

    restart = threading.Timer(1.5, server.start)
    began = time.monotonic()
    restart.start()
    store.write_table(key, table)
    took = time.monotonic() - began
    restart.join()

    assert took >= 1.5  # the write waited for the server
    assert s3_keys(s3, bucket, "") == [f"out/{key}"]
    assert _read(s3, bucket, f"out/{key}").equals(table)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_store_retry_bridges_an_outage_longer_than_one_try(server, s3, bucket, options):
    """The server comes back only after a whole try (botocore's own retries) has failed."""
    quick = {**options, "config_kwargs": {"retries": {"max_attempts": 2}}}
    store = Store(f"s3://{bucket}/out", quick)
    table, key = _table(), "docs/b.jsonl-00000.parquet"
    handler = _OnRetry(server.start)
    logging.getLogger("distsel").addHandler(handler)
    server.stop()
    try:
        store.write_table(key, table)
    finally:
        logging.getLogger("distsel").removeHandler(handler)
    assert handler.thread is not None
    handler.thread.join()

    assert handler.messages[0].startswith(f"s3://{bucket}/out/{key}: storage unreachable (")
    assert s3_keys(s3, bucket, "") == [f"out/{key}"]
    assert _read(s3, bucket, f"out/{key}").equals(table)


@pytest.mark.slow
def test_write_fails_clearly_when_the_server_stays_down(server, s3, bucket, options):
    quick = {**options, "config_kwargs": {"retries": {"max_attempts": 2}}}
    store = Store(f"s3://{bucket}/out", quick, retry_seconds=6.0)
    key = "selected/c.jsonl-00000.parquet"
    server.stop()
    began = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.write_table(key, _table())
    took = time.monotonic() - began
    server.start()

    message = str(caught.value)
    print(f"failed after {took:.1f} s: {message}")
    assert isinstance(caught.value, DistselError)
    assert message.startswith(f"s3://{bucket}/out/{key}: storage unreachable; gave up after ")
    assert "Could not connect to the endpoint URL" in message
    assert KEY not in message and SECRET not in message
    attempts = int(message.split("gave up after ")[1].split()[0])
    assert attempts >= 2
    assert store.retry_seconds - storage.RETRY_PAUSE * 2 ** (attempts - 1) < took < 60
    # Nothing of the write is visible once the server is back: no object, no pending upload.
    assert s3_keys(s3, bucket, "") == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_reads_and_listings_fail_clearly_when_the_server_stays_down(server, s3, bucket, options):
    """With botocore's own retries turned off, only the Store's short window applies."""
    quick = {**options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    store = Store(f"s3://{bucket}/out", quick, retry_seconds=1.5)
    store.write_json("_state/input.json", {"paths": ["x"]})
    server.stop()
    for call, relative in [
        (lambda: store.read_json("_state/input.json"), "_state/input.json"),
        (lambda: store.exists("_state/ingest/a.json"), "_state/ingest/a.json"),
        (lambda: store.list("selected", ".parquet"), "selected"),
        (lambda: store.read_table("docs/a.parquet"), "docs/a.parquet"),
    ]:
        began = time.monotonic()
        with pytest.raises(StorageError) as caught:
            call()
        assert time.monotonic() - began < 10
        # The error names the full URL, and survives the trip from a Ray worker (pickling).
        message = str(pickle.loads(pickle.dumps(caught.value)))
        assert re.match(
            rf"s3://{bucket}/out/{relative}: storage unreachable; gave up after \d+ attempts "
            r"in \d+ s \(Could not connect to the endpoint URL: ",
            message,
        ), message
    server.start()
    assert store.read_json("_state/input.json") == {"paths": ["x"]}


def _pipeline_config(corpus: Path, output: str, options: dict[str, Any]) -> Any:
    data = base_config([corpus], output, method="random", budget={"docs": 20})
    quick = {**options, "config_kwargs": {"retries": {"max_attempts": 2}}}
    data["output"].update(storage_options=quick, retry_seconds=3.0)
    data["stages"] = {"stats": {}}
    data["seed"] = 7
    return parse_config(data)


def _tables(s3, bucket: str, prefix: str) -> dict[str, pa.Table]:
    return {key.removeprefix(prefix): _read(s3, bucket, key) for key in s3_keys(s3, bucket, prefix)}


def _all_parquet_readable(s3, bucket: str) -> int:
    keys = [key for key in s3_keys(s3, bucket, "") if key.endswith(".parquet")]
    for key in keys:
        _read(s3, bucket, key)  # raises on a truncated or partial file
    return len(keys)


def _stop_on_first(s3, bucket: str, prefix: str, server: MotoServer, deadline: float) -> None:
    while time.monotonic() < deadline and not s3_keys(s3, bucket, prefix):
        time.sleep(0.02)
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", ["_state/ingest/", "_state/stats/"])
def test_run_stopped_mid_way_fails_clearly_and_a_rerun_completes(
    ray_local, tmp_path, server, s3, bucket, options, stop_at
):
    texts = stdlib_paragraphs(40)
    sources = ["web", "books", "code", "news"]
    for shard in range(8):
        write_jsonl(
            tmp_path / "corpus" / f"s{shard}.jsonl",
            [
                {"id": f"s{shard}-{i}", "text": texts[shard * 5 + i], "source": sources[i % 4]}
                for i in range(5)
            ],
        )
    corpus = tmp_path / "corpus"

    clean_bucket = _new_bucket(s3)
    clean = pipeline.run(_pipeline_config(corpus, f"s3://{clean_bucket}/out", options))
    assert clean["selected_docs"] == 20

    # The server stops as soon as the first marker under `stop_at` is visible.
    config = _pipeline_config(corpus, f"s3://{bucket}/out", options)
    watcher = threading.Thread(
        target=_stop_on_first,
        args=(s3, bucket, f"out/{stop_at}", server, time.monotonic() + 120),
    )
    watcher.start()
    began = time.monotonic()
    with pytest.raises(Exception) as caught:
        pipeline.run(config)
    took = time.monotonic() - began
    watcher.join()
    message = str(caught.value)
    print(f"\nrun failed after {took:.1f} s with {type(caught.value).__name__}: {message[:2000]}")

    assert took < 120  # failed, did not hang
    if isinstance(caught.value, DistselError):  # the driver, an ingest task or a stage gave up
        # a stage's worker that fails reading its part returns the error to the driver, which
        # names the stage first
        stage = "" if stop_at == "_state/ingest/" else "(stats: )?"
        assert re.match(
            rf"{stage}s3://{bucket}/out/\S+: storage unreachable; gave up after \d+ attempts in "
            r"\d+ s ",
            message,
        ), message
    else:  # a stage's actor gave up: Ray Data wraps its error, the text still names the object
        assert stop_at != "_state/ingest/"
        assert re.search(rf"StorageError: s3://{bucket}/out/\S+: storage unreachable; ", message)
    assert KEY not in message and SECRET not in message

    server.start()
    assert "out/manifest.json" not in s3_keys(s3, bucket, "out/")
    assert _all_parquet_readable(s3, bucket) > 0  # no partial shard, though the run broke off

    rerun = pipeline.run(config)
    assert rerun["selected_docs"] == 20
    assert rerun["stages"]["ingest"]["resumed_shards"] >= 1
    for folder in ("selected", "scores", "docs"):
        assert _tables(s3, bucket, f"out/{folder}/") == _tables(
            s3, clean_bucket, f"out/{folder}/"
        ), folder
    assert _all_parquet_readable(s3, bucket) == _all_parquet_readable(s3, clean_bucket)
    for count in ("input_docs", "accepted_docs", "rejected_docs", "shards", "by_group"):
        assert rerun[count] == clean[count]
