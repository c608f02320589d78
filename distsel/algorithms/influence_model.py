"""An influence model: predict a document's influence from its embedding, after MATES (Yu et al.,
*MATES: Model-Aware Data Selection for Efficient Pretraining with Data Influence Models*,
NeurIPS 2024), here a ridge regression that a bandit refits each round on every document whose
influence it has computed so far.

Features: the document's embedding e (penalised) and a few cheap covariates c, left unpenalised:
log(1 + tokens) and, as the selector passes them, the document's best cosine to the target
examples and its target-vs-pool classifier score (distsel.methods.classifier). Each column is
standardised over the pool. With the n scored rows, Z = [1, C] and M = I − Z(ZᵀZ)⁻¹Zᵀ (Frisch–
Waugh–Lovell: the ridge acts on what the covariates leave), M E = U diag(s) Vᵀ:

    w = V diag(s / (s² + λ)) Uᵀ M y,   β = (ZᵀZ)⁻¹ Zᵀ (y − E w),   ŷ(e, c) = [1, c] · β + e · w,

λ minimising the exact leave-one-out error over a fixed grid λ ∈ mean(s²) × [10⁻³, 10³] (no
randomness): LOO(λ) = mean_i ((y_i − ŷ_i) / (1 − H_ii))², H = Z(ZᵀZ)⁺Zᵀ + U diag(s²/(s² + λ)) Uᵀ.
With no more scored rows than embedding dimensions (a bandit's usual case) the grid starts at
mean(s²): a weaker ridge interpolates the scored rows, and its ranking of the others falls apart.

The prediction's uncertainty is the Bayesian reading of the same ridge (a flat prior on β, a
Gaussian prior of precision λ/σ² on w): with X = [Z, E] and A = XᵀX + diag(0, λI),

    sd(ŷ(x)) = σ̂ · sqrt(xᵀ A⁻¹ x),   σ̂² = the leave-one-out error at the chosen λ,

small near the scored rows and large where the model extrapolates (MATES's probing set covers
the pool; a bandit's scored rows do not).
"""

from __future__ import annotations

from typing import Any

import numpy as np

RIDGE_GRID = np.logspace(-3, 3, 25)  # λ / mean(s²)
BLOCK = 4096  # rows per block of a prediction


def standardized(columns: np.ndarray) -> np.ndarray:
    """Each column minus its mean, over its deviation (float32)."""
    columns = np.asarray(columns, dtype=np.float64)
    spread = columns.std(axis=0)
    return ((columns - columns.mean(axis=0)) / np.where(spread > 0, spread, 1.0)).astype(np.float32)


