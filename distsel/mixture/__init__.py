"""Mixture-weight search over document groups with small proxy LMs, and sampling by the weights.

RegMix — Liu et al., "RegMix: Data Mixture as Regression for Language Model Pre-training" (2024):
train many small proxies on random mixtures, regress the target loss on the weights, and take
the mean of the best predicted mixtures. The Ray Tune search (`mode: tune`) instead lets a seeded
TPE sampler propose mixtures and ASHA stop the unpromising ones early.

Search algorithms treat parameters independently, so a mixture of k groups is searched through
free parameters mapped onto the simplex Δ^{k−1} = {w : w_i ≥ 0, Σ w_i = 1}:

    flat Dirichlet:  u ∈ (0, 1)^k,  w_i = −log u_i / Σ_j (−log u_j)
    softmax:         z ∈ ℝ^k,       w_i = exp z_i / Σ_j exp z_j

(with u_i uniform, the −log u_i are Exp(1) draws, so w is Dirichlet(1, …, 1): uniform on Δ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from distsel.config import Budget

# distsel.select imports this package for its selector, so the samplers of distsel.select are
# imported where they are used, never at import time.
if TYPE_CHECKING:
    from distsel.config import Config
    from distsel.select.pool import Pool
    from distsel.stage import StageContext

__all__ = [
    "MixtureSelector",
    "apportion",
    "from_simplex",
    "natural_weights",
    "run_mixture_search",
    "sample_by_weights",
    "to_simplex",
    "uniform_weights",
]

Parametrization = Literal["dirichlet", "softmax"]
# Bounds of the flat-Dirichlet parameters: u ∈ [U_LOW, U_HIGH] keeps −log u in (0, 13.8].
U_LOW, U_HIGH = 1e-6, 1.0 - 1e-6
# mixture.group_field naming the k-means clusters as groups.
CLUSTER_GROUPS = "cluster"
# Bounds of the softmax logits.
LOGIT_BOUND = 6.0


# ---------------------------------------------------------------------------------------------
# The simplex


def dirichlet_to_simplex(u: np.ndarray) -> np.ndarray:
    """w_i = −log u_i / Σ_j (−log u_j) for u ∈ (0, 1)^k (rows of a 2-D array separately)."""
    e = -np.log(np.clip(np.asarray(u, dtype=np.float64), 1e-300, 1.0))
    total = e.sum(axis=-1, keepdims=True)
    k = e.shape[-1]
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 1.0 / k)


def simplex_to_dirichlet(w: np.ndarray) -> np.ndarray:
    """A u with dirichlet_to_simplex(u) = w: u_i = exp(−k · w_i), so Σ_j −log u_j = k, the mean
    of a sum of k Exp(1) draws (uniform → u_i = e^{−1}). Clipped to [U_LOW, U_HIGH]."""
    w = _normalised(w)
    return np.clip(np.exp(-w.shape[-1] * w), U_LOW, U_HIGH)


def softmax(z: np.ndarray) -> np.ndarray:
    """w_i = exp(z_i − max z) / Σ_j exp(z_j − max z)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits(w: np.ndarray) -> np.ndarray:
    """z_i = log w_i − mean_j log w_j (softmax(z) = w), with w floored at exp(−LOGIT_BOUND)."""
    log_w = np.log(np.maximum(_normalised(w), np.exp(-LOGIT_BOUND)))
    return np.clip(log_w - log_w.mean(axis=-1, keepdims=True), -LOGIT_BOUND, LOGIT_BOUND)


def to_simplex(params: np.ndarray, kind: Parametrization = "dirichlet") -> np.ndarray:
    """Mixture weights from free parameters (flat Dirichlet u's or softmax logits)."""
    return dirichlet_to_simplex(params) if kind == "dirichlet" else softmax(params)


def from_simplex(w: np.ndarray, kind: Parametrization = "dirichlet") -> np.ndarray:
    """Free parameters that map back to the weights w (the inverse of to_simplex)."""
    return simplex_to_dirichlet(w) if kind == "dirichlet" else logits(w)


def _normalised(w: np.ndarray) -> np.ndarray:
    w = np.maximum(np.asarray(w, dtype=np.float64), 0.0)
    return w / w.sum(axis=-1, keepdims=True)


def uniform_weights(k: int) -> np.ndarray:
    """w_i = 1/k."""
    return np.full(k, 1.0 / k)


def natural_weights(values: np.ndarray, tokens: np.ndarray, groups: list[str]) -> np.ndarray:
    """The pool's own mixture: w_g = (tokens of group g) / (tokens in the pool), since mixture
    weights are shares of the training tokens."""
    totals = np.array([tokens[values == g].sum() for g in groups], dtype=np.float64)
    return totals / totals.sum()


