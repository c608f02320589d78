"""A mixture search resumes from the trials distsel wrote as JSON, never from a pickle read back
from the output folder (issue 23)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
from pathlib import Path

import pytest
from ray import tune
from test_mixture import InterruptOnce, corpus, make_run  # noqa: F401 (corpus: a fixture)

from distsel.core.errors import DistselError


class Payload:
    """Unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class CountStarts(tune.Callback):
    """How many trials Tune started (trained) in this process."""

    def __init__(self) -> None:
        self.started = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started += 1


def experiment_name(config, pool, context) -> tuple[str, str]:
    """The search's experiment name and its trials file (OUTPUT-relative; None before #23)."""
    from distsel.methods.mixture.selector import prepare_data
    from distsel.methods.mixture.tune import experiment_for

    data, _ = prepare_data(config, context)
    experiment = experiment_for(config, context.store, data, config.mixture.mode)
    return experiment.name, getattr(experiment, "trials", None)


def plant(out: Path, name: str, marker: Path) -> set[Path]:
    """The payload as every pickle the search used to read back: tuner.pkl and a
    searcher-state-*.pkl in the search's Tune experiment under OUTPUT/mixture/tune, and every
    other .pkl anywhere under OUTPUT."""
    payload = pickle.dumps(Payload(marker))
    experiment = out / "mixture" / "tune" / name
    experiment.mkdir(parents=True, exist_ok=True)
    planted = {
        experiment / "tuner.pkl",
        experiment / "searcher-state-2025-01-01_00-00-00.pkl",
        *out.rglob("*.pkl"),
    }
    for path in planted:
        path.write_bytes(payload)
    return planted


def trials_file(out: Path) -> Path:
    found = sorted((out / "mixture" / "trials").glob("*.json"))
    assert len(found) == 1, found
    return found[0]


def comparable(rows: list[dict]) -> list[tuple]:
    return [(r["weights"], r["target_loss"], r["heldout_loss"], r["status"]) for r in rows]


@pytest.mark.parametrize(
    "mode, options, rows",
    [
        # with ASHA, whose rungs are replayed on resume
        pytest.param("tune", {"trials": 2}, 2, marks=pytest.mark.slow),
        pytest.param(
            "regmix",
            {"trials": 1, "regmix_samples": 200, "regmix_top": 5},
            3,  # natural, uniform and one draw
            marks=pytest.mark.slow,
        ),
    ],
)
def test_pickles_in_the_output_are_never_unpickled_on_resume(
    ray_local,
    corpus,  # noqa: F811
    tmp_path,
    mode,
    options,
    rows,
):
    from distsel.methods.mixture.selector import run_mixture_search
    from distsel.methods.mixture.tune import MixtureInterrupted

    out, marker = tmp_path / "out", tmp_path / "payload-ran"
    config, pool, context = make_run(corpus, out, mode=mode, max_concurrent=1, **options)
    with pytest.raises(MixtureInterrupted, match="run again to resume"):
        run_mixture_search(config, context, callbacks=[InterruptOnce(1, tmp_path / "interrupted")])
    name, _ = experiment_name(config, pool, context)
    planted = plant(out, name, marker)
    assert len(planted) >= 2

    try:
        _, section = run_mixture_search(config, context)
    finally:
        assert not marker.exists(), "a pickle from the output folder was unpickled"
    trials = section["trials"]
    assert len(trials) == rows and all(r["status"] in ("completed", "stopped") for r in trials)
    assert [r["point"] for r in trials[:2]] == ["natural", "uniform"]
    assert section["resumed_trials"] >= 1
    assert set(out.rglob("*.pkl")) == planted, "the search wrote a pickle into the output"


@pytest.mark.slow
def test_a_resumed_search_trains_only_the_unfinished_trials(ray_local, corpus, tmp_path):  # noqa: F811
    from distsel.methods.mixture.selector import run_mixture_search
    from distsel.methods.mixture.tune import MixtureInterrupted

    options = {"trials": 4, "asha": False, "max_concurrent": 1}
    out = tmp_path / "out"
    config, pool, context = make_run(corpus, out, **options)
    with pytest.raises(MixtureInterrupted, match="run again to resume"):
        run_mixture_search(config, context, callbacks=[InterruptOnce(2, tmp_path / "interrupted")])
    saved = json.loads(trials_file(out).read_text())["trials"]
    assert 2 <= len(saved) < 4

    counter = CountStarts()
    _, section = run_mixture_search(config, context, callbacks=[counter])
    rows = section["trials"]
    assert counter.started == 4 - len(saved), "a finished trial was trained again"
    assert section["resumed_trials"] == len(saved)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    assert [r["trial_id"] for r in rows[: len(saved)]] == [t["trial_id"] for t in saved]
    assert section["proxy_steps"] == 4 * section["proxy"]["steps_per_trial"]

    # The same trials (mixtures and losses) as a search that was never interrupted.
    config, pool, context = make_run(corpus, tmp_path / "whole", **options)
    _, whole = run_mixture_search(config, context)
    assert comparable(rows) == comparable(whole["trials"])
    assert section["best_weights"] == whole["best_weights"]

    again = CountStarts()  # a finished search trains nothing
    _, last = run_mixture_search(config, context, callbacks=[again])
    assert again.started == 0 and last["trials"] == whole["trials"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"experiment": "x", "trials": [{"config": {"p0": 0.5}}]}),
        json.dumps([1, 2, 3]),
    ],
    ids=["not-json", "bad-record", "not-an-object"],
)
def test_a_corrupted_trials_file_is_named_in_the_error(ray_local, corpus, tmp_path, text):  # noqa: F811
    from distsel.methods.mixture.selector import run_mixture_search

    out = tmp_path / "out"
    config, pool, context = make_run(corpus, out, trials=2)
    _, relative = experiment_name(config, pool, context)
    assert relative is not None, "the search keeps no trials file"
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(DistselError, match=re.escape(str(path))) as raised:
        run_mixture_search(config, context)
    assert "malformed" in str(raised.value)