def pool_features(
    embeddings: np.ndarray, tokens: np.ndarray, *covariates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(penalised, free) features: the standardised embeddings, and the standardised covariates
    (covariate_features)."""
    return standardized(embeddings), covariate_features(tokens, *covariates)


def covariate_features(tokens: np.ndarray, *covariates: np.ndarray) -> np.ndarray:
    """The free features: log(1 + tokens) and any other covariates given (one value per
    document each), each standardised."""
    free = [np.log1p(np.asarray(tokens, dtype=np.float64))]
    free += [np.asarray(column, dtype=np.float64) for column in covariates]
    return standardized(np.column_stack(free))


def embedding_dot(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """matrix · weights in float64, converted a block of rows at a time."""
    return np.concatenate(
        [matrix[i : i + BLOCK].astype(np.float64) @ weights for i in range(0, len(matrix), BLOCK)]
        or [np.zeros(0)]
    )


def embedding_quadratic(
    matrix: np.ndarray, inner: np.ndarray, cross: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row e: eᵀ inner e, and e · cross, in float64 blocks."""
    quadratic, crossed = [np.zeros(0)], [np.zeros((0, cross.shape[1]))]
    for start in range(0, len(matrix), BLOCK):
        e = matrix[start : start + BLOCK].astype(np.float64)
        quadratic.append(np.einsum("ij,jk,ik->i", e, inner, e, optimize=True))  # e·inner by BLAS
        crossed.append(e @ cross)
    return np.concatenate(quadratic), np.concatenate(crossed)


def column_basis(matrix: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of `matrix` (n × rank), by the SVD, dropping the
    directions numpy's pinv would drop."""
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    cutoff = max(matrix.shape) * np.finfo(np.float64).eps * (s[0] if len(s) else 0.0)
    return u[:, s > cutoff]


class InfluenceModel:
    """Ridge regression of influence on pool features; `fit` on scored rows, `predict` all."""

    def __init__(self, features: tuple[np.ndarray, np.ndarray] | None) -> None:
        """`features`: the pool's (penalised, free) features; None for a model that is only fitted
        on features given with the scores (`fit_features`), its parameters used elsewhere."""
        self.penalised, self.free = features if features is not None else (None, None)
        self.weights: np.ndarray | None = None
        self.coefficients: np.ndarray | None = None
        self.ridge = float("nan")
        self.noise = float("nan")
        self.covariance: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, rows: np.ndarray, values: np.ndarray) -> InfluenceModel:
        """Refit on pool rows `rows` with influences `values` (two or more rows)."""
        return self.fit_features(self.penalised[rows], self.free[rows], values)

    def fit_features(self, e: np.ndarray, free: np.ndarray, values: np.ndarray) -> InfluenceModel:
        """Refit on the rows whose penalised features are `e` and free ones `free`."""
        e = np.asarray(e, dtype=np.float64)
        z = _with_intercept(free)
        y = np.asarray(values, dtype=np.float64)
        basis = column_basis(z)  # Z(ZᵀZ)⁺Zᵀ = basis basisᵀ, never formed: it is n × n
        e_rest, y_rest = e - basis @ (basis.T @ e), y - basis @ (basis.T @ y)
        u, s, vt = np.linalg.svd(e_rest, full_matrices=False)
        uty = u.T @ y_rest
        scale = float(np.mean(s**2)) if len(s) and np.any(s > 0) else 1.0
        grid = RIDGE_GRID if len(y) > e.shape[1] else RIDGE_GRID[RIDGE_GRID >= 1]
        base_leverage, best = (basis**2).sum(axis=1), None
        for ridge in scale * grid:
            shrink = s**2 / (s**2 + ridge)
            residual = y_rest - u @ (shrink * uty)
            leverage = base_leverage + (u**2) @ shrink
            loo = float(((residual / np.maximum(1 - leverage, 1e-6)) ** 2).mean())
            if best is None or loo < best[0]:
                best = (loo, ridge)
        self.noise, self.ridge = float(best[0]), float(best[1])
        self.weights = vt.T @ (s / (s**2 + self.ridge) * uty)
        self.coefficients = np.linalg.pinv(z) @ (y - e @ self.weights)
        self.covariance = self._posterior_covariance(z, e)
        return self

    def parameters(self) -> dict[str, Any]:
        """What a fit found: enough for `with_parameters` to predict like this model elsewhere
        (a model of the same features held in another process)."""
        names = ("weights", "coefficients", "ridge", "noise", "covariance")
        return {name: getattr(self, name) for name in names}

    def with_parameters(self, parameters: dict[str, Any]) -> InfluenceModel:
        """This model predicting as the one whose `parameters()` these are."""
        for name, value in parameters.items():
            setattr(self, name, value)
        return self

    def _posterior_covariance(self, z: np.ndarray, e: np.ndarray) -> np.ndarray:
        """A⁻¹ = (XᵀX + diag(0, λI))⁻¹ over the columns [1, c, e]."""
        x = np.column_stack([z, e])
        penalty = np.concatenate([np.zeros(z.shape[1]), np.full(e.shape[1], self.ridge)])
        return np.linalg.pinv(x.T @ x + np.diag(penalty), hermitian=True)

    def predict(self, rows: np.ndarray | None = None) -> np.ndarray:
        """ŷ for pool rows `rows` (every row by default); zeros before the first fit."""
        if self.weights is None:
            return np.zeros(len(self.free) if rows is None else len(rows))
        z = _with_intercept(self._rows(self.free, rows))
        return z @ self.coefficients + embedding_dot(self._rows(self.penalised, rows), self.weights)

    def predict_sd(self, rows: np.ndarray | None = None) -> np.ndarray:
        """sd(ŷ) = σ̂ sqrt(xᵀA⁻¹x) for pool rows `rows` (every row by default), x = [z, e]:
        zᵀA⁻¹_zz z + 2 zᵀA⁻¹_ze e + eᵀA⁻¹_ee e; zeros before the first fit."""
        if self.covariance is None:
            return np.zeros(len(self.free) if rows is None else len(rows))
        z = _with_intercept(self._rows(self.free, rows))
        k = z.shape[1]
        inner, cross = self.covariance[k:, k:], self.covariance[k:, :k]
        quadratic, crossed = embedding_quadratic(self._rows(self.penalised, rows), inner, cross)
        zz = np.einsum("ij,jk,ik->i", z, self.covariance[:k, :k], z)
        spread = zz + 2 * np.einsum("ij,ij->i", z, crossed) + quadratic
        return np.sqrt(self.noise * np.maximum(spread, 0.0))

    @staticmethod
    def _rows(matrix: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        return matrix if rows is None else matrix[rows]


def _with_intercept(free: np.ndarray) -> np.ndarray:
    free = np.asarray(free, dtype=np.float64)
    return np.column_stack([np.ones(len(free)), free])
