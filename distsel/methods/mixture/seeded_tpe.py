"""The natural and uniform mixtures as the search's seeded first points, and Optuna's TPE that
takes them first (the Tune search itself is in distsel.methods.mixture.tune)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from distsel.algorithms.simplex import (
    Parametrization,
    from_simplex,
    to_simplex,
    uniform_weights,
)

if TYPE_CHECKING:
    pass


def seeded_points(natural: np.ndarray, kind: Parametrization) -> dict[str, np.ndarray]:
    """The natural and uniform mixtures, as the weights the trials will see (mapped to the
    parameters and back, so clipping is accounted for)."""
    k = len(natural)
    return {
        name: to_simplex(from_simplex(w, kind), kind)
        for name, w in (("natural", natural), ("uniform", uniform_weights(k)))
    }


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's multivariate TPE whose random draws for trial n depend on (seed, n) alone, not
    on the draws made before: a fresh seeded TPESampler per trial. A search resumed by replaying
    its finished trials into a new study then suggests what the uninterrupted search would
    have, wherever the trials finished in the same order (one trial at a time, no ASHA)."""

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._tpe = self._sampler(0)

    def _sampler(self, number: int) -> optuna.samplers.TPESampler:
        seed = int(np.random.SeedSequence([self.seed, number, 0x545045]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True
            )

    def before_trial(self, study: Any, trial: Any) -> None:
        self._tpe = self._sampler(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict) -> dict:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Any, trial: Any, param_name: str, param_distribution: Any
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._tpe.after_trial(study, trial, state, values)
