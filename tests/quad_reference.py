"""The Quad bandits as they were before their documents moved to shard actors: the reference the
sharded bandits must equal (tests/methods/test_quad_documents.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from distsel.algorithms.bandit import (
    audit_allowance,
    default_arms_per_round,
    default_docs_per_accept,
    document_values,
    evaluation_allowance,
    fill_bound,
    group_means,
    information_value,
    neighbour_weights,
    random_arms,
    running_moments,
    seed_round_arms,
    seed_round_draws,
    top_arms,
    ucb_scores,
)
from distsel.algorithms.influence_model import InfluenceModel
from distsel.core.config import Budget
from distsel.core.samplers import descending, random_order
from distsel.methods.quad.options import QuadOptions
from distsel.methods.quad.state import BanditState


def arm_members(clusters: np.ndarray, arms: int) -> list[np.ndarray]:
    """Each arm's documents (indices into `clusters`, in index order), arms 0 … arms − 1."""
    by_cluster = np.argsort(clusters, kind="stable")
    bounds = np.searchsorted(clusters[by_cluster], np.arange(arms + 1))
    return [by_cluster[bounds[i] : bounds[i + 1]] for i in range(arms)]


def pool_z(scores: np.ndarray) -> np.ndarray:
    """Scores minus their mean over the pool, over their deviation (1 where it is 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    spread = float(scores.std())
    return (scores - scores.mean()) / (spread if spread > 0 else 1.0)


def acceptance_threshold(
    values: np.ndarray,
    order: np.ndarray,
    *,
    docs_left: int | None = None,
    tokens: np.ndarray | None = None,
    tokens_left: int = 0,
) -> float:
    """θ: the value of the document in `order` (untaken documents, best first) that would
    complete the budget: `docs_left` documents, or else `tokens_left` tokens of `tokens` (one
    count per document); −inf when they would not fill it."""
    if docs_left is not None:
        position = docs_left - 1
    elif tokens is not None:
        position = int(np.searchsorted(np.cumsum(tokens[order]), tokens_left))
    else:
        raise ValueError("acceptance_threshold needs docs_left or tokens")
    return float(values[order[position]]) if position < len(order) else -math.inf


InfluenceFunction = Callable[[list[np.ndarray]], list[np.ndarray]]


class QuadBandit:
    """The bandit over clusters. Arms hold pool indices; `influence` scores groups of them."""

    def __init__(
        self,
        clusters: np.ndarray,
        random_key: np.ndarray,
        tokens: np.ndarray,
        centroid_distances: np.ndarray,
        options: QuadOptions,
        budget: Budget,
        seed: int,
    ) -> None:
        self.options, self.budget, self.seed, self.tokens = options, budget, seed, tokens
        self.random_key = random_key
        arms = int(centroid_distances.shape[0])
        self.orders = [
            members[random_order(random_key[members])] for members in arm_members(clusters, arms)
        ]
        self.sizes = np.array([len(order) for order in self.orders])
        self.weights = neighbour_weights(centroid_distances, options.gamma)
        self.arms_per_round = options.arms_per_round or default_arms_per_round(arms)
        self.docs_per_accept = options.docs_per_accept or self._default_docs_per_accept()
        self.state = BanditState(
            fingerprint={},
            pulls=[0] * arms,
            reward_sums=[0.0] * arms,
            cursors=[0] * arms,
        )
        self.selected: list[int] = []

    def _default_docs_per_accept(self) -> int:
        """m = max(b, ceil(budget in documents / 50)): about 50 acceptances fill the budget."""
        docs = self.budget.docs
        if docs is None:
            docs = self.budget.tokens / max(float(np.mean(self.tokens)), 1.0)
        return default_docs_per_accept(self.options.draws_per_arm, docs)

    # -- the rounds -------------------------------------------------------------------------

    def run(self, influence: InfluenceFunction) -> np.ndarray:
        while not self.state.done:
            self.play_round(influence)
        return np.asarray(self.selected, dtype=np.int64)

    def play_round(self, influence: InfluenceFunction) -> None:
        state, b = self.state, self.options.draws_per_arm
        pulled = self.choose_arms()
        if not len(pulled):
            state.done = "every arm exhausted"
            return
        draws = [self._take(arm, b) for arm in pulled]
        scores = influence(draws)
        rewards = self._rewards(scores)
        accepted = []
        for arm, drawn, reward in zip(pulled, draws, rewards, strict=True):
            state.pulls[arm] += 1
            state.reward_sums[arm] += float(reward)
            if reward > 0 and not state.done:
                accepted.append(int(arm))
                self._accept(arm, drawn)
        state.round += 1
        state.history.append(
            {
                "round": state.round,
                "arms": [int(a) for a in pulled],
                "rewards": [round(float(r), 6) for r in rewards],
                "accepted": accepted,
                "selected": len(self.selected),
            }
        )
        if not state.done and state.round >= self.options.rounds:
            state.done = "round limit"

    def choose_arms(self) -> np.ndarray:
        """The top-B live arms by UCB score (a seeded random B in the first round)."""
        state = self.state
        live = np.array(state.cursors) < self.sizes
        count = min(self.arms_per_round, int(live.sum()))
        if state.round == 0:
            return random_arms(live, count, self.seed)
        scores = ucb_scores(
            np.array(state.reward_sums),
            np.array(state.pulls, dtype=np.float64),
            self.weights,
            self.options.alpha,
            live,
        )
        return top_arms(scores, count)

    def _take(self, arm: int, count: int) -> np.ndarray:
        start = self.state.cursors[arm]
        taken = self.orders[arm][start : start + count]
        self.state.cursors[arm] = start + len(taken)
        return taken

    def _rewards(self, scores: list[np.ndarray]) -> np.ndarray:
        """Mean influence of each arm's draws − τ (see _mean_scores)."""
        return self._mean_scores(scores) - self.options.tau

    def _mean_scores(self, scores: list[np.ndarray]) -> np.ndarray:
        """Count the scores into the state; return each group's mean influence, standardised,
        if asked, by the mean and deviation of every influence evaluated so far, these
        included."""
        state = self.state
        means = group_means(scores)
        values = np.concatenate(scores) if scores else np.zeros(0)
        state.evaluated += len(values)
        state.influence_sum += float(values.sum())
        state.influence_sq_sum += float((values**2).sum())
        if self.options.scale == "standardized" and state.evaluated:
            center, spread = self._moments()
            means = (means - center) / spread
        return means

    def _moments(self) -> tuple[float, float]:
        """μ̂, σ̂: the mean and deviation of every influence evaluated so far (0, 1 before the
        first; a deviation of 0 counts as 1)."""
        state = self.state
        return running_moments(state.evaluated, state.influence_sum, state.influence_sq_sum)

    def _accept(self, arm: int, drawn: np.ndarray) -> None:
        """Add the arm's drawn documents and the next m − b of its order, within the budget."""
        self.state.accepted.append(int(arm))
        extra = self._take(arm, max(self.docs_per_accept - len(drawn), 0))
        self._add_all(np.concatenate([drawn, extra]))

    def _add_all(self, indices: np.ndarray) -> int:
        """Add documents in order within the budget (a token budget skips those that do not
        fit); returns how many were added."""
        state, added = self.state, 0
        for index in indices:
            if self.budget.docs is not None:
                if len(self.selected) >= self.budget.docs:
                    break
            elif state.selected_tokens + int(self.tokens[index]) > self.budget.tokens:
                continue
            self.selected.append(int(index))
            state.selected_tokens += int(self.tokens[index])
            added += 1
        if self._budget_met():
            state.done = "budget reached"
        return added

    def _budget_met(self) -> bool:
        if self.budget.docs is not None:
            return len(self.selected) >= self.budget.docs
        remaining = self.budget.tokens - self.state.selected_tokens
        unconsumed = [order[c:] for order, c in zip(self.orders, self.state.cursors, strict=True)]
        rest = np.concatenate(unconsumed) if unconsumed else np.zeros(0, dtype=np.int64)
        return remaining <= 0 or not len(rest) or int(self.tokens[rest].min()) > remaining

    def summary(self, clusters: np.ndarray) -> dict[str, Any]:
        chosen = np.asarray(self.selected, dtype=np.int64)
        counts = np.bincount(clusters[chosen], minlength=len(self.orders)) if len(chosen) else []
        return {
            "influence_evaluated_docs": self.state.evaluated,
            "rounds": self.state.round,
            "stopped": self.state.done,
            "clusters": len(self.orders),
            "clusters_accepted": len(set(self.state.accepted)),
            "acceptances": len(self.state.accepted),
            "clusters_covered": int(np.count_nonzero(counts)),
            "arms_per_round": self.arms_per_round,
            "docs_per_accept": self.docs_per_accept,
            "selected_per_cluster": {str(i): int(c) for i, c in enumerate(counts) if c},
            "history": self.state.history,
        }


