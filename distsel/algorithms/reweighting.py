r"""Per-document training weights from losses.

Sow, Lin, Liang et al. (ICLR 2025), "Dynamic Loss-Based Sample Reweighting for Improved Large
Language Model Pretraining" (arXiv:2502.06733). Of a set of n documents with losses ℓ_i:

    ℓ̂_i = 2 (ℓ_i − min ℓ) / (max ℓ − min ℓ) − 1 ∈ [−1, 1]     (0 for all when the losses are equal)
    f_i  = min(ℓ̂_i + 1, 1)                                    LinUpper: easy documents weigh less,
                                                               the hardest no more than the median
    w_i  = n · exp(f_i / r) / Σ_j exp(f_j / r)                 mean 1; r the temperature

The paper recomputes the weights in every minibatch from the model being trained; distsel
exports them once, over the selection, from the proxy's per-document losses, and a training loop
multiplies each document's token losses by its weight. A document without a loss (NaN) gets the
median f.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lin_upper", "loss_weights", "normalised_losses"]


def normalised_losses(losses: np.ndarray) -> np.ndarray:
    """ℓ̂ ∈ [−1, 1] (NaN stays NaN)."""
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        return np.full(len(losses), np.nan)
    low, high = float(losses[finite].min()), float(losses[finite].max())
    if high == low:
        return np.where(finite, 0.0, np.nan)
    return 2 * (losses - low) / (high - low) - 1


def lin_upper(normalised: np.ndarray) -> np.ndarray:
    """f = min(ℓ̂ + 1, 1)."""
    return np.minimum(normalised + 1, 1.0)


def loss_weights(losses: np.ndarray, temperature: float = 0.5) -> np.ndarray:
    """w = n · softmax(f / r), f = LinUpper(ℓ̂); mean 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not len(losses):
        return np.zeros(0)
    shaped = lin_upper(normalised_losses(losses))
    finite = np.isfinite(shaped)
    shaped = np.where(finite, shaped, np.median(shaped[finite]) if finite.any() else 0.0)
    scaled = shaped / temperature
    exp = np.exp(scaled - scaled.max())
    return len(exp) * exp / exp.sum()
