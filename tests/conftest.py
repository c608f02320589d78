from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Modules that start Ray clusters of their own run one after another on one test process, so that
# no more than one such cluster starts at a time on a small machine.
OWN_CLUSTERS = {"test_multinode", "test_job_submit", "test_pipeline"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist's `--dist loadgroup`, a module's tests stay on one test process (its
    module fixtures are made once), and the modules in OWN_CLUSTERS share one."""
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
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            # Idle workers stay up between the many small runs instead of being started again.
            _system_config={"idle_worker_killing_time_threshold_ms": 600_000},
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray


def write_jsonl(path: Path, records: list[Any], compress: str | None = None) -> Path:
    """Write records (dicts, other JSON values, or raw bytes lines) as JSON Lines."""
    lines = b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        lines = gzip.compress(lines)
    elif compress == "zst":
        import zstandard

        lines = zstandard.ZstdCompressor().compress(lines)
    path.write_bytes(lines)
    return path


def stdlib_paragraphs(count: int) -> list[str]:
    """Real prose: paragraphs of the standard library's module docstrings."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        paragraphs += [p.strip() for p in (doc or "").split("\n\n") if len(p.strip()) > 40]
        if len(paragraphs) >= count:
            break
    assert len(paragraphs) >= count, "not enough stdlib text"
    return paragraphs[:count]


def base_config(inputs: list[Path | str], output: Path | str, **select: Any) -> dict[str, Any]:
    return {
        "input": {"paths": [str(p) for p in inputs]},
        "output": {"path": str(output)},
        "select": select or {"method": "all"},
    }
