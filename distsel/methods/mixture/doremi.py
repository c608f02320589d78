"""mixture.mode doremi: DoReMi's domain weights (distsel.algorithms.doremi) from two proxies.

A reference proxy trained on the uniform mixture, then a second proxy trained with group DRO on
batches drawn uniformly over the groups: each step updates the domain weights α by the groups'
excess losses over the reference and trains on the α-weighted group losses. The mixture is the
average α; DoReMi reads no target, so its target loss is that of a third proxy trained on the
mixture (for comparison with the tune and regmix modes, as are the uniform and natural ones).
Proxy steps: 2 S for the weights, S for the check, S per baseline trained.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distsel.algorithms.doremi import excess_losses, update_domain_weights
from distsel.algorithms.simplex import uniform_weights
from distsel.core import layout
from distsel.core.executor import current
from distsel.methods.mixture.experiment import experiment_for
from distsel.methods.mixture.trials import MixtureData, at_least, cut_batch, mixture_plan
from distsel.methods.mixture.tune import baselines, train_once
from distsel.methods.training import build_proxy, make_optimizer, make_schedule, train_steps, update

if TYPE_CHECKING:
    from distsel.core.config import Config
    from distsel.core.storage import Store

log = logging.getLogger("distsel")
STEP_SIZE = 1.0
SMOOTHING = 1e-3


def doremi_search(
    data: MixtureData,
    config: Config,
    store: Store,
    natural: np.ndarray,
    callbacks: list | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The averaged domain weights (kept in OUTPUT/mixture/runs/<experiment>.json, so a rerun
    trains nothing again), a proxy trained on them, and the uniform and natural baselines."""
    options = config.mixture
    experiment = experiment_for(config, store, data, "doremi")
    path = layout.mixture_run(experiment.name)
    if store.exists(path):
        found = store.read_json(path)
    else:
        found = current().call(
            domain_weights, data, num_cpus=options.trial_cpus, num_gpus=options.trial_gpus
        )
        store.write_json(path, found)
    averaged = np.asarray(found["averaged"], dtype=np.float64)
    real = train_once(store, f"{experiment.name}-mixture", averaged, data, options)
    points = {"natural": natural, "uniform": uniform_weights(len(data.groups))}
    base, extra = baselines([], points, data, options, store, experiment)
    weights = dict(zip(data.groups, np.round(averaged, 6).tolist(), strict=True))
    log.info("mixture: DoReMi weights %s", weights)
    section = {
        "best_weights": weights,
        "best_loss": real["target_loss"],
        "best_heldout_loss": real["heldout_loss"],
        "baseline_losses": base,
        "trials": [],
        "proxy_steps": 2 * data.steps + int(real["steps"]) + extra,
        "doremi": {
            "step_size": STEP_SIZE,
            "smoothing": SMOOTHING,
            "reference": "uniform",
            "final_weights": dict(zip(data.groups, found["final"], strict=True)),
        },
    }
    return weights, section


def domain_weights(data: MixtureData) -> dict[str, list[float]]:
    """Train the reference, then the DRO proxy: the average and the last domain weights."""
    torch.set_num_threads(data.threads)
    device = "cuda" if data.use_gpu and torch.cuda.is_available() else "cpu"
    streams = [at_least(s, data.proxy.max_length) for s in data.streams]
    reference = _reference(data, streams, device)
    return _group_dro(data, streams, reference, device)


def _uniform_batches(data: MixtureData, streams: list[np.ndarray], seed: int):
    k, steps, size = len(streams), data.steps, data.proxy.batch_size
    L = data.proxy.max_length
    groups, offsets = mixture_plan(
        uniform_weights(k), [len(s) for s in streams], steps * size, L, seed
    )
    for step in range(steps):
        rows = slice(step * size, (step + 1) * size)
        yield groups[rows], cut_batch(streams, groups[rows], offsets[rows], L)


def _reference(data: MixtureData, streams: list[np.ndarray], device: str) -> torch.nn.Module:
    torch.manual_seed(data.seed)
    model = build_proxy(data.proxy, data.vocab_size).to(device).train()
    batches = (batch for _, batch in _uniform_batches(data, streams, data.seed))
    train_steps(model, batches, data.proxy, data.steps)
    return model.eval()


def _group_dro(
    data: MixtureData, streams: list[np.ndarray], reference: torch.nn.Module, device: str
) -> dict[str, list[float]]:
    k, steps = len(streams), data.steps
    torch.manual_seed(data.seed + 1)
    model = build_proxy(data.proxy, data.vocab_size).to(device).train()
    optimizer = make_optimizer(model, data.proxy)
    schedule = make_schedule(optimizer, steps)
    alpha, history = uniform_weights(k), []
    for groups, batch in _uniform_batches(data, streams, data.seed + 1):
        batch = batch.to(device)
        with torch.no_grad():
            reference_losses = _token_losses(reference, batch)
        losses = _token_losses(model, batch)
        excess = excess_losses(
            losses.detach().cpu().numpy(), reference_losses.cpu().numpy(), groups, k
        )
        alpha = update_domain_weights(alpha, excess, STEP_SIZE, SMOOTHING)
        history.append(alpha)
        present = np.unique(groups)
        per_group = torch.stack([losses[torch.from_numpy(groups == g)].mean() for g in present])
        loss = (torch.as_tensor(alpha[present], dtype=per_group.dtype) * per_group).sum()
        update(model, loss, optimizer, schedule)
    return {"averaged": np.mean(history, axis=0).tolist(), "final": alpha.tolist()}


def _token_losses(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """(rows, L − 1) next-token losses."""
    logits = model(input_ids=batch).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
