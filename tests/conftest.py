"""Fixtures shared by all test modules, and the test processes' grouping.

Plain helpers live in helpers.py (tests/ is on sys.path: `from helpers import ...`). Test module
basenames are unique across the folders (there are no __init__.py files).
"""

from __future__ import annotations

import os

# One OpenMP/BLAS thread in each test process (and the CLIs and Ray they start, which inherit it):
# two test processes and Ray's workers share a small machine, and threads waiting for work spin
# on its cores. distsel sizes the threads of its own actors from their CPUs.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from typing import Any  # noqa: E402

import pytest  # noqa: E402
from helpers import (  # noqa: E402
    AWS_KEY,
    AWS_REGION,
    AWS_SECRET,
    MotoServer,
    s3_client,
    torch_threads,
)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Modules that start Ray clusters of their own run one after another on one test process, so that
# no more than one such cluster starts at a time on a small machine.
OWN_CLUSTERS = {"test_multinode", "test_job_submit", "test_pipeline"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist's `--dist loadgroup`, a module's tests stay on one test process (its
    module fixtures are made once), and the modules in OWN_CLUSTERS share one. Groups are named
    by the module's basename, whatever folder it is in."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        group = "own-clusters" if module in OWN_CLUSTERS else module
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session, on loopback."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # a fresh local Ray, never another one found on the machine
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            # Idle workers stay up between the many small runs instead of being started again.
            _system_config={"idle_worker_killing_time_threshold_ms": 600_000},
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a whole module (its module fixtures included, when the module
    asks with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`): tiny models run
    fastest so, and do not fight other processes for cores."""
    with torch_threads(1):
        yield


# ---------------------------------------------------------------------------------------------
# S3: moto's server on 127.0.0.1; nothing mocked on the client side


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials only; no profile, config file or instance metadata may be consulted."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", AWS_REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback for the module; yields its endpoint URL."""
    pytest.importorskip("moto.server")
    server = MotoServer()
    assert server.host == "127.0.0.1"
    yield server.endpoint
    server.stop()


@pytest.fixture
def endpoint_options(s3_endpoint, aws_env) -> dict[str, Any]:
    """Storage options for code that runs in this process: credentials come from the env."""
    return {"endpoint_url": s3_endpoint}


@pytest.fixture
def s3(s3_endpoint, aws_env):
    """A boto3 client of the module's moto server."""
    pytest.importorskip("boto3")
    return s3_client(s3_endpoint)
