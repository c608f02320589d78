"""What one mixture trial does: cut its training sequences from the groups' token streams in
proportion to the mixture, train a fresh proxy on them, and evaluate it on fixed sets.

Every trial trains a fresh proxy (the Llama of distsel.methods.training) for
S = ⌈train_tokens / (B · L)⌉ steps of B sequences of L = proxy.max_length tokens, where the
S · B sequences are split over the groups by apportion(S · B, w) (so group g supplies
n_g ≈ w_g · S · B of them), shuffled, and each cut at a seeded random offset from its group's
token stream. Every `report_every` steps it reports the mean token loss

    loss(X) = −1 / (|X| (L − 1)) · Σ_{x ∈ X} Σ_{t=2..L} log p(x_t | x_<t)

on fixed sets X of EVAL_SEQUENCES sequences of the target and of held-out pool documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distsel.algorithms.simplex import Parametrization, apportion, to_simplex
from distsel.methods.training import build_proxy, train_steps

if TYPE_CHECKING:
    from distsel.core.config import ProxyConfig

# Sequences in each fixed evaluation set (target, held-out).
EVAL_SEQUENCES = 32


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


def eval_sequences(stream: np.ndarray, length: int, count: int = EVAL_SEQUENCES) -> np.ndarray:
    """Up to `count` non-overlapping windows of `length` tokens, evenly spaced over the stream
    (a stream shorter than one window is repeated), flattened."""
    if len(stream) < length:
        stream = np.tile(stream, math.ceil(length / max(1, len(stream))))
    windows = len(stream) // length
    starts = np.unique(np.linspace(0, windows - 1, min(count, windows)).round().astype(int))
    return np.concatenate([stream[s * length : (s + 1) * length] for s in starts])


def param_names(k: int) -> list[str]:
    return [f"p{i}" for i in range(k)]


def trial_weights(config: dict[str, Any], data: MixtureData) -> np.ndarray:
    """A trial's mixture: config["weights"] as given, else the simplex map of p0..p(k−1)."""
    if "weights" in config:
        return np.asarray(config["weights"], dtype=np.float64)
    params = np.array([config[name] for name in param_names(len(data.groups))])
    return to_simplex(params, data.kind)


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


def train_trial(
    weights: np.ndarray, data: MixtureData, report: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """train_mixture with the trial's threads, on a GPU when the trial has one."""
    torch.set_num_threads(data.threads)
    device = "cuda" if data.use_gpu and torch.cuda.is_available() else "cpu"
    return train_mixture(weights, data, report, device)


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
    streams = [at_least(s, L) for s in data.streams]
    groups, offsets = mixture_plan(weights, [len(s) for s in streams], steps * B, L, data.seed)
    torch.manual_seed(data.seed)
    model = build_proxy(proxy, data.vocab_size).to(device).train()
    target, heldout = (torch.from_numpy(x.astype(np.int64)) for x in (data.target, data.heldout))
    batches = (
        cut_batch(streams, groups[step * B : (step + 1) * B], offsets[step * B : (step + 1) * B], L)
        for step in range(steps)
    )
    metrics: dict[str, Any] = {}
    since = 0

    def evaluate(step: int, losses: torch.Tensor) -> None:
        nonlocal metrics, since
        if (step + 1) % data.report_every and step + 1 != steps:
            return
        metrics = {
            "target_loss": mean_token_loss(model, target, B, device),
            "heldout_loss": mean_token_loss(model, heldout, B, device),
            "train_loss": float(losses[since : step + 1].cpu().mean()),
            "tokens": (step + 1) * B * L,
            "steps": step + 1,
        }
        since = step + 1
        report(metrics)

    train_steps(model, batches, proxy, steps, evaluate)
    return metrics


def at_least(stream: np.ndarray, length: int) -> np.ndarray:
    stream = np.asarray(stream, dtype=np.int64)
    if len(stream) == 0:
        return np.zeros(length, dtype=np.int64)
    return np.tile(stream, math.ceil(length / len(stream))) if len(stream) < length else stream


def cut_batch(
    streams: list[np.ndarray], groups: np.ndarray, offsets: np.ndarray, length: int
) -> torch.Tensor:
    rows = [streams[g][o : o + length] for g, o in zip(groups, offsets, strict=True)]
    return torch.from_numpy(np.stack(rows))


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
