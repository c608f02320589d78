"""The mixture search on Ray Tune: the trainable, experiments that resume, the trial table, and
the TPE search (`mixture.mode: tune`). The one module of distsel.mixture that talks to Ray.

Ray Tune — Liaw et al., "Tune: A Research Platform for Distributed Model Selection and Training"
(2018); the searcher is Optuna's TPE (Bergstra et al., 2011) and the scheduler ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distsel.errors import DistselError
from distsel.executor import current
from distsel.mixture import MIXTURE_FOLDER
from distsel.mixture.simplex import (
    LOGIT_BOUND,
    U_HIGH,
    U_LOW,
    Parametrization,
    from_simplex,
    to_simplex,
    uniform_weights,
)
from distsel.mixture.trials import MixtureData, param_names, train_trial, trial_weights

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from distsel.config import Config, MixtureOptions
    from distsel.storage import Store

log = logging.getLogger("distsel")

# ASHA: first rung after this many reports; keep the best 1/REDUCTION at each rung.
ASHA_GRACE_REPORTS = 3
ASHA_REDUCTION = 3
METRIC = "target_loss"
# A trial's folder: mixture_trial_<id>_<n>_... (search algorithms) or _<id>_<00000>_<n>_ (grids).
_TRIAL_FOLDER = re.compile(r"^mixture_trial_[0-9a-f]+(?:_\d{5})?_(\d+)_")


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
    path = f"{MIXTURE_FOLDER}/runs/{key}.json"
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
# Tune experiments


@dataclass(frozen=True)
class Experiment:
    storage: str
    name: str

    @property
    def path(self) -> str:
        return os.path.join(self.storage, self.name)


def experiment_for(config: Config, store: Store, data: MixtureData, mode: str) -> Experiment:
    """Where a search's Tune experiment lives: OUTPUT/mixture/tune/<mode>-<hash of settings>,
    so changed settings start a new experiment instead of resuming an old one."""
    settings = {
        "mixture": config.mixture.model_dump(
            exclude={"max_concurrent", "trial_cpus", "trial_gpus"}
        ),
        "proxy": config.proxy.model_dump(),
        "seed": config.seed,
        "groups": data.groups,
        "streams": [int(len(s)) for s in data.streams],
        "vocab_size": data.vocab_size,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    if store.is_local:
        storage = os.path.abspath(store.path(f"{MIXTURE_FOLDER}/tune"))
    else:
        # Tune keeps its experiment state on the driver's disk here: an s3 output gets a local
        # folder named after it, so a rerun on the same machine still resumes.
        url = hashlib.sha256(store.url.encode()).hexdigest()[:12]
        storage = os.path.join(tempfile.gettempdir(), "distsel-mixture", url)
    return Experiment(storage, f"{mode}-{digest}")


def run_experiment(
    experiment: Experiment,
    trainable_fn: Any,
    space: dict,
    tune_config: Any,
    expected: int,
    callbacks: list | None = None,
) -> tuple[ResultGrid, int]:
    """Fit the experiment, resuming it from Tune's own state when it can be restored; return
    the results and how many trials had finished before this call. An experiment left with
    unfinished trials (interrupted) raises MixtureInterrupted. `callbacks` (Ray Tune callbacks)
    join a new experiment; a resumed one keeps those it was started with."""
    from ray import tune

    if tune.Tuner.can_restore(experiment.path):
        log.info("mixture: resuming the Tune experiment %s", experiment.path)
        tuner = tune.Tuner.restore(experiment.path, trainable=trainable_fn)
        before = tuner.get_results().num_terminated
    else:
        run_config = tune.RunConfig(
            storage_path=experiment.storage, name=experiment.name, verbose=0, callbacks=callbacks
        )
        tuner = tune.Tuner(
            trainable_fn, param_space=space, tune_config=tune_config, run_config=run_config
        )
        before = 0
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(grid) or len(grid) < expected:
        raise MixtureInterrupted(
            f"the mixture search stopped with {grid.num_terminated} of {expected} trials done; "
            f"run again to resume it from {experiment.path}"
        )
    return grid, before


def run_grid(
    experiment: Experiment,
    data: MixtureData,
    options: MixtureOptions,
    mixtures: list[np.ndarray],
    callbacks: list | None = None,
) -> tuple[ResultGrid, int]:
    """run_experiment over a grid of given mixtures, each trained to the full budget (no
    scheduler, so nothing stops early)."""
    from ray import tune

    space = {"weights": tune.grid_search([np.round(m, 12).tolist() for m in mixtures])}
    settings = tune.TuneConfig(
        num_samples=1,
        max_concurrent_trials=options.max_concurrent,
        metric=METRIC,
        mode="min",
        reuse_actors=True,
    )
    return run_experiment(
        experiment, trainable(data, options), space, settings, len(mixtures), callbacks
    )


def trial_table(grid: ResultGrid, data: MixtureData, points: dict[str, np.ndarray]) -> list[dict]:
    """One row per trial, in creation order: weights, losses, tokens, steps, status
    (completed / stopped early / error) and which seeded point it is, if any."""
    rows = []
    for index, result in enumerate(sorted(grid, key=_creation_index)):
        weights = trial_weights(result.config, data)
        metrics = result.metrics or {}
        steps = int(metrics.get("steps", 0))
        status = "error" if result.error else "completed" if steps == data.steps else "stopped"
        point = next((n for n, w in points.items() if np.allclose(w, weights, atol=1e-6)), None)
        rows.append(
            {
                "trial": index,
                "trial_id": metrics.get("trial_id"),
                "weights": dict(zip(data.groups, np.round(weights, 6).tolist(), strict=True)),
                "target_loss": _float(metrics.get("target_loss")),
                "heldout_loss": _float(metrics.get("heldout_loss")),
                "tokens": int(metrics.get("tokens", 0)),
                "steps": steps,
                "status": status,
                "point": point,
            }
        )
    return rows


def _creation_index(result: Any) -> int:
    """n in the trial folder's name, <trainable>_<trial id>_<n>_<params>_<date>, which Tune
    counts up as it creates trials (a restored ResultGrid lists them in another order)."""
    found = _TRIAL_FOLDER.match(os.path.basename(str(result.path).rstrip("/")))
    return int(found.group(1)) if found else 1 << 30


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


def search_space(k: int, kind: Parametrization) -> dict[str, Any]:
    from ray import tune

    low, high = (U_LOW, U_HIGH) if kind == "dirichlet" else (-LOGIT_BOUND, LOGIT_BOUND)
    return {name: tune.uniform(low, high) for name in param_names(k)}


def seeded_points(natural: np.ndarray, kind: Parametrization) -> dict[str, np.ndarray]:
    """The natural and uniform mixtures, as the weights the trials will see (mapped to the
    parameters and back, so clipping is accounted for)."""
    k = len(natural)
    return {
        name: to_simplex(from_simplex(w, kind), kind)
        for name, w in (("natural", natural), ("uniform", uniform_weights(k)))
    }


def tune_config(options: MixtureOptions, data: MixtureData, seed: int, points: list[dict]) -> Any:
    """OptunaSearch (seeded multivariate TPE) started from `points`; ASHA on training_iteration
    (one per report) when options.asha."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    startup = min(10, max(2, options.trials // 4))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    scheduler = None
    if options.asha:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=data.reports,
            grace_period=min(data.reports, ASHA_GRACE_REPORTS),
            reduction_factor=ASHA_REDUCTION,
        )
    return tune.TuneConfig(
        search_alg=OptunaSearch(points_to_evaluate=points, sampler=sampler),
        scheduler=scheduler,
        num_samples=options.trials,
        max_concurrent_trials=options.max_concurrent,
        metric=METRIC,
        mode="min",
        reuse_actors=True,
    )


def tune_search(
    data: MixtureData,
    config: Config,
    store: Store,
    natural: np.ndarray,
    callbacks: list | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """mode tune: the best completed trial of a seeded TPE search with ASHA."""
    options = config.mixture
    points = seeded_points(natural, data.kind)
    names = param_names(len(data.groups))
    seeds = [dict(zip(names, from_simplex(points["natural"], data.kind).tolist(), strict=True))]
    if not np.allclose(points["natural"], points["uniform"], atol=1e-6):
        seeds.append(
            dict(zip(names, from_simplex(points["uniform"], data.kind).tolist(), strict=True))
        )
    experiment = experiment_for(config, store, data, "tune")
    space = search_space(len(data.groups), data.kind)
    grid, before = run_experiment(
        experiment,
        trainable(data, options),
        space,
        tune_config(options, data, config.seed, seeds[: options.trials]),
        options.trials,
        callbacks,
    )
    rows = trial_table(grid, data, points)
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
