"""Seeded Kronecker random projections of per-layer gradient matrices, and the per-layer sums a
Kronecker-factored (K-FAC, EK-FAC) curvature is estimated from (the formulas:
distsel.algorithms.influence)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def _split_budget(budget: int, n_out: int, n_in: int) -> tuple[int, int]:
    """k_out · k_in ≈ budget, as equal as the sides allow (each k within [1, side]).

    For nearly low-rank gradients the relative error of a Kronecker projection grows like
    1/k_out + 1/k_in (each factor is a JL estimate), which equal sides minimise; a side whose
    k reaches its size is exact.
    """
    k_in = min(n_in, max(1, math.isqrt(budget)))
    k_out = min(n_out, max(1, budget // k_in))
    k_in = min(n_in, max(1, budget // k_out))
    return k_out, k_in


def _random_factor(k: int, n: int, generator: torch.Generator, kind: str) -> Tensor | None:
    if k >= n:
        return None
    if kind == "gaussian":
        values = torch.randn(k, n, generator=generator, dtype=torch.float64)
    else:
        values = torch.randint(0, 2, (k, n), generator=generator).to(torch.float64) * 2 - 1
    return values / math.sqrt(k)


class KroneckerProjection:
    """Per layer P = P_out ⊗ P_in (a None factor is the identity); seeded, so actors rebuild it."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        dim: int,
        seed: int,
        kind: Literal["rademacher", "gaussian"] = "rademacher",
    ) -> None:
        budget = max(1, dim // len(shapes))
        self.factors: dict[str, tuple[Tensor | None, Tensor | None]] = {}
        for index, (name, (n_out, n_in)) in enumerate(shapes.items()):
            k_out, k_in = _split_budget(budget, n_out, n_in)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            self.factors[name] = (
                _random_factor(k_out, n_out, generator, kind),
                _random_factor(k_in, n_in, generator, kind),
            )

    def to(self, device: torch.device, dtype: torch.dtype) -> KroneckerProjection:
        for name, pair in self.factors.items():
            self.factors[name] = tuple(  # type: ignore[assignment]
                None if p is None else p.to(device=device, dtype=dtype) for p in pair
            )
        return self

    def outputs(self, name: str, b: Tensor) -> Tensor:
        """P_out b_t for every token (last axis = out)."""
        p_out = self.factors[name][0]
        return b if p_out is None else b @ p_out.T

    def inputs(self, name: str, a: Tensor) -> Tensor:
        """P_in a_t for every token (last axis = in)."""
        p_in = self.factors[name][1]
        return a if p_in is None else a @ p_in.T

    def matrix(self, name: str, g: Tensor) -> Tensor:
        """P_out G P_inᵀ of explicit matrices G (..., out, in)."""
        return self.inputs(name, self.outputs(name, g.transpose(-1, -2)).transpose(-1, -2))


@dataclass
class Accumulator:
    """Sums over the target's loss positions for one layer."""

    a_cov: Tensor
    b_cov: Tensor
    grad: Tensor
    tokens: int = 0