AUDIT_SHARE = 0.25  # of the evaluation allowance, kept for the audit of the fill
FILL_CONFIDENCE = 0.0  # κ in the fill's ŷ − κ·sd(ŷ); 0: by ŷ


class PredictedQuadBandit(QuadBandit):
    """Quad with an influence model (`within_cluster: predicted`, see the module docstring).
    `features` are the pool's model features (distsel.algorithms.influence_model.pool_features),
    `classifier` each document's classifier score (needed when classifier_weight > 0).

    `estimates` holds s(x), the influence where computed, else the model's prediction;
    `values` the value v(x) = (s(x) − μ̂)/σ̂ + w · z(x), z the classifier score standardised
    over the pool, μ̂ and σ̂ those of the state (every influence evaluated so far), so a
    resumed run recomputes the same values. Both are zero before the model's first fit."""

    audit_share: float = AUDIT_SHARE
    fill_confidence: float = FILL_CONFIDENCE

    def __init__(
        self,
        clusters: np.ndarray,
        random_key: np.ndarray,
        tokens: np.ndarray,
        centroid_distances: np.ndarray,
        options: QuadOptions,
        budget: Budget,
        seed: int,
        features: tuple[np.ndarray, np.ndarray],
        classifier: np.ndarray | None = None,
        classifier_z: np.ndarray | None = None,
    ) -> None:
        super().__init__(clusters, random_key, tokens, centroid_distances, options, budget, seed)
        if classifier is None and options.classifier_weight > 0:
            raise ValueError("quad with classifier_weight > 0 needs the pool's classifier scores")
        self.model = InfluenceModel(features)
        self.scored = np.zeros(len(clusters), dtype=bool)
        self.taken = np.zeros(len(clusters), dtype=bool)
        # the classifier score standardised over the pool: pool_z, or as given (`classifier_z`)
        if classifier is None:
            self.classifier = np.zeros(len(clusters))
        else:
            self.classifier = classifier_z if classifier_z is not None else pool_z(classifier)
        self.estimates = np.zeros(len(clusters))
        self.values = np.zeros(len(clusters))
        self.allowance = evaluation_allowance(options.max_evaluated, len(clusters))

    @property
    def audit(self) -> int:
        """The part of the allowance kept for the audit of the fill."""
        return audit_allowance(self.audit_share, self.allowance)

    def available(self, arm: int) -> np.ndarray:
        """The arm's documents neither scored nor taken, highest value v first (the arm's random
        order before the model's first fit, and among equal values)."""
        members = self.orders[arm]
        members = members[~self.scored[members] & ~self.taken[members]]
        if not self.model.fitted:
            return members
        return members[np.argsort(-self.values[members], kind="stable")]

    def choose_arms(self) -> np.ndarray:
        state, b = self.state, self.options.draws_per_arm
        candidates = [self.available(arm) for arm in range(len(self.orders))]
        live = np.array([len(c) > 0 for c in candidates])
        count = min(self.arms_per_round, int(live.sum()))
        if state.round == 0 or not self.model.fitted:
            # The seed round: a few random draws from many arms, a sample the model can learn from.
            count = seed_round_arms(int(live.sum()), self.arms_per_round, self.allowance)
            return random_arms(live, count, self.seed + state.round)
        # an unpulled arm's prior: the reward its b best documents by v would bring
        prior = np.array(
            [self._standard(self.estimates[c[:b]].mean()) if len(c) else 0.0 for c in candidates]
        )
        prior += self._classifier_rewards([c[:b] for c in candidates])
        scores = ucb_scores(
            np.array(state.reward_sums),
            np.array(state.pulls, dtype=np.float64),
            self.weights,
            self.options.alpha,
            live,
            prior - self.options.tau,
        )
        return top_arms(scores, count)

    def play_round(self, influence: InfluenceFunction) -> None:
        state = self.state
        if self._auditing():
            self._audit_round(influence)
            return
        pulled = self.choose_arms()
        room = self.allowance - self.audit - state.evaluated
        per_arm = self.options.draws_per_arm
        if state.round == 0:
            per_arm = seed_round_draws(per_arm, self.allowance, len(pulled))
        draws = []
        for arm in pulled:
            draws.append(self.available(arm)[: min(per_arm, room)])
            room -= len(draws[-1])
        kept = [i for i, drawn in enumerate(draws) if len(drawn)]
        pulled, draws = pulled[kept], [draws[i] for i in kept]
        if not len(pulled):
            self._fill("every arm exhausted" if room > 0 else "evaluation allowance spent")
            return
        scores = influence(draws)
        rewards = self._mean_scores(scores) + self._classifier_rewards(draws) - self.options.tau
        for arm, drawn, values, reward in zip(pulled, draws, scores, rewards, strict=True):
            state.pulls[arm] += 1
            state.reward_sums[arm] += float(reward)
            state.scored_rows.extend(int(i) for i in drawn)
            state.scored_values.extend(float(v) for v in values)
        self._refit()
        accepted, threshold = self._accept_round(pulled, draws)
        state.round += 1
        state.history.append(
            {
                "round": state.round,
                "arms": [int(a) for a in pulled],
                "rewards": [round(float(r), 6) for r in rewards],
                "threshold": None if threshold is None else round(threshold, 6),
                "accepted": accepted,
                "selected": len(self.selected),
            }
        )
        self._after_round()

    def _after_round(self) -> None:
        state = self.state
        if not state.done and state.evaluated >= self.allowance:
            self._fill("evaluation allowance spent")
        elif not state.done and state.round >= self.options.rounds:
            self._fill("round limit")

    def _auditing(self) -> bool:
        """Whether the bandit's share of the allowance is spent and the audit's is not."""
        state = self.state
        spent = state.evaluated >= self.allowance - self.audit
        return bool(self.audit) and self.model.fitted and spent and state.round > 0

    def _audit_round(self, influence: InfluenceFunction) -> None:
        """Score the untaken, unscored documents whose score is worth most to the selection
        (information_value of v against θ), in groups of b (one bandit round's width); then
        refit. The model's sd and noise are in influence units: over σ̂ (σ̂² for the noise, a
        variance), those of v."""
        state, b = self.state, self.options.draws_per_arm
        threshold = self.threshold()
        candidates = np.flatnonzero(~self.taken & ~self.scored)
        spread = self._value_moments()[1]
        sd = self.model.predict_sd(candidates) / spread
        noise = self.model.noise / spread**2
        gain = information_value(self.values[candidates], sd, noise, threshold)
        width = min(self.allowance - state.evaluated, self.arms_per_round * b)
        picked = candidates[np.argsort(-gain, kind="stable")[:width]]
        if not len(picked):
            self._fill("every document scored or taken")
            return
        groups = [picked[i : i + b] for i in range(0, len(picked), b)]
        scores = influence(groups)
        self._mean_scores(scores)
        for drawn, values in zip(groups, scores, strict=True):
            state.scored_rows.extend(int(i) for i in drawn)
            state.scored_values.extend(float(v) for v in values)
        self._refit()
        state.round += 1
        state.history.append(
            {
                "round": state.round,
                "arms": [],
                "rewards": [],
                "audited": len(picked),
                "threshold": None if not math.isfinite(threshold) else round(threshold, 6),
                "accepted": [],
                "selected": len(self.selected),
            }
        )
        self._after_round()

    def _accept_round(
        self, pulled: np.ndarray, draws: list[np.ndarray]
    ) -> tuple[list[int], float | None]:
        """After the warm-up (half the allowance), accept the arms whose draws average ≥ θ."""
        if self.state.evaluated < self.allowance / 2:
            return [], None
        threshold = self.threshold()
        means = [float(self.values[drawn].mean()) for drawn in draws]
        accepted = []
        for position in np.argsort(means, kind="stable")[::-1]:
            if self.state.done or means[position] < threshold:
                break
            arm = int(pulled[position])
            accepted.append(arm)
            self.state.accepted.append(arm)
            members = self.orders[arm][~self.taken[self.orders[arm]]]
            block = members[descending(self.values[members], self.random_key[members])]
            block = block[self.values[block] >= threshold][: self.docs_per_accept]
            self._take_all(block)
        return accepted, threshold

    def threshold(self) -> float:
        """θ: the value v of the untaken document that would complete the budget, taking
        untaken documents by v from the best down (−inf when they would not fill it)."""
        untaken = np.flatnonzero(~self.taken)
        order = untaken[descending(self.values[untaken], self.random_key[untaken])]
        if self.budget.docs is not None:
            docs_left = self.budget.docs - len(self.selected)
            return acceptance_threshold(self.values, order, docs_left=docs_left)
        remaining = self.budget.tokens - self.state.selected_tokens
        return acceptance_threshold(self.values, order, tokens=self.tokens, tokens_left=remaining)

    def _take_all(self, indices: np.ndarray) -> None:
        before = len(self.selected)
        self._add_all(indices)
        self.taken[np.asarray(self.selected[before:], dtype=np.int64)] = True

    def _fill(self, reason: str) -> None:
        """The rest of the budget: untaken documents of highest v (κ > 0: v − κ·sd(ŷ)/σ̂ for
        the unscored)."""
        untaken = np.flatnonzero(~self.taken)
        before = len(self.selected)
        sd = self.model.predict_sd(untaken) / self._value_moments()[1]
        bound = fill_bound(self.values[untaken], sd, self.scored[untaken], self.fill_confidence)
        self._take_all(untaken[descending(bound, self.random_key[untaken])])
        self.state.filled += len(self.selected) - before
        self.state.done = f"{reason}; the rest filled by the influence model"

    def _refit(self) -> None:
        rows = np.asarray(self.state.scored_rows, dtype=np.int64)
        self.scored[rows] = True
        if len(rows) >= 3:
            values = np.asarray(self.state.scored_values)
            self.estimates = self.model.fit(rows, values).predict()
            self.estimates[rows] = values
            center, spread = self._value_moments()
            weight = self.options.classifier_weight
            self.values = document_values(self.estimates, center, spread, self.classifier, weight)

    def _value_moments(self) -> tuple[float, float]:
        """The μ̂, σ̂ that standardise the influence in v: the state's (_moments)."""
        return self._moments()

    def _standard(self, value: float) -> float:
        """A raw score in reward units (standardised like the rewards when scale is)."""
        if self.options.scale != "standardized" or not self.state.evaluated:
            return value
        center, spread = self._moments()
        return (value - center) / spread

    def _classifier_rewards(self, groups: list[np.ndarray]) -> np.ndarray:
        """Each group's share of the reward from the classifier: w × its mean standardised
        classifier score, in reward units (× σ̂ with scale: raw), so that a standardised
        reward is the draws' mean v − τ."""
        weight = self.options.classifier_weight
        if self.options.scale != "standardized":
            weight *= self._moments()[1]
        return weight * group_means([self.classifier[g] for g in groups])

    def _budget_met(self) -> bool:
        if self.budget.docs is not None:
            return len(self.selected) >= self.budget.docs
        remaining = self.budget.tokens - self.state.selected_tokens
        untaken = ~self.taken
        untaken[np.asarray(self.selected, dtype=np.int64)] = False
        return remaining <= 0 or not untaken.any() or int(self.tokens[untaken].min()) > remaining

    def summary(self, clusters: np.ndarray) -> dict[str, Any]:
        return {
            **super().summary(clusters),
            "evaluation_allowance_docs": self.allowance,
            "filled_by_model": self.state.filled,
            "model_ridge": self.model.ridge,
        }
