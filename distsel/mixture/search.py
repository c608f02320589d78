"""Mixture search on Ray Tune: group token streams, the proxy trainable, and the search driver.

Ray Tune — Liaw et al., "Tune: A Research Platform for Distributed Model Selection and Training"
(2018); the searcher is Optuna's TPE (Bergstra et al., 2011) and the scheduler ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020).

Every trial trains a fresh proxy (the Llama of distsel.scoring.proxy) for
S = ⌈train_tokens / (B · L)⌉ steps of B sequences of L = proxy.max_length tokens, where the
S · B sequences are split over the groups by apportion(S · B, w) (so group g supplies
n_g ≈ w_g · S · B of them), shuffled, and each cut at a seeded random offset from its group's
token stream. Every `report_every` steps it reports the mean token loss

    loss(X) = −1 / (|X| (L − 1)) · Σ_{x ∈ X} Σ_{t=2..L} log p(x_t | x_<t)

on fixed sets X of EVAL_SEQUENCES sequences of the target and of held-out pool documents.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distsel.errors import DistselError
from distsel.mixture import (
    LOGIT_BOUND,
    U_HIGH,
    U_LOW,
    Parametrization,
    apportion,
    from_simplex,
    group_field,
    group_values,
    natural_weights,
    to_simplex,
    uniform_weights,
)
from distsel.scoring.proxy import (
    build_proxy,
    learning_rate_factor,
    make_optimizer,
    make_tokenizer,
    token_stream,
)
from distsel.select.samplers import random_order

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from distsel.config import Config, MixtureOptions, ProxyConfig
    from distsel.select.pool import Pool
    from distsel.stage import StageContext
    from distsel.storage import Store

log = logging.getLogger("distsel")

MIXTURE_FOLDER = "mixture"
TOKENS_META = f"{MIXTURE_FOLDER}/tokens/meta.json"
# Sequences in each fixed evaluation set (target, held-out).
EVAL_SEQUENCES = 32
# A group's sample is read until its approximate tokens (chars / 4) reach this many times the
# stream cap, since a small BPE vocabulary cuts text finer than 4 characters a token.
SAMPLE_MARGIN = 2.0
# ASHA: first rung after this many reports; keep the best 1/REDUCTION at each rung.
ASHA_GRACE_REPORTS = 3
ASHA_REDUCTION = 3
METRIC = "target_loss"
# A trial's folder: mixture_trial_<id>_<n>_... (search algorithms) or _<id>_<00000>_<n>_ (grids).
_TRIAL_FOLDER = re.compile(r"^mixture_trial_[0-9a-f]+(?:_\d{5})?_(\d+)_")


class MixtureInterrupted(DistselError):
    """The Tune experiment stopped before every trial finished; a rerun resumes it."""


# ---------------------------------------------------------------------------------------------
# Data shared by all trials


@dataclass
class MixtureData:
    """What every trial needs: one int32 token stream per group, the fixed (n, L) evaluation
    sequences, and the training settings. Shipped to the trials once (tune.with_parameters)."""

    groups: list[str]
    streams: list[np.ndarray]
    target: np.ndarray
    heldout: np.ndarray
    vocab_size: int
    proxy: ProxyConfig
    train_tokens: int
    report_every: int
    seed: int
    kind: Parametrization = "dirichlet"
    threads: int = 1
    use_gpu: bool = False

    @property
    def steps(self) -> int:
        """S = ⌈train_tokens / (B · L)⌉."""
        per_step = self.proxy.batch_size * self.proxy.max_length
        return max(1, math.ceil(self.train_tokens / per_step))

    @property
    def reports(self) -> int:
        return math.ceil(self.steps / self.report_every)


def prepare_data(pool: Pool, config: Config, context: StageContext) -> tuple[MixtureData, dict]:
    """The trials' data, from OUTPUT/mixture/tokens when it was made under the same settings,
    else tokenised now; and a summary of the groups."""
    store, field = context.store, group_field(config)
    values = group_values(pool, field)
    groups = sorted(set(values.tolist()))
    if len(groups) < 2:
        raise DistselError(f"mixture search needs at least 2 groups in '{field}', found {groups}")
    fingerprint = _tokens_fingerprint(pool, config, field, groups)
    meta = store.read_json(TOKENS_META) if store.exists(TOKENS_META) else None
    if meta is None or meta.get("fingerprint") != fingerprint:
        meta = _tokenise(pool, config, context, groups, fingerprint)
    streams = [_load(store, meta["files"][g]) for g in groups]
    L = config.proxy.max_length
    data = MixtureData(
        groups=groups,
        streams=streams,
        target=_load(store, meta["files"]["(target)"]).reshape(-1, L),
        heldout=_load(store, meta["files"]["(heldout)"]).reshape(-1, L),
        vocab_size=int(meta["vocab_size"]),
        proxy=config.proxy,
        train_tokens=config.mixture.train_tokens,
        report_every=config.mixture.report_every,
        seed=config.seed,
        threads=max(1, int(config.mixture.trial_cpus)),
        use_gpu=config.mixture.trial_gpus > 0,
    )
    natural = natural_weights(values, pool.tokens, groups)
    summary = {
        g: {
            "pool_docs": int(np.count_nonzero(values == g)),
            "pool_tokens": int(pool.tokens[values == g].sum()),
            "natural": float(natural[i]),
            "stream_tokens": int(len(streams[i])),
        }
        for i, g in enumerate(groups)
    }
    return data, {"field": field, "groups": summary, "vocab_size": data.vocab_size}


def _tokens_fingerprint(pool: Pool, config: Config, field: str, groups: list[str]) -> dict:
    proxy = config.proxy
    settings = {
        "field": field,
        "groups": groups,
        "pool_docs": len(pool),
        "seed": config.seed,
        "tokenizer": [proxy.tokenizer, proxy.vocab_size, proxy.max_length, proxy.sample_docs],
        "cap": config.mixture.train_tokens,
        "heldout_docs": config.mixture.heldout_docs,
        "target": [config.target.paths, config.target.text_field],
    }
    return json.loads(json.dumps(settings))


def _tokenise(
    pool: Pool, config: Config, context: StageContext, groups: list[str], fingerprint: dict
) -> dict:
    """Tokenise a seeded sample of each group (at most train_tokens tokens), the held-out slice
    and the target with one BPE tokenizer trained on a sample mixed equally over the groups;
    save each as int32 .npy under OUTPUT/mixture/tokens (meta.json, written last, names them)."""
    from distsel.corpus import read_texts
    from distsel.select.pool import fetch_texts

    began = time.perf_counter()
    store, options, proxy = context.store, config.mixture, config.proxy
    values = group_values(pool, fingerprint["field"])
    heldout = random_order(pool.random_key)[: min(options.heldout_docs, len(pool) // 2)]
    samples = [_group_sample(pool, values, g, heldout, options.train_tokens, proxy) for g in groups]
    texts = fetch_texts(store, pool, [*samples, heldout])
    per_group = max(1, proxy.sample_docs // len(groups))
    tokenizer = make_tokenizer(proxy, [t for group in texts[:-1] for t in group[:per_group]])
    target = read_texts(
        config.target.paths, config.target.text_field, config.target.storage_options
    )
    if not target:
        raise DistselError("mixture search needs target texts (target.paths)")
    target = [target[i] for i in np.random.default_rng(config.seed).permutation(len(target))]
    arrays = {
        g: token_stream(tokenizer, t, options.train_tokens)[: options.train_tokens]
        for g, t in zip(groups, texts[:-1], strict=True)
    }
    L = proxy.max_length
    arrays["(heldout)"] = eval_sequences(token_stream(tokenizer, texts[-1], 1 << 62), L)
    arrays["(target)"] = eval_sequences(
        token_stream(tokenizer, target[: proxy.sample_docs], 1 << 62), L
    )
    files = _file_names(list(arrays))
    for name, array in arrays.items():
        _save(store, files[name], array)
    meta = {
        "fingerprint": fingerprint,
        "files": files,
        "vocab_size": len(tokenizer),
        "tokens": {name: int(array.size) for name, array in arrays.items()},
        "seconds": round(time.perf_counter() - began, 3),
    }
    store.write_json(TOKENS_META, meta)
    log.info("mixture: tokenised %d groups in %.1f s", len(groups), meta["seconds"])
    return meta


def _group_sample(
    pool: Pool, values: np.ndarray, group: str, heldout: np.ndarray, cap: int, proxy: ProxyConfig
) -> np.ndarray:
    """The group's documents in seeded random order, held-out ones left out (unless that leaves
    none), until their approximate tokens reach SAMPLE_MARGIN · cap or sample_docs documents."""
    members = np.flatnonzero(values == group)
    kept = np.setdiff1d(members, heldout)
    members = kept if len(kept) else members
    order = members[random_order(pool.random_key[members])]
    enough = np.cumsum(pool.tokens[order]) >= SAMPLE_MARGIN * cap
    count = int(np.argmax(enough)) + 1 if enough.any() else len(order)
    return order[: min(count, proxy.sample_docs)]


def eval_sequences(stream: np.ndarray, length: int, count: int = EVAL_SEQUENCES) -> np.ndarray:
    """Up to `count` non-overlapping windows of `length` tokens, evenly spaced over the stream
    (a stream shorter than one window is repeated), flattened."""
    if len(stream) < length:
        stream = np.tile(stream, math.ceil(length / max(1, len(stream))))
    windows = len(stream) // length
    starts = np.unique(np.linspace(0, windows - 1, min(count, windows)).round().astype(int))
    return np.concatenate([stream[s * length : (s + 1) * length] for s in starts])


def _file_names(names: list[str]) -> dict[str, str]:
    """OUTPUT-relative .npy paths: groups under tokens/, the evaluation sets under eval/."""
    files, used = {}, set()
    for name in names:
        if name in ("(target)", "(heldout)"):
            files[name] = f"{MIXTURE_FOLDER}/eval/{name.strip('()')}.npy"
            continue
        stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip(".") or "group"
        while stem in used:
            stem += "_"
        used.add(stem)
        files[name] = f"{MIXTURE_FOLDER}/tokens/{stem}.npy"
    return files


def _save(store: Store, path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.int32), allow_pickle=False)
    store.write_bytes(path, buffer.getvalue())


def _load(store: Store, path: str) -> np.ndarray:
    return np.load(io.BytesIO(store.fs.cat_file(store.path(path))), allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Training one proxy on one mixture


def mixture_plan(
    weights: np.ndarray, lengths: list[int], sequences: int, length: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(group, offset) of each training sequence: apportion(sequences, w) per group, in a
    seeded shuffle; offsets uniform in [0, len_g − L] (common random numbers across mixtures:
    the same seed gives the same draws for the same weights)."""
    counts = apportion(sequences, weights)
    rng = np.random.default_rng([seed, 0x6D6978])
    order = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    room = np.array([max(1, n - length + 1) for n in lengths], dtype=np.int64)
    offsets = (rng.random(len(order)) * room[order]).astype(np.int64)
    return order, offsets


