"""The mixture search on Ray Tune: the trainable, experiments that resume, the trial table, and
the TPE search (`mixture.mode: tune`). The one module of distsel.methods.mixture that talks to Ray.

A search resumes from what distsel wrote itself: each finished trial goes to
OUTPUT/mixture/trials/<experiment>.json (JSON, checked when read back), and a rerun replays
those trials into a new searcher and scheduler and runs only the missing trials. Tune's own
experiment state (pickles: tuner.pkl, searcher-state-*.pkl) is kept in a private temporary
folder for the one run and never restored; nothing read from the output is unpickled.

Ray Tune — Liaw et al., "Tune: A Research Platform for Distributed Model Selection and Training"
(2018); the searcher is Optuna's TPE (Bergstra et al., 2011) and the scheduler ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune import Callback

from distsel.algorithms.simplex import LOGIT_BOUND, U_HIGH, U_LOW, Parametrization, from_simplex
from distsel.core import layout
from distsel.core.errors import DistselError, strip_credentials
from distsel.core.executor import current
from distsel.methods.mixture.experiment import (
    LOSS_KEYS,
    METRIC,
    Experiment,
    experiment_for,
    load_trials,
    malformed_trials,
    save_trials,
    trial_status,
)
from distsel.methods.mixture.seeded_tpe import TrialSeededTPE, seeded_points
from distsel.methods.mixture.trials import MixtureData, param_names, train_trial, trial_weights

if TYPE_CHECKING:
    from distsel.core.config import Config, MixtureOptions
    from distsel.core.storage import Store

log = logging.getLogger("distsel")

# ASHA: first rung after this many reports; keep the best 1/REDUCTION at each rung.


class MixtureInterrupted(DistselError):
    """The Tune experiment stopped before every trial finished; a rerun resumes it."""


# ---------------------------------------------------------------------------------------------
# Trials on Ray


def mixture_trial(config: dict[str, Any], data: MixtureData) -> None:
    """Function trainable: train on the trial's mixture, tune.report every report_every steps."""
    from ray import tune

    train_trial(trial_weights(config, data), data, tune.report)


def trainable(data: MixtureData, options: MixtureOptions) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(mixture_trial, data=data),
        {"cpu": options.trial_cpus, "gpu": options.trial_gpus},
    )


def train_remote(weights: np.ndarray, data: MixtureData, options: MixtureOptions) -> dict:
    """One mixture trained outside Tune (a task with the trials' resources): its last
    metrics."""
    weights = np.asarray(weights, dtype=np.float64)
    return current().call(
        _train_task, weights, data, num_cpus=options.trial_cpus, num_gpus=options.trial_gpus
    )


def _train_task(weights: np.ndarray, data: MixtureData) -> dict:
    return train_trial(weights, data, lambda metrics: None)


def train_once(
    store: Store, key: str, weights: np.ndarray, data: MixtureData, options: MixtureOptions
) -> dict[str, Any]:
    """train_remote's metrics, kept in OUTPUT/mixture/runs/<key>.json: a rerun with the same
    weights reads them instead of training again."""
    path = layout.mixture_run(key)
    if store.exists(path):
        saved = store.read_json(path)
        if np.allclose(saved["weights"], weights, atol=1e-9):
            return saved["metrics"]
    metrics = {
        k: _float(v) if isinstance(v, float) else v
        for k, v in train_remote(weights, data, options).items()
    }
    store.write_json(path, {"weights": np.asarray(weights).tolist(), "metrics": metrics})
    return metrics


# ---------------------------------------------------------------------------------------------
# Experiments: the trials distsel keeps (JSON), Tune's state kept private to the run


