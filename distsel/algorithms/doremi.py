r"""DoReMi's domain weights: group DRO against a reference model.

Xie, Pham, Dong, Du, Liu, Lu, Liang, Le, Ma and Yu (2023), "DoReMi: Optimizing Data Mixtures
Speeds Up Language Model Pretraining" (arXiv:2305.10429). At each step t of the proxy's training,
on a batch with rows x of group g(x):

    λ_t[g] = Σ_{x: g(x)=g} Σ_j max(ℓ_θ,j(x) − ℓ_ref,j(x), 0) / Σ_{x: g(x)=g} |x|
    α'_t   = α_{t−1} · exp(η λ_t) / Σ_g α_{t−1}[g] · exp(η λ_t[g])
    α_t    = (1 − c) α'_t + c / k

(λ: the per-token excess loss; the last line smooths towards uniform)

with step size η = 1 and c = 1e-3; a group without rows in the batch has λ = 0. The proxy
minimises Σ_g α_t[g] · (its mean token loss on group g's rows), and the mixture is the average
ᾱ = (1/T) Σ_t α_t.
"""

from __future__ import annotations

import numpy as np

__all__ = ["excess_losses", "update_domain_weights"]


def excess_losses(
    proxy: np.ndarray, reference: np.ndarray, groups: np.ndarray, count: int
) -> np.ndarray:
    """λ[g]: the clipped per-token excess loss of group g's rows of a (rows, tokens) batch."""
    clipped = np.maximum(np.asarray(proxy) - np.asarray(reference), 0.0).sum(axis=1)
    totals = np.bincount(groups, weights=clipped, minlength=count)
    tokens = np.bincount(groups, minlength=count) * np.asarray(proxy).shape[1]
    return np.divide(totals, tokens, out=np.zeros(count), where=tokens > 0)


def update_domain_weights(
    weights: np.ndarray, excess: np.ndarray, step_size: float = 1.0, smoothing: float = 1e-3
) -> np.ndarray:
    """α_t = (1 − c) · softmax(log α_{t−1} + η λ_t) + c / k."""
    logits = np.log(np.asarray(weights, dtype=np.float64)) + step_size * np.asarray(excess)
    exp = np.exp(logits - logits.max())
    return (1 - smoothing) * exp / exp.sum() + smoothing / len(exp)
