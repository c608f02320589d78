"""A real Ray head started with `ray start --head` on 127.0.0.1 with token authentication, and
distsel submitted to it with `ray job submit`, as README.md's commands do.

Two differences from the README, so that the test session's own Ray survives: the head runs
with `--block` in its own process group (stopped by signalling that group, where the README
says `ray stop`, which stops every Ray on the machine) and on free ports instead of the defaults.
HOME is a temporary folder, so the token is made for this test only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import REPO, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core.config import load_config

BIN = Path(sys.executable).parent
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--node-manager-port",
    "--object-manager-port",
)

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_for_port(port: int, seconds: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} (head exit status {process.poll()})")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray get-auth-token --generate`, then a head on 127.0.0.1; yields (dashboard URL, env)."""
    root = tmp_path_factory.mktemp("head")
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    generate = ["ray", "get-auth-token", "--generate"]
    subprocess.run(generate, env=env, check=True, capture_output=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += ["--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    # Ray's socket paths must stay under 107 bytes, which pytest's folders can exceed.
    sessions = tempfile.mkdtemp(prefix="ray-head-", dir="/tmp")
    command += [f"--temp-dir={sessions}"] + [f"{flag}={port}" for flag, port in ports.items()]
    log = root / "head.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_for_port(ports["--dashboard-port"], 120, process)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; the head said:\n{log.read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{ports['--dashboard-port']}", env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(sessions, ignore_errors=True)


def submit(address: str, env: dict, job: str, config: Path, *flags: str) -> subprocess.Popen:
    command = ["ray", "job", "submit", "--address", address, *flags, "--working-dir", str(REPO)]
    command += ["--", "python", f"jobs/{job}.py", "--config", str(config)]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, seconds: float = 600) -> str:
    output, _ = process.communicate(timeout=seconds)
    assert process.returncode == 0, output[-3000:]
    return output


def write_run(root: Path, name: str, texts: list[str], stages: dict) -> Path:
    corpus = write_jsonl(root / "corpus" / "c.jsonl", [{"text": t} for t in texts])
    config = root / f"{name}.yaml"
    raw = {
        "input": {"paths": [str(corpus)], "rows_per_part": 20},
        "output": {"path": str(root / name)},
        "select": {"method": "dsir", "budget": {"docs": 30}},
        "target": {"paths": [str(write_jsonl(root / "target.jsonl", [{"text": texts[0]}]))]},
        "stages": stages,
        "embed": {"max_length": 64},  # a quarter of the default's work
    }
    config.write_text(json.dumps(raw))  # JSON is YAML
    return config


def selected_ids(output: Path) -> list[str]:
    return sorted(pq.read_table(output / "selected")["id"].to_pylist())


def test_a_client_without_the_token_is_refused(head, tmp_path):
    address, env = head
    stranger = {**env, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    refused = subprocess.run(
        ["ray", "job", "list", "--address", address], env=stranger, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


def test_a_killed_driver_resubmitted_by_phases_equals_a_local_whole_run(head, tmp_path, ray_local):
    """The whole pipeline submitted and its driver killed mid-scoring; then the scoring phase
    submitted (it resumes), then the selection phase; the result is a local whole run's."""
    address, env = head
    # one embedding actor: one model load per job, and a run long enough to stop mid-way
    embed = {"embed": {"batch_size": 10, "pool_size": 1}}
    config = write_run(tmp_path, "crashed", stdlib_paragraphs(100), embed)
    job = submit(address, env, "pipeline", config)
    markers = tmp_path / "crashed" / "_state" / "embed"
    deadline = time.monotonic() + 300
    while not list(markers.glob("*.parquet.json")):
        assert time.monotonic() < deadline and job.poll() is None, "no part scored in time"
        time.sleep(0.2)
    drivers = subprocess.run(
        ["pgrep", "-f", f"jobs/pipeline.py --config {config}"], capture_output=True, text=True
    ).stdout.split()
    assert drivers, "the job's driver process"
    for pid in drivers:
        os.kill(int(pid), signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0, "the job failed with its driver"
    assert len(list(markers.glob("*.parquet.json"))) < 5, "killed mid-run"

    finish(submit(address, env, "scoring", config))
    scoring = json.loads((tmp_path / "crashed" / "scoring.json").read_text())
    assert scoring["stages"]["embed"]["resumed_parts"] >= 1
    assert not (tmp_path / "crashed" / "selected").exists()
    output = finish(submit(address, env, "selection", config))
    assert "selected" in output and "manifest.json" in output

    clean = pipeline.run(load_config(config, {"output.path": str(tmp_path / "clean")}))
    submitted = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert submitted["selected_docs"] == clean["selected_docs"] == 30
    assert selected_ids(tmp_path / "crashed") == selected_ids(tmp_path / "clean")
    for name in sorted(os.listdir(tmp_path / "clean" / "scores" / "embed")):
        first = pq.read_table(tmp_path / "crashed" / "scores" / "embed" / name)
        second = pq.read_table(tmp_path / "clean" / "scores" / "embed" / name)
        assert first["id"].equals(second["id"]), "every document once, none lost"
