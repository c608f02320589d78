"""An influence model: predict a document's influence from its embedding, after MATES (Yu et al.,
*MATES: Model-Aware Data Selection for Efficient Pretraining with Data Influence Models*,
NeurIPS 2024), here a ridge regression that a bandit refits each round on every document whose
influence it has computed so far.

Features x = [e, log(1 + tokens)] (e the document's embedding), standardised by their means and
deviations over the pool. With X the n scored rows (centred) and y their influences (centred),

    w = (XᵀX + λI)⁻¹ Xᵀ y = V diag(s / (s² + λ)) Uᵀ y    (X = U diag(s) Vᵀ),
    ŷ(x) = ȳ + (x − x̄) · w,

λ minimising the exact leave-one-out error over a fixed grid λ ∈ mean(s²) × [10⁻³, 10³] (no
randomness): LOO(λ) = mean_i ((y_i − ŷ_i) / (1 − H_ii))², H = U diag(s² / (s² + λ)) Uᵀ. With
no more scored rows than features (a bandit's usual case) the grid starts at mean(s²): a weaker
ridge interpolates the scored rows, and its ranking of the others falls apart.
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = np.logspace(-3, 3, 25)  # λ / mean(s²)


def pool_features(embeddings: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """[e, log(1 + tokens)] per document, each column standardised over the pool (float32)."""
    features = np.column_stack([embeddings, np.log1p(tokens)]).astype(np.float64)
    spread = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return features.astype(np.float32)


class InfluenceModel:
    """Ridge regression of influence on pool features; `fit` on scored rows, `predict` all."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.weights: np.ndarray | None = None
        self.center = (0.0, np.zeros(features.shape[1]))
        self.ridge = float("nan")

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, rows: np.ndarray, values: np.ndarray) -> InfluenceModel:
        """Refit on pool rows `rows` with influences `values` (two or more rows)."""
        x = self.features[rows].astype(np.float64)
        y = np.asarray(values, dtype=np.float64)
        x_mean, y_mean = x.mean(axis=0), float(y.mean())
        x, y = x - x_mean, y - y_mean
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        uty = u.T @ y
        scale = float(np.mean(s**2)) if len(s) else 1.0
        best = None
        # Fewer scored rows than features: a ridge under mean(s²) interpolates them and its
        # ranking of the rest falls apart (benchmarks/quad_replay.py measured it).
        grid = RIDGE_GRID if len(y) > x.shape[1] else RIDGE_GRID[RIDGE_GRID >= 1]
        for ridge in scale * grid:
            shrink = s**2 / (s**2 + ridge)
            fitted = u @ (shrink * uty)
            leverage = (u**2) @ shrink
            loo = float((((y - fitted) / np.maximum(1 - leverage, 1e-6)) ** 2).mean())
            if best is None or loo < best[0]:
                best = (loo, ridge)
        self.ridge = float(best[1])
        self.weights = vt.T @ (s / (s**2 + self.ridge) * uty)
        self.center = (y_mean, x_mean)
        return self

    def predict(self, rows: np.ndarray | None = None) -> np.ndarray:
        """ŷ for pool rows `rows` (every row by default); zeros before the first fit."""
        x = self.features if rows is None else self.features[rows]
        if self.weights is None:
            return np.zeros(len(x))
        y_mean, x_mean = self.center
        return y_mean + (x.astype(np.float64) - x_mean) @ self.weights