class TrialRecorder(Callback):
    """Ray Tune callback: adds each trial that finishes (trained to the end, stopped early, or
    failed) to the experiment's trials file as it finishes, so an interrupted search loses
    only the trials in flight. `order` sorts the trials as they were created: [run, n] for a
    search (n counted by Tune within a run), [0, position] for a grid (`grid`: the positions
    and mixtures still to train)."""

    def __init__(
        self,
        experiment: Experiment,
        records: list[dict],
        steps: int,
        run: int,
        grid: list[tuple[int, list[float]]] | None = None,
    ) -> None:
        self.experiment, self.records, self.steps, self.run = experiment, list(records), steps, run
        self.grid = None if grid is None else list(grid)
        self.reports: dict[str, list[list]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        step = [int(result.get("training_iteration", 0)), _float(result.get(METRIC))]
        self.reports.setdefault(trial.trial_id, []).append(step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._finished(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._finished(trial, _error_text(trial))

    def _finished(self, trial: Any, error: str | None) -> None:
        last = trial.last_result or {}
        metrics = {key: _float(last.get(key)) for key in LOSS_KEYS}
        metrics["tokens"], metrics["steps"] = int(last.get("tokens", 0)), int(last.get("steps", 0))
        config = json.loads(json.dumps(dict(trial.config)))
        record = {
            "order": self._order(trial, config),
            "trial_id": str(trial.trial_id),
            "config": config,
            "metrics": metrics,
            "status": trial_status(metrics["steps"], self.steps, error),
            "reports": self.reports.pop(trial.trial_id, []),
            "error": error,
        }
        self.records.append(record)
        save_trials(self.experiment, self.records)

    def _order(self, trial: Any, config: dict) -> list[int]:
        if self.grid is None:
            found = re.match(r"\d+", str(trial.experiment_tag or ""))
            return [self.run, int(found.group()) if found else 1 << 30]
        slot = next(i for i, (_, w) in enumerate(self.grid) if w == config.get("weights"))
        return [0, self.grid.pop(slot)[0]]  # a grid trial's weights are among the grid's


def _error_text(trial: Any) -> str:
    """The last line of a failed trial's error (Tune's text trace), credentials removed."""
    try:
        text = str(trial.get_error() or "").strip()
    except Exception:  # noqa: BLE001 - the error text is only informative
        text = ""
    line = text.splitlines()[-1] if text else "the trial failed"
    return strip_credentials(line)[:500]


def run_experiment(
    experiment: Experiment,
    data: MixtureData,
    trainable_fn: Any,
    space: dict | None,
    tune_config: Any,
    expected: int,
    records: list[dict],
    callbacks: list | None = None,
    grid: list[tuple[int, list[float]]] | None = None,
) -> list[dict]:
    """Fit a new Tune experiment for the trials that are not in `records` (the finished ones)
    and return all finished trials. Tune keeps its state in a private temporary folder, removed
    afterwards. A search left with unfinished trials (interrupted) raises MixtureInterrupted.
    `callbacks` (Ray Tune callbacks) join the experiment."""
    from ray import tune

    run = 0 if grid is not None else 1 + max((r["order"][0] for r in records), default=-1)
    recorder = TrialRecorder(experiment, records, data.steps, run, grid)
    private = tempfile.mkdtemp(prefix="distsel-tune-")  # mode 0700: this user's only
    try:
        run_config = tune.RunConfig(
            storage_path=private,
            name=experiment.name,
            verbose=0,
            callbacks=[recorder, *(callbacks or [])],
        )
        tune.Tuner(
            trainable_fn, param_space=space, tune_config=tune_config, run_config=run_config
        ).fit()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if len(recorder.records) < expected:
        raise MixtureInterrupted(
            f"the mixture search stopped with {len(recorder.records)} of {expected} trials "
            f"done; run again to resume it from {experiment.path}"
        )
    return recorder.records


def run_grid(
    experiment: Experiment,
    data: MixtureData,
    options: MixtureOptions,
    mixtures: list[np.ndarray],
    callbacks: list | None = None,
) -> tuple[list[dict], int]:
    """run_experiment over a grid of given mixtures, each trained to the full budget (no
    scheduler, so nothing stops early): the finished trials, and how many had finished before
    this call (those are not trained again)."""
    from ray import tune

    grid = [np.round(m, 12).tolist() for m in mixtures]
    records = load_trials(experiment, data, len(grid), grid=True)
    for record in records:
        position = record["order"][1]
        if position >= len(grid) or record["config"].get("weights") != grid[position]:
            malformed_trials(experiment, f"trial {record['trial_id']} is not mixture {position}")
    done = {r["order"][1] for r in records}
    pending = [(i, w) for i, w in enumerate(grid) if i not in done]
    before = len(records)
    if pending:
        space = {"weights": tune.grid_search([w for _, w in pending])}
        settings = tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=options.max_concurrent,
            metric=METRIC,
            mode="min",
            reuse_actors=True,
        )
        records = run_experiment(
            experiment,
            data,
            trainable(data, options),
            space,
            settings,
            len(grid),
            records,
            callbacks,
            pending,
        )
    return records, before


def trial_table(
    records: list[dict], data: MixtureData, points: dict[str, np.ndarray]
) -> list[dict]:
    """One row per finished trial, in creation order: weights, losses, tokens, steps, status
    (completed / stopped early / error) and which seeded point it is, if any."""
    rows = []
    for index, record in enumerate(sorted(records, key=lambda r: r["order"])):
        weights = trial_weights(record["config"], data)
        metrics = record["metrics"]
        point = next((n for n, w in points.items() if np.allclose(w, weights, atol=1e-6)), None)
        rows.append(
            {
                "trial": index,
                "trial_id": record["trial_id"],
                "weights": dict(zip(data.groups, np.round(weights, 6).tolist(), strict=True)),
                "target_loss": metrics["target_loss"],
                "heldout_loss": metrics["heldout_loss"],
                "tokens": metrics["tokens"],
                "steps": metrics["steps"],
                "status": record["status"],
                "point": point,
            }
        )
    return rows


def _is_point(row: dict, weights: np.ndarray, data: MixtureData) -> bool:
    mixture = np.array([row["weights"][g] for g in data.groups])
    return row["status"] == "completed" and np.allclose(mixture, weights, atol=1e-6)


def _float(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def best_row(rows: list[dict]) -> dict:
    """The completed (full-budget) trial of lowest target loss."""
    done = [r for r in rows if r["status"] == "completed" and r["target_loss"] is not None]
    if not done:
        raise DistselError("no mixture trial trained to the full budget (see the trial table)")
    return min(done, key=lambda r: r["target_loss"])


def baselines(
    rows: list[dict],
    points: dict[str, np.ndarray],
    data: MixtureData,
    options: MixtureOptions,
    store: Store,
    experiment: Experiment,
) -> tuple[dict[str, dict], int]:
    """Full-budget losses of the uniform and natural mixtures: from their trials when those
    completed, else trained on their own (a stopped or failed baseline, once per experiment);
    and the steps those extra runs took."""
    out, extra = {}, 0
    for name in ("uniform", "natural"):
        row = next((r for r in rows if _is_point(r, points[name], data)), None)
        if row is None:
            metrics = train_once(store, f"{experiment.name}-{name}", points[name], data, options)
            extra += int(metrics["steps"])
            row = {"target_loss": metrics["target_loss"], "heldout_loss": metrics["heldout_loss"]}
        out[name] = {
            "target_loss": row["target_loss"],
            "heldout_loss": row["heldout_loss"],
            "trained_again": "trial" not in row,
        }
    return out, extra


# ---------------------------------------------------------------------------------------------
# Search (mode: tune)


def tune_search(
    data: MixtureData,
    config: Config,
    store: Store,
    natural: np.ndarray,
    callbacks: list | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """mode tune: the best completed trial of a seeded TPE search with ASHA. A rerun reads the
    finished trials from the experiment's trials file and runs only the missing ones."""
    options = config.mixture
    points = seeded_points(natural, data.kind)
    names = param_names(len(data.groups))
    seeds = [dict(zip(names, from_simplex(points["natural"], data.kind).tolist(), strict=True))]
    if not np.allclose(points["natural"], points["uniform"], atol=1e-6):
        seeds.append(
            dict(zip(names, from_simplex(points["uniform"], data.kind).tolist(), strict=True))
        )
    experiment = experiment_for(config, store, data, "tune")
    records = load_trials(experiment, data, options.trials)
    before = len(records)
    if before < options.trials:
        settings = tune_config(options, data, config.seed, seeds[: options.trials], records)
        records = run_experiment(
            experiment,
            data,
            trainable(data, options),
            None,
            settings,
            options.trials,
            records,
            callbacks,
        )
    rows = trial_table(records, data, points)
    best = best_row(rows)
    base, extra = baselines(rows, points, data, options, store, experiment)
    section = {
        "best_weights": best["weights"],
        "best_loss": best["target_loss"],
        "best_heldout_loss": best["heldout_loss"],
        "best_trial": best["trial"],
        "baseline_losses": base,
        "trials": rows,
        "proxy_steps": sum(r["steps"] for r in rows) + extra,
        "experiment": experiment.path,
        "resumed_trials": before,
        "parametrization": data.kind,
        "asha": options.asha,
    }
    return best["weights"], section


ASHA_GRACE_REPORTS = 3


ASHA_REDUCTION = 3


def search_space(k: int, kind: Parametrization) -> dict[str, Any]:
    from ray import tune

    low, high = (U_LOW, U_HIGH) if kind == "dirichlet" else (-LOGIT_BOUND, LOGIT_BOUND)
    return {name: tune.uniform(low, high) for name in param_names(k)}


def tune_config(
    options: MixtureOptions,
    data: MixtureData,
    seed: int,
    points: list[dict],
    records: list[dict] | None = None,
) -> Any:
    """OptunaSearch (seeded multivariate TPE, TrialSeededTPE) started from the `points` that have
    not finished; ASHA on training_iteration (one per report) when options.asha. The finished
    trials (`records`) are replayed into both, so the search goes on as if it had not stopped,
    and only the trials still missing are run."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    records = sorted(records or [], key=lambda r: r["order"])
    space = OptunaSearch.convert_search_space(search_space(len(data.groups), data.kind))
    startup = min(10, max(2, options.trials // 4))
    finished = [r["config"] for r in records]
    searcher = OptunaSearch(
        space=space,
        metric=METRIC,
        mode="min",
        points_to_evaluate=[p for p in points if p not in finished] or None,
        sampler=TrialSeededTPE(seed, startup),
    )
    for record in records:
        loss = record["metrics"]["target_loss"]
        error = record["status"] == "error"
        searcher.add_evaluated_point(
            record["config"], loss, error=error, pruned=not error and loss is None
        )
    scheduler = None
    if options.asha:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=METRIC,
            mode="min",
            max_t=data.reports,
            grace_period=min(data.reports, ASHA_GRACE_REPORTS),
            reduction_factor=ASHA_REDUCTION,
        )
        replay_scheduler(scheduler, records)
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=options.trials - len(records),
        max_concurrent_trials=options.max_concurrent,
        reuse_actors=True,
    )


def replay_scheduler(scheduler: Any, records: list[dict]) -> None:
    """Feed the finished trials' reports to a Tune scheduler (ASHA) through the hooks Tune
    calls, so its rungs hold what they held when those trials finished."""
    for index, record in enumerate(records):
        trial = SimpleNamespace(trial_id=f"replayed-{index}")
        scheduler.on_trial_add(None, trial)
        results = [
            {"training_iteration": step, METRIC: loss}
            for step, loss in record["reports"]
            if loss is not None
        ]
        for result in results:
            scheduler.on_trial_result(None, trial, result)
        if results and record["status"] != "error":
            scheduler.on_trial_complete(None, trial, results[-1])
        else:
            scheduler.on_trial_remove(None, trial)
