"""The arithmetic of Quad's multi-armed bandit over clusters (distsel.methods.quad): arms are
k-means clusters, a pull scores a few of an arm's documents by influence.

Each round every live arm i gets the UCB score

    s_i = r̄_i + α · sqrt(2 ln N / (n_i + 1))
    r̄_i = (R_i + Σ_j w_ij R_j) / (n_i + Σ_j w_ij n_j),   R_i = Σ_{pulls of i} reward
    w_ij = 1 − d_ij / γ for neighbours (d_ij < γ, j ≠ i), else 0

(r̄_i = its prior, 0 by default, while neither i nor a neighbour has been pulled; N = max(total
pulls so far, 1), n_i the pulls of arm i, d_ij the distance of the clusters' centroids). The
top-B live arms are pulled (ties by arm number); the first round takes B live arms at random
(seeded). A pull's reward is its draws' mean influence − τ; standardised, the mean is first
taken to (mean − μ̂) / σ̂ with

    μ̂ = Σ y / n,   σ̂ = sqrt(max(Σ y² / n − μ̂², 0))   (0, 1 before any; σ̂ = 0 counts as 1)

over every influence y evaluated so far. The counts, unless set:

    B = max(1, min(50, k // 8))              arms a round, k clusters
    m = max(b, ceil(D / 50))                 documents an acceptance adds, b draws an arm,
                                             D the budget in documents (tokens / mean length)
    E = max(1, floor(max_evaluated · pool))  the evaluation allowance; the audit's share
                                             floor(share · E); the seed round draws
                                             max(1, min(b, (E // 2) // arms)) from each arm

With an influence model, a document's value is

    v(x) = (s(x) − μ̂) / σ̂ + w · z(x),   z = (c − c̄) / sd(c) over the pool (sd 0 counts as 1)

s(x) its influence where computed, else its prediction, c its classifier score. The acceptance
threshold θ is the value of the document that would complete the budget if the untaken ones were
taken by v from the best down: the (D − selected)-th, or with a token budget the first whose
running token count reaches the remaining tokens (−inf when they would not fill it). The value
of scoring a document, for y ~ N(v̂, sd² + σ²), with s = sqrt(sd² + σ²), z = |v̂ − θ| / s:

    E[max(y, θ)] − max(v̂, θ) = s · (φ(z) − z (1 − Φ(z)))

and the fill ranks the unscored untaken documents by v − κ · sd, the scored ones by v.
"""

from __future__ import annotations

import math

import numpy as np

# Default counts: B's cap and divisor of k, and the acceptances meant to fill the budget.
MAX_ARMS_PER_ROUND = 50
CLUSTERS_PER_ARM = 8
ACCEPTANCES_PER_BUDGET = 50


