"""Mixture weights on the simplex: the free parametrisations a search samples, and integer
shares of a budget.

Search algorithms treat parameters independently, so a mixture of k groups is searched through
free parameters mapped onto the simplex Δ^{k−1} = {w : w_i ≥ 0, Σ w_i = 1}:

    flat Dirichlet:  u ∈ (0, 1)^k,  w_i = −log u_i / Σ_j (−log u_j)
    softmax:         z ∈ ℝ^k,       w_i = exp z_i / Σ_j exp z_j

(with u_i uniform, the −log u_i are Exp(1) draws, so w is Dirichlet(1, …, 1): uniform on Δ).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Parametrization = Literal["dirichlet", "softmax"]
# Bounds of the flat-Dirichlet parameters: u ∈ [U_LOW, U_HIGH] keeps −log u in (0, 13.8].
U_LOW, U_HIGH = 1e-6, 1.0 - 1e-6
# Bounds of the softmax logits.
LOGIT_BOUND = 6.0


def dirichlet_to_simplex(u: np.ndarray) -> np.ndarray:
    """w_i = −log u_i / Σ_j (−log u_j) for u ∈ (0, 1)^k (rows of a 2-D array separately)."""
    e = -np.log(np.clip(np.asarray(u, dtype=np.float64), 1e-300, 1.0))
    total = e.sum(axis=-1, keepdims=True)
    k = e.shape[-1]
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 1.0 / k)


def simplex_to_dirichlet(w: np.ndarray) -> np.ndarray:
    """A u with dirichlet_to_simplex(u) = w: u_i = exp(−k · w_i), so Σ_j −log u_j = k, the mean
    of a sum of k Exp(1) draws (uniform → u_i = e^{−1}). Clipped to [U_LOW, U_HIGH]."""
    w = normalised(w)
    return np.clip(np.exp(-w.shape[-1] * w), U_LOW, U_HIGH)


def softmax(z: np.ndarray) -> np.ndarray:
    """w_i = exp(z_i − max z) / Σ_j exp(z_j − max z)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits(w: np.ndarray) -> np.ndarray:
    """z_i = log w_i − mean_j log w_j (softmax(z) = w), with w floored at exp(−LOGIT_BOUND)."""
    log_w = np.log(np.maximum(normalised(w), np.exp(-LOGIT_BOUND)))
    return np.clip(log_w - log_w.mean(axis=-1, keepdims=True), -LOGIT_BOUND, LOGIT_BOUND)


def to_simplex(params: np.ndarray, kind: Parametrization = "dirichlet") -> np.ndarray:
    """Mixture weights from free parameters (flat Dirichlet u's or softmax logits)."""
    return dirichlet_to_simplex(params) if kind == "dirichlet" else softmax(params)


def from_simplex(w: np.ndarray, kind: Parametrization = "dirichlet") -> np.ndarray:
    """Free parameters that map back to the weights w (the inverse of to_simplex)."""
    return simplex_to_dirichlet(w) if kind == "dirichlet" else logits(w)


def normalised(w: np.ndarray) -> np.ndarray:
    """max(w, 0) / Σ max(w, 0) (rows of a 2-D array separately)."""
    w = np.maximum(np.asarray(w, dtype=np.float64), 0.0)
    return w / w.sum(axis=-1, keepdims=True)


def uniform_weights(k: int) -> np.ndarray:
    """w_i = 1/k."""
    return np.full(k, 1.0 / k)


def natural_weights(group_tokens: np.ndarray) -> np.ndarray:
    """The pool's own mixture: w_g = (tokens of group g) / (tokens in the pool), since mixture
    weights are shares of the training tokens."""
    totals = np.asarray(group_tokens, dtype=np.float64)
    return totals / totals.sum()


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder integer shares n_i with Σ n_i = total and |n_i − total · w_i| < 1
    (w renormalised; remainders tied broken by lower index)."""
    w = normalised(weights)
    exact = total * w
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    if short > 0:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def water_fill(limit: int, w: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Integer shares: proportional to w, none above its group's size; groups that fill up pass
    what is left to the others (weight-0 groups share equally when nothing else is left)."""
    shares = np.zeros(len(w), dtype=np.int64)
    active = sizes > 0
    remaining = int(min(limit, sizes.sum()))
    while remaining > 0 and active.any():
        weights = np.where(active, w, 0.0)
        if weights.sum() <= 0:
            weights = active.astype(np.float64)
        want = apportion(remaining, weights)
        room = sizes - shares
        full = active & (want >= room)
        if not full.any():
            return shares + want
        shares[full] += room[full]
        remaining -= int(room[full].sum())
        active &= ~full
    return shares