def train_mixture(
    weights: np.ndarray,
    data: MixtureData,
    report: Callable[[dict[str, Any]], None],
    device: str = "cpu",
) -> dict[str, Any]:
    """Train a fresh proxy (seeded) on the mixture `weights`; call `report` every
    `report_every` steps and after the last; return the last metrics."""
    proxy, steps = data.proxy, data.steps
    L, B = proxy.max_length, proxy.batch_size
    streams = [_at_least(s, L) for s in data.streams]
    groups, offsets = mixture_plan(weights, [len(s) for s in streams], steps * B, L, data.seed)
    torch.manual_seed(data.seed)
    model = build_proxy(proxy, data.vocab_size).to(device).train()
    optimizer = make_optimizer(model, proxy)
    warmup = max(1, min(1000, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, warmup, steps)
    )
    target, heldout = (torch.from_numpy(x.astype(np.int64)) for x in (data.target, data.heldout))
    losses: list[torch.Tensor] = []
    metrics: dict[str, Any] = {}
    for step in range(steps):
        rows = slice(step * B, (step + 1) * B)
        batch = _batch(streams, groups[rows], offsets[rows], L).to(device)
        losses.append(training_step(model, batch, optimizer, schedule))
        if (step + 1) % data.report_every == 0 or step + 1 == steps:
            metrics = {
                "target_loss": mean_token_loss(model, target, B, device),
                "heldout_loss": mean_token_loss(model, heldout, B, device),
                "train_loss": float(torch.stack(losses).mean()),
                "tokens": (step + 1) * B * L,
                "steps": step + 1,
            }
            losses = []
            report(metrics)
    return metrics