# ---------------------------------------------------------------------------------------------
# Sampling the selection by the weights


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder integer shares n_i with Σ n_i = total and |n_i − total · w_i| < 1
    (w renormalised; remainders tied broken by lower index)."""
    w = _normalised(weights)
    exact = total * w
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    if short > 0:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def sample_by_weights(
    pool: Pool, groups_field: str, weights: dict[str, float], budget: Budget, seed: int = 0
) -> np.ndarray:
    """Pool indices sampled from the groups in proportion to `weights`, to the exact budget.

    Each group is read in its seeded random order (`pool.random_key`). docs: group g gets
    apportion(docs, w)_g documents; tokens: group g is filled (keep each document that still
    fits) up to its apportioned share of the tokens, then the tokens left over go to the
    remaining documents in random order, so the total never exceeds the budget. A group that
    runs out gives everything it has and the rest is shared again over the groups left, in
    proportion to their weights (groups of weight 0 only once all others are exhausted).
    `seed` mixes the key order of the leftover pass.
    """
    values = group_values(pool, groups_field)
    names = sorted(set(values.tolist()) | set(weights))
    orders = {g: _group_order(pool, values, g) for g in names}
    w = np.array([max(0.0, float(weights.get(g, 0.0))) for g in names])
    by_tokens = budget.tokens is not None
    limit = budget.tokens if by_tokens else budget.docs
    sizes = {g: (pool.tokens[o].sum() if by_tokens else len(o)) for g, o in orders.items()}
    shares = _water_fill(limit, w, np.array([sizes[g] for g in names], dtype=np.int64))
    chosen = [
        _take(orders[g], pool.tokens, int(s), by_tokens) for g, s in zip(names, shares, strict=True)
    ]
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    if by_tokens:
        picked = _top_up(pool, picked, limit, seed)
    return picked


def _group_order(pool: Pool, values: np.ndarray, group: str) -> np.ndarray:
    from distsel.select.samplers import random_order

    members = np.flatnonzero(values == group)
    return members[random_order(pool.random_key[members])]


def _water_fill(limit: int, w: np.ndarray, sizes: np.ndarray) -> np.ndarray:
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


def _take(order: np.ndarray, tokens: np.ndarray, share: int, by_tokens: bool) -> np.ndarray:
    from distsel.select.samplers import fill_budget

    if share <= 0:
        return np.zeros(0, np.int64)
    budget = Budget(tokens=share) if by_tokens else Budget(docs=share)
    return fill_budget(order, tokens, budget)


def _top_up(pool: Pool, picked: np.ndarray, limit: int, seed: int) -> np.ndarray:
    from distsel.select.samplers import random_order

    left = limit - int(pool.tokens[picked].sum())
    if left <= 0:
        return picked
    rest = np.setdiff1d(np.arange(len(pool)), picked)
    keys = pool.random_key[rest] ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    extra = _take(rest[random_order(keys)], pool.tokens, left, by_tokens=True)
    return np.concatenate([picked, extra])


# ---------------------------------------------------------------------------------------------
# Entry points


def run_mixture_search(
    pool: Pool, config: Config, context: StageContext, callbacks: list | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """The best mixture found (`mixture.mode`: tune or regmix) and the manifest section; see
    distsel.mixture.search.run_mixture_search."""
    from distsel.mixture.search import run_mixture_search as run

    return run(pool, config, context, callbacks)


def group_field(config: Config) -> str:
    """The pool field holding each document's group: mixture.group_field, else input.group_field."""
    from distsel.errors import DistselError

    name = config.mixture.group_field or config.input.group_field
    if not name:
        raise DistselError("select.method 'mixture' needs mixture.group_field or input.group_field")
    return name


def group_values(pool: Pool, field: str) -> np.ndarray:
    """Each document's group: the passed-through field's value, or for `cluster` its k-means
    cluster (as "cluster-<id>")."""
    from distsel.errors import DistselError

    if field == CLUSTER_GROUPS and CLUSTER_GROUPS in pool.scores:
        ids = pool.scores[CLUSTER_GROUPS].astype(np.int64).astype(str)
        return np.char.add("cluster-", ids).astype(object)
    if field in pool.categories:
        return pool.categories[field]
    known = [*pool.categories, CLUSTER_GROUPS]
    raise DistselError(f"the pool has no group field '{field}' (known: {known})")


class MixtureSelector:
    """Search the group mixture with proxy LMs, then sample the budget by the best weights."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        return ("embed", "cluster") if group_field(config) == CLUSTER_GROUPS else ()

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        weights, section = run_mixture_search(pool, config, context)
        budget = config.select.budget
        chosen = sample_by_weights(pool, group_field(config), weights, budget, config.seed)
        section["budget"] = budget.model_dump(exclude_none=True) if budget else None
        return chosen, section
