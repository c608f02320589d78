"""A proxy sized to its pool (proxy.max_passes) and progress lines from long calls on the
driver's console (distsel.core.executor.Progress), under a LocalExecutor and on a real local Ray."""

from __future__ import annotations

import logging
import math
import re
import sys
import time

import pytest
from helpers import stdlib_paragraphs

from distsel.core import executor as executor_module
from distsel.core.config import ProxyConfig
from distsel.core.executor import LocalExecutor, RayExecutor
from distsel.core.progress import Progress
from distsel.core.storage import Store
from distsel.methods import proxy, proxy_model
from distsel.methods.proxy import proxy_fingerprint, train_on_cluster
from distsel.methods.proxy_model import INFO_FILE, PROGRESS_FILE, train_proxy, training_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 128 tokens a step; a sample of 40 short paragraphs holds a few thousand tokens, so
# 4 passes over it come to far fewer than the million asked.
TINY = {
    "hidden": 32,
    "layers": 1,
    "heads": 4,
    "vocab_size": 512,
    "max_length": 32,
    "batch_size": 4,
    "learning_rate": 1e-2,
}
STEP_LINE = re.compile(
    r"^proxy: step (\d+)/(\d+), loss \d+\.\d\d, (\d+h\d\dm|\d+m\d\ds|\d+s) left$"
)
LIMIT_LINE = re.compile(
    r"^proxy: training on ([\d,]+) tokens, not proxy\.train_tokens 1,000,000: 4 passes over "
    r"its ([\d,]+)-token sample \(proxy\.max_passes\)$"
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return stdlib_paragraphs(40)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "distsel"]


# ---------------------------------------------------------------------------------------------
# proxy.max_passes


def test_training_steps_stop_at_max_passes_over_the_sample():
    config = ProxyConfig(**TINY, train_tokens=100_000)  # 782 steps of 128 tokens
    assert training_steps(config, 1_000_000) == math.ceil(100_000 / 128)
    assert training_steps(config, 25_000) == math.ceil(100_000 / 128)  # 4 · 25,000 = asked
    assert training_steps(config, 10_000) == 40_000 // 128  # 4 passes: 312 steps
    assert training_steps(config.model_copy(update={"max_passes": 2.5}), 10_000) == 195
    assert training_steps(config.model_copy(update={"max_passes": None}), 10) == 782
    assert training_steps(config, 3) == 1  # at least one step


def test_max_passes_is_at_least_one_or_null():
    assert ProxyConfig().max_passes == 4
    assert ProxyConfig(max_passes=None).max_passes is None
    with pytest.raises(ValueError, match="max_passes"):
        ProxyConfig(max_passes=0.5)


def test_the_proxy_fingerprint_follows_max_passes():
    config = ProxyConfig(**TINY)
    assert proxy_fingerprint(config, 0) == proxy_fingerprint(ProxyConfig(**TINY), 0)
    assert proxy_fingerprint(config, 0)["proxy"]["max_passes"] == 4
    others = [config.model_copy(update={"max_passes": v}) for v in (2, 8.0, None)]
    prints = [proxy_fingerprint(c, 0) for c in [config, *others]]
    assert len({repr(p) for p in prints}) == 4


def test_a_small_sample_trains_for_max_passes_and_says_so(texts, caplog):
    config = ProxyConfig(**TINY, train_tokens=1_000_000)
    with caplog.at_level(logging.INFO, logger="distsel"):
        _, _, info = train_proxy(texts, config, seed=3)
    sample = info["data_tokens"]
    assert 1_000 < sample < 20_000, "a sample far smaller than train_tokens / 4"
    assert info["steps"] == math.floor(4 * sample / 128)
    assert info["train_tokens"] == info["steps"] * 128 <= 4 * sample
    assert info["train_tokens_requested"] == 1_000_000
    assert info["limited_by_max_passes"] is True and info["max_passes"] == 4
    assert 3.9 < info["data_repeats"] <= 4

    limits = [m for m in messages(caplog) if LIMIT_LINE.match(m)]
    assert len(limits) == 1
    trained, over = LIMIT_LINE.match(limits[0]).groups()
    assert int(trained.replace(",", "")) == info["train_tokens"]
    assert int(over.replace(",", "")) == sample


def test_a_large_enough_sample_trains_for_train_tokens_without_a_word(texts, caplog):
    config = ProxyConfig(**TINY, train_tokens=2_000)
    with caplog.at_level(logging.INFO, logger="distsel"):
        _, _, info = train_proxy(texts, config, seed=3)
    assert info["steps"] == math.ceil(2_000 / 128)
    assert info["limited_by_max_passes"] is False
    assert not [m for m in messages(caplog) if "proxy.max_passes" in m]


# ---------------------------------------------------------------------------------------------
# Progress lines