def _at_least(stream: np.ndarray, length: int) -> np.ndarray:
    stream = np.asarray(stream, dtype=np.int64)
    if len(stream) == 0:
        return np.zeros(length, dtype=np.int64)
    return np.tile(stream, math.ceil(length / len(stream))) if len(stream) < length else stream


def _batch(
    streams: list[np.ndarray], groups: np.ndarray, offsets: np.ndarray, length: int
) -> torch.Tensor:
    rows = [streams[g][o : o + length] for g, o in zip(groups, offsets, strict=True)]
    return torch.from_numpy(np.stack(rows))


def training_step(
    model: torch.nn.Module,
    batch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> torch.Tensor:
    """One update on packed sequences (bfloat16 autocast on a GPU), gradients clipped to norm
    1; its loss (detached)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.device.type == "cuda"):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().float().cpu()


def mean_token_loss(
    model: torch.nn.Module, sequences: torch.Tensor, batch_size: int, device: str
) -> float:
    """−1 / (n (L − 1)) · Σ_rows Σ_{t ≥ 2} log p(x_t | x_<t) over (n, L) sequences."""
    model.eval()
    total = 0.0
    with (
        torch.inference_mode(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
    ):
        for chunk in sequences.split(batch_size):
            ids = chunk.to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), ids[:, 1:], reduction="sum"
            ).item()
    model.train()
    return total / max(1, sequences.shape[0] * (sequences.shape[1] - 1))


# ---------------------------------------------------------------------------------------------
# The Tune trainable


def param_names(k: int) -> list[str]:
    return [f"p{i}" for i in range(k)]


def trial_weights(config: dict[str, Any], data: MixtureData) -> np.ndarray:
    """A trial's mixture: config["weights"] as given, else the simplex map of p0..p(k−1)."""
    if "weights" in config:
        return np.asarray(config["weights"], dtype=np.float64)
    params = np.array([config[name] for name in param_names(len(data.groups))])
    return to_simplex(params, data.kind)


def mixture_trial(config: dict[str, Any], data: MixtureData) -> None:
    """Function trainable: train on the trial's mixture, tune.report every report_every steps."""
    from ray import tune

    torch.set_num_threads(data.threads)
    device = "cuda" if data.use_gpu and torch.cuda.is_available() else "cpu"
    train_mixture(trial_weights(config, data), data, tune.report, device)


def trainable(data: MixtureData, options: MixtureOptions) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(mixture_trial, data=data),
        {"cpu": options.trial_cpus, "gpu": options.trial_gpus},
    )


