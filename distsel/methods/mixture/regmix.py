"""RegMix: regress the target loss of small proxies on their mixture weights, then take the
mean of the best predicted mixtures.

Liu et al., "RegMix: Data Mixture as Regression for Language Model Pre-training" (2024).

    training mixtures   w ~ Dirichlet(p^0.5 · s),  s ~ log-uniform[0.1, 5],  p = natural shares,
                        rejected while some group would repeat more than MAX_EPOCHS times:
                        w_g · T > MAX_EPOCHS · n_g   (T tokens per proxy, n_g tokens of group g)
    regression          f(w) ≈ target loss: LightGBM (learning rate 1e-2, ≤ 1000 trees, early
                        stopping on a held-out split), else scikit-learn gradient boosting
    optimum             w* = mean of the `regmix_top` smallest f(w) among `regmix_samples` draws
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from distsel.algorithms.simplex import uniform_weights
from distsel.core.errors import DistselError
from distsel.methods.mixture.experiment import experiment_for
from distsel.methods.mixture.trials import MixtureData
from distsel.methods.mixture.tune import (
    baselines,
    run_grid,
    train_once,
    trial_table,
)

if TYPE_CHECKING:
    from distsel.core.config import Config
    from distsel.core.storage import Store

log = logging.getLogger("distsel")

MAX_EPOCHS = 15
SCALE_RANGE = (0.1, 5.0)
EARLY_STOPPING_ROUNDS = 50
Predictor = Callable[[np.ndarray], np.ndarray]


def dirichlet_mixtures(
    prior: np.ndarray,
    count: int,
    rng: np.random.Generator,
    max_share: np.ndarray | None = None,
    tries: int = 1000,
) -> np.ndarray:
    """(count, k) mixtures w ~ Dirichlet(prior^0.5 · s), s log-uniform in SCALE_RANGE, drawn as
    normalised Gamma(α_g) variables; draws with some w_g > max_share_g are drawn again."""
    prior = np.asarray(prior, dtype=np.float64)
    cap = np.ones_like(prior) if max_share is None else np.asarray(max_share, dtype=np.float64)
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(tries):
        need = count - have
        if need <= 0:
            break
        scale = np.exp(rng.uniform(*np.log(SCALE_RANGE), size=(need, 1)))
        draws = rng.standard_gamma(np.maximum(np.sqrt(prior) * scale, 1e-6))
        total = draws.sum(axis=1, keepdims=True)
        good = (total[:, 0] > 0) & np.all(draws <= cap * total + 1e-12, axis=1)
        kept.append(draws[good] / total[good])
        have += int(good.sum())
    if have < count:
        raise DistselError(f"could not draw {count} mixtures within the {MAX_EPOCHS}-epoch cap")
    return np.concatenate(kept)[:count]


def epoch_cap(data: MixtureData) -> np.ndarray:
    """max_share_g = min(1, MAX_EPOCHS · n_g / T)."""
    per_trial = data.steps * data.proxy.batch_size * data.proxy.max_length
    lengths = np.array([len(s) for s in data.streams], dtype=np.float64)
    return np.minimum(1.0, MAX_EPOCHS * lengths / per_trial)


def fit_regression(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Predictor, dict[str, Any]]:
    """Gradient-boosted trees from weights to loss; a seeded fifth of the rows (when there
    are at least 5) is held out: LightGBM stops early on it; scikit-learn, which stops early
    on its own validation_fraction of the rest, is only measured on it."""
    order = np.random.default_rng(seed).permutation(len(y))
    held = len(y) // 5
    fit_rows, check_rows = order[held:], order[:held]
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return _fit_sklearn(x, y, fit_rows, check_rows, seed)
    return _fit_lightgbm(x, y, fit_rows, check_rows, seed)


def _fit_lightgbm(
    x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, check_rows: np.ndarray, seed: int
) -> tuple[Predictor, dict[str, Any]]:
    import lightgbm

    params = {
        "objective": "regression",
        "learning_rate": 1e-2,
        "min_data_in_leaf": max(2, min(20, len(fit_rows) // 5)),
        "seed": seed,
        "deterministic": True,
        "num_threads": 1,
        "verbose": -1,
    }
    data = lightgbm.Dataset(x[fit_rows], y[fit_rows], params={"verbose": -1})
    valid, stopping = [], []
    if len(check_rows):
        valid = [data.create_valid(x[check_rows], y[check_rows])]
        stopping = [lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    booster = lightgbm.train(
        params, data, num_boost_round=1000, valid_sets=valid, callbacks=stopping
    )
    trees = int(booster.best_iteration or booster.current_iteration())

    def predict(rows: np.ndarray) -> np.ndarray:
        return booster.predict(rows, num_iteration=trees)

    info = {"model": f"lightgbm {lightgbm.__version__}", "trees": trees}
    return predict, {**info, **_check(predict, x, y, fit_rows, check_rows)}


def _fit_sklearn(
    x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, check_rows: np.ndarray, seed: int
) -> tuple[Predictor, dict[str, Any]]:
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(
        learning_rate=1e-2,
        n_estimators=1000,
        min_samples_leaf=max(1, min(20, len(fit_rows) // 5)),
        validation_fraction=0.2,
        n_iter_no_change=EARLY_STOPPING_ROUNDS if len(fit_rows) >= 10 else None,
        random_state=seed,
    )
    model.fit(x[fit_rows], y[fit_rows])
    info = {"model": "sklearn GradientBoostingRegressor", "trees": int(model.n_estimators_)}
    return model.predict, {**info, **_check(model.predict, x, y, fit_rows, check_rows)}


def _check(
    predict: Predictor, x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, check_rows: np.ndarray
) -> dict[str, Any]:
    """Fit rows, split rows, and the mean absolute error on the split (None without one)."""
    error = None
    if len(check_rows):
        error = float(np.mean(np.abs(predict(x[check_rows]) - y[check_rows])))
    return {"fit_rows": int(len(fit_rows)), "split_rows": int(len(check_rows)), "split_mae": error}


def predicted_optimum(
    predict: Predictor,
    prior: np.ndarray,
    samples: int,
    top: int,
    rng: np.random.Generator,
    max_share: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """w* = mean of the `top` draws of smallest predicted loss among `samples` draws, and f(w*)."""
    candidates = dirichlet_mixtures(prior, samples, rng, max_share)
    predicted = predict(candidates)
    best = candidates[np.argsort(predicted, kind="stable")[: min(top, samples)]].mean(axis=0)
    return best, float(predict(best[None, :])[0])


def regmix_search(
    data: MixtureData,
    config: Config,
    store: Store,
    natural: np.ndarray,
    callbacks: list | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """mode regmix: the natural and uniform mixtures plus `trials` Dirichlet draws, each trained
    to the full budget through Tune (no early stopping); the regression's optimum, then trained
    with the same budget (once: its result is kept under OUTPUT/mixture/runs)."""
    options, k = config.mixture, len(data.groups)
    rng = np.random.default_rng([config.seed, 0x7265676D6978])
    cap = epoch_cap(data)
    points = {"natural": natural, "uniform": uniform_weights(k)}
    mixtures = [natural, points["uniform"], *dirichlet_mixtures(natural, options.trials, rng, cap)]
    experiment = experiment_for(config, store, data, "regmix")
    grid, before = run_grid(experiment, data, options, mixtures, callbacks)
    rows = trial_table(grid, data, points)
    done = [r for r in rows if r["status"] == "completed" and r["target_loss"] is not None]
    if len(done) < 2:
        raise DistselError("RegMix needs at least 2 mixtures trained to the full budget")
    x = np.array([[r["weights"][g] for g in data.groups] for r in done])
    y = np.array([r["target_loss"] for r in done])
    predict, fit = fit_regression(x, y, config.seed)
    optimum, predicted = predicted_optimum(
        predict, natural, options.regmix_samples, options.regmix_top, rng, cap
    )
    real = train_once(store, f"{experiment.name}-optimum", optimum, data, options)
    base, extra = baselines(rows, points, data, options, store, experiment)
    weights = dict(zip(data.groups, np.round(optimum, 6).tolist(), strict=True))
    best_sampled = min(done, key=lambda r: r["target_loss"])
    section = {
        "best_weights": weights,
        "best_loss": real["target_loss"],
        "best_heldout_loss": real["heldout_loss"],
        "predicted_loss": predicted,
        "baseline_losses": base,
        "trials": rows,
        "proxy_steps": sum(r["steps"] for r in rows) + int(real["steps"]) + extra,
        "experiment": experiment.path,
        "resumed_trials": before,
        "regmix": {
            **fit,
            "samples": options.regmix_samples,
            "top": options.regmix_top,
            "max_epochs": MAX_EPOCHS,
            "predicted_loss": predicted,
            "real_loss": real["target_loss"],
            "best_sampled": {"trial": best_sampled["trial"], "loss": best_sampled["target_loss"]},
        },
    }
    return weights, section