def default_arms_per_round(arms: int) -> int:
    """B = max(1, min(50, k // 8))."""
    return max(1, min(MAX_ARMS_PER_ROUND, arms // CLUSTERS_PER_ARM))


def default_docs_per_accept(draws_per_arm: int, budget_docs: float) -> int:
    """m = max(b, ceil(D / 50)): about 50 acceptances fill the budget."""
    return max(draws_per_arm, math.ceil(budget_docs / ACCEPTANCES_PER_BUDGET))


def evaluation_allowance(max_evaluated: float, pool: int) -> int:
    """E = max(1, floor(max_evaluated · pool)): the documents the bandit may score."""
    return max(1, math.floor(max_evaluated * pool))


def audit_allowance(share: float, allowance: int) -> int:
    """floor(share · E): the part of the allowance kept for the audit of the fill."""
    return math.floor(share * allowance)


def seed_round_arms(live: int, arms_per_round: int, allowance: int) -> int:
    """The arms of the seed round: as many as half the allowance reaches at one draw each (at
    least B), at most the live ones."""
    return min(live, max(min(arms_per_round, live), allowance // 2))


def seed_round_draws(draws_per_arm: int, allowance: int, arms: int) -> int:
    """Draws from each arm of the seed round: half the allowance over its arms, between 1
    and b."""
    return max(1, min(draws_per_arm, (allowance // 2) // max(arms, 1)))


def neighbour_weights(distances: np.ndarray, gamma: float) -> np.ndarray:
    """w_ij = 1 − d_ij/γ where d_ij < γ and i ≠ j, else 0."""
    weights = np.where(distances < gamma, 1.0 - distances / gamma, 0.0)
    np.fill_diagonal(weights, 0.0)
    return weights


def ucb_scores(
    reward_sums: np.ndarray,
    pulls: np.ndarray,
    weights: np.ndarray,
    alpha: float,
    live: np.ndarray,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """s_i = r̄_i + α sqrt(2 ln N / (n_i + 1)) with neighbour-shared r̄_i; −inf for retired arms.
    r̄_i is `prior` (default 0) while neither i nor a neighbour has been pulled."""
    shared_sum = reward_sums + weights @ reward_sums
    shared_pulls = pulls + weights @ pulls
    start = np.zeros_like(shared_sum) if prior is None else np.asarray(prior, dtype=np.float64)
    mean = np.divide(shared_sum, shared_pulls, out=start.copy(), where=shared_pulls > 0)
    total = max(pulls.sum(), 1)
    bonus = alpha * np.sqrt(2.0 * math.log(total) / (pulls + 1.0))
    return np.where(live, mean + bonus, -np.inf)


def top_arms(scores: np.ndarray, count: int) -> np.ndarray:
    """The `count` arms of highest score, best first (ties by arm number)."""
    return np.argsort(-scores, kind="stable")[:count]


def random_arms(live: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of the live arms (a boolean mask) drawn without replacement, seeded, in arm
    order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.flatnonzero(live), size=count, replace=False))


def group_means(groups: list[np.ndarray]) -> np.ndarray:
    """Each group's mean (0 for an empty group)."""
    return np.array([float(np.mean(group)) if len(group) else 0.0 for group in groups])


def running_moments(count: int, total: float, square_total: float) -> tuple[float, float]:
    """μ̂, σ̂ of `count` values from their sum and sum of squares (0, 1 for none; a deviation
    of 0 counts as 1)."""
    if not count:
        return 0.0, 1.0
    center = total / count
    spread = math.sqrt(max(square_total / count - center**2, 0.0))
    return center, (spread if spread > 0 else 1.0)


def document_values(
    estimates: np.ndarray, center: float, spread: float, classifier: np.ndarray, weight: float
) -> np.ndarray:
    """v = (s − μ̂) / σ̂ + w · z: the standardised influence (estimate) plus the weighted
    standardised classifier score."""
    return (estimates - center) / spread + weight * classifier


def information_value(
    mean: np.ndarray, sd: np.ndarray, noise: float, threshold: float
) -> np.ndarray:
    """E[max(y, θ)] − max(ŷ, θ) for y ~ N(ŷ, sd² + σ̂²): what scoring a document is expected
    to add to a selection that takes it when its value beats θ, the value of the document it
    would displace (or that would displace it). With s = sqrt(sd² + σ̂²), z = |ŷ − θ| / s:

        s · (φ(z) − z (1 − Φ(z)))
    """
    spread = np.sqrt(np.asarray(sd, dtype=np.float64) ** 2 + max(noise, 0.0))
    spread = np.maximum(spread, 1e-12)
    z = np.abs(np.asarray(mean, dtype=np.float64) - threshold) / spread
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    tail = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))
    return spread * (density - z * tail)


def fill_bound(
    values: np.ndarray, sd: np.ndarray, scored: np.ndarray, confidence: float
) -> np.ndarray:
    """The fill's ranking: v − κ · sd for the unscored documents, v for the `scored` ones."""
    bound = values - confidence * sd
    bound[scored] = values[scored]
    return bound