def train_remote(weights: np.ndarray, data: MixtureData, options: MixtureOptions) -> dict:
    """One mixture trained outside Tune (a Ray task with the trials' resources): its last
    metrics."""
    import ray

    task = ray.remote(_train_task).options(num_cpus=options.trial_cpus, num_gpus=options.trial_gpus)
    return ray.get(task.remote(np.asarray(weights, dtype=np.float64), data))


def _train_task(weights: np.ndarray, data: MixtureData) -> dict:
    torch.set_num_threads(data.threads)
    device = "cuda" if data.use_gpu and torch.cuda.is_available() else "cpu"
    return train_mixture(weights, data, lambda metrics: None, device)


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


# ---------------------------------------------------------------------------------------------
# Entry point


def run_mixture_search(
    pool: Pool, config: Config, context: StageContext, callbacks: list | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Search the group mixture (`mixture.mode`: tune or regmix) with proxies trained on
    `mixture.train_tokens` tokens each; return the best weights and the manifest section
    (best_weights, best_loss, baseline_losses {uniform, natural}, trials, mode, proxy_steps,
    groups, ...). An interrupted search raises MixtureInterrupted; a rerun resumes it.
    `callbacks`: extra Ray Tune callbacks for a new experiment (e.g. progress)."""
    began = time.perf_counter()
    data, summary = prepare_data(pool, config, context)
    natural = np.array([summary["groups"][g]["natural"] for g in data.groups])
    if config.mixture.mode == "regmix":
        from distsel.mixture.regmix import regmix_search

        weights, section = regmix_search(data, config, context.store, natural, callbacks)
    else:
        weights, section = tune_search(data, config, context.store, natural, callbacks)
    proxy = {
        "steps_per_trial": data.steps,
        "tokens_per_trial": data.steps * config.proxy.batch_size * config.proxy.max_length,
        "reports": data.reports,
    }
    section = {"mode": config.mixture.mode, **summary, **section, "proxy": proxy}
    section["seconds"] = round(time.perf_counter() - began, 3)
    log.info("mixture: best %s (target loss %.4f)", weights, section["best_loss"])
    return weights, section