def step_lines(caplog) -> list[tuple[int, int]]:
    found = [STEP_LINE.match(m) for m in messages(caplog)]
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def test_training_reports_every_tenth_of_its_steps(texts, caplog):
    config = ProxyConfig(**TINY, train_tokens=40 * 128)
    with caplog.at_level(logging.INFO, logger="distsel"):
        train_proxy(texts, config, seed=3)
    assert step_lines(caplog) == [(step, 40) for step in range(4, 41, 4)]


def test_training_reports_at_least_every_progress_seconds(texts, caplog, monkeypatch):
    monkeypatch.setattr(proxy_model, "PROGRESS_SECONDS", 0.0)
    config = ProxyConfig(**TINY, train_tokens=25 * 128)
    with caplog.at_level(logging.INFO, logger="distsel"):
        train_proxy(texts, config, seed=3)
    assert step_lines(caplog) == [(step, 25) for step in range(1, 26)]


def test_progress_under_a_local_executor_is_logged_once(texts, caplog, tmp_path, monkeypatch):
    monkeypatch.setattr(proxy, "training_resources", lambda: (1, 0))  # one torch thread
    config = ProxyConfig(**TINY, train_tokens=1_000_000)
    folder = str(tmp_path / "proxy")
    with LocalExecutor().active(), caplog.at_level(logging.INFO, logger="distsel"):
        info = train_on_cluster(texts[:15], config, 3, folder)
    lines = step_lines(caplog)
    assert 10 <= len(lines) <= 11 and lines[-1] == (info["steps"], info["steps"])
    assert len([m for m in messages(caplog) if LIMIT_LINE.match(m)]) == 1
    assert not (tmp_path / "proxy" / PROGRESS_FILE).exists()


def test_a_worker_s_lines_are_relayed_once_each_in_order(tmp_path, caplog):
    store = Store(str(tmp_path))
    driver = Progress(store, "progress.json")
    worker = Progress(store, "progress.json")
    worker.token, worker.driver = driver.token, "a worker process"
    relayed = []
    with caplog.at_level(logging.INFO, logger="distsel"):
        worker.say("one %d", 1)
        caplog.clear()  # the worker's own line (in its process, Ray's worker log)
        driver.relay()
        driver.relay()
        relayed += messages(caplog)
        worker.say("two")
        worker.say("three")
        caplog.clear()
        driver.relay()
        Progress(store, "progress.json").relay()  # another call's Progress: not its lines
        driver.close()
        relayed += messages(caplog)
    assert relayed == ["one 1", "two", "three"]
    assert not (tmp_path / "progress.json").exists()


@pytest.fixture
def ray_executor(ray_local, monkeypatch) -> RayExecutor:
    """A RayExecutor on the session's Ray. Its start quiets Ray Data's console handlers, which
    under pytest include caplog's own (pytest hands them to the non-propagating "ray.data"
    logger too): left as they are here, so that caplog still sees INFO lines."""
    monkeypatch.setattr(executor_module, "_quiet_ray_data", lambda: None)
    return RayExecutor()


def _slow_call(progress: Progress) -> int:
    progress.say("first line")
    time.sleep(5)
    progress.say("second line")
    return 7


def test_a_ray_task_s_lines_reach_the_driver_while_it_runs(ray_executor, tmp_path, caplog):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    progress = Progress(Store(str(tmp_path)), "slow.json")
    with ray_executor.active(), caplog.at_level(logging.INFO, logger="distsel"):
        assert ray_executor.call(_slow_call, progress, progress=progress) == 7
        returned = time.time()
    records = {r.getMessage(): r.created for r in caplog.records if r.name == "distsel"}
    assert list(records) == ["first line", "second line"]
    assert records["first line"] < returned - 2, "relayed while the task was still running"
    assert not (tmp_path / "slow.json").exists()


def test_proxy_training_on_ray_shows_its_progress_on_the_driver(
    ray_executor, texts, tmp_path, caplog
):
    config = ProxyConfig(**TINY, train_tokens=1_000_000)
    folder = str(tmp_path / "proxy")
    with ray_executor.active(), caplog.at_level(logging.INFO, logger="distsel"):
        info = train_on_cluster(texts[:15], config, 3, folder)
    # The task runs in a Ray worker: these lines reached the driver's logger through the relay.
    lines = step_lines(caplog)
    assert len(lines) >= 10 and lines[-1] == (info["steps"], info["steps"])
    assert [step for step, _ in lines] == sorted({step for step, _ in lines})
    assert len([m for m in messages(caplog) if LIMIT_LINE.match(m)]) == 1
    assert info["limited_by_max_passes"] is True
    assert not (tmp_path / "proxy" / PROGRESS_FILE).exists()
    assert (tmp_path / "proxy" / INFO_FILE).exists()
