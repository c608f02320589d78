"""A search's finished trials as JSON under OUTPUT/mixture/trials/<name>.json, checked when read
back (no pickle): what a rerun resumes from."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from distsel.algorithms.simplex import (
    LOGIT_BOUND,
    U_HIGH,
    U_LOW,
)
from distsel.core import layout
from distsel.core.errors import DistselError
from distsel.methods.mixture.trials import MixtureData, param_names

if TYPE_CHECKING:
    from distsel.core.config import Config
    from distsel.core.storage import Store

METRIC = "target_loss"

# The trials file: its version, and what each finished trial keeps.
TRIALS_VERSION = 1


RECORD_KEYS = {"order", "trial_id", "config", "metrics", "status", "reports", "error"}


LOSS_KEYS = ("target_loss", "heldout_loss", "train_loss")


METRIC_KEYS = {*LOSS_KEYS, "tokens", "steps"}


@dataclass(frozen=True)
class Experiment:
    """A search's finished trials, in OUTPUT/mixture/trials/<name>.json. A rerun resumes from
    that file alone: Tune's own experiment state (pickles) lives in a private temporary folder
    for one run and is never read back."""

    store: Store
    name: str

    @property
    def trials(self) -> str:
        """The trials file, relative to OUTPUT."""
        return layout.mixture_trials(self.name)

    @property
    def path(self) -> str:
        return f"{self.store.url}/{self.trials}"


def experiment_for(config: Config, store: Store, data: MixtureData, mode: str) -> Experiment:
    """A search's experiment, <mode>-<hash of settings>, so changed settings start a new
    search instead of resuming an old one."""
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
    return Experiment(store, f"{mode}-{digest}")


def load_trials(
    experiment: Experiment, data: MixtureData, expected: int, grid: bool = False
) -> list[dict]:
    """The finished trials of an earlier run of the search (none when it never ran), checked
    (`grid`: trials of given mixtures, else of the search's parameters): a malformed file
    raises a DistselError naming it."""
    store = experiment.store
    if not store.exists(experiment.trials):
        return []
    try:
        saved = json.loads(store.read_bytes(experiment.trials), parse_constant=_no_constant)
    except ValueError as exc:
        malformed_trials(experiment, f"not valid JSON: {exc}")
    problem = _trials_problem(saved, experiment.name, data, expected, grid)
    if problem:
        malformed_trials(experiment, problem)
    return saved["trials"]


def save_trials(experiment: Experiment, records: list[dict]) -> None:
    """Write the finished trials (atomically: a reader sees the old file or the new one)."""
    document = {"version": TRIALS_VERSION, "experiment": experiment.name, "trials": records}
    experiment.store.write_json(experiment.trials, document)


def malformed_trials(experiment: Experiment, problem: str) -> NoReturn:
    raise DistselError(
        f"{experiment.path}: malformed mixture trials file ({problem}); "
        "delete it to run the search again from the start"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _trials_problem(
    saved: Any, name: str, data: MixtureData, expected: int, grid: bool
) -> str | None:
    """What is wrong with a trials file's content, or None."""
    if not isinstance(saved, dict) or not isinstance(saved.get("trials"), list):
        return "expected an object with a list of trials"
    if saved.get("version") != TRIALS_VERSION:
        return f"version {saved.get('version')!r}, expected {TRIALS_VERSION}"
    if saved.get("experiment") != name:
        return f"experiment {saved.get('experiment')!r}, expected {name!r}"
    trials = saved["trials"]
    if len(trials) > expected:
        return f"{len(trials)} trials, the search has {expected}"
    for index, record in enumerate(trials):
        problem = _record_problem(record, data, grid)
        if problem:
            return f"trial {index}: {problem}"
    orders = [tuple(r["order"]) for r in trials]
    if len(set(orders)) < len(orders):
        return "two trials share one order"
    return None


def _record_problem(record: Any, data: MixtureData, grid: bool) -> str | None:
    if not isinstance(record, dict) or set(record) != RECORD_KEYS:
        return f"expected an object with the keys {sorted(RECORD_KEYS)}"
    order, config, metrics = record["order"], record["config"], record["metrics"]
    if not (isinstance(order, list) and len(order) == 2 and all(_is_int(v, 0) for v in order)):
        return "order is not two non-negative integers"
    if not isinstance(record["trial_id"], str):
        return "trial_id is not a string"
    problem = _config_problem(config, data, grid)
    if problem:
        return problem
    if not isinstance(metrics, dict) or set(metrics) != METRIC_KEYS:
        return f"metrics should have the keys {sorted(METRIC_KEYS)}"
    if not all(metrics[k] is None or _is_number(metrics[k]) for k in LOSS_KEYS):
        return "a loss is not a finite number or null"
    if not (_is_int(metrics["steps"], 0, data.steps) and _is_int(metrics["tokens"], 0)):
        return f"steps not in [0, {data.steps}] or tokens negative"
    reports = record["reports"]
    if not isinstance(reports, list) or not all(
        isinstance(r, list)
        and len(r) == 2
        and _is_int(r[0], 0)
        and (r[1] is None or _is_number(r[1]))
        for r in reports
    ):
        return "reports is not a list of [iteration, target loss]"
    error = record["error"]
    if error is not None and not isinstance(error, str):
        return "error is not a string or null"
    status = trial_status(metrics["steps"], data.steps, error)
    if record["status"] != status:
        return f"status {record['status']!r} does not match its steps and error ({status!r})"
    return None


def _config_problem(config: Any, data: MixtureData, grid: bool) -> str | None:
    """A trial's config: a grid trial's {"weights": [w_g]} or a search trial's parameters."""
    k = len(data.groups)
    if not isinstance(config, dict):
        return "config is not an object"
    if grid:
        weights = config.get("weights")
        if set(config) != {"weights"} or not isinstance(weights, list) or len(weights) != k:
            return f"config weights are not a list of {k} numbers"
        if not all(_is_number(w) and w >= 0 for w in weights):
            return "config weights are not non-negative numbers"
        return None
    low, high = (U_LOW, U_HIGH) if data.kind == "dirichlet" else (-LOGIT_BOUND, LOGIT_BOUND)
    if set(config) != set(param_names(k)):
        return f"config has not the parameters {param_names(k)}"
    if not all(_is_number(v) and low <= v <= high for v in config.values()):
        return f"a config parameter is not a number in [{low}, {high}]"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any, low: int, high: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def trial_status(steps: int, total: int, error: str | None) -> str:
    """error when the trial failed, completed when it ran all `total` steps, else stopped."""
    return "error" if error is not None else "completed" if steps == total else "stopped"
