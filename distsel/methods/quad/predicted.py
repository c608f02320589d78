"""Quad with an influence model (`within_cluster: predicted`, the default; the arithmetic:
distsel.algorithms.bandit).

The paper's form (distsel.methods.quad.bandit) takes whole blocks at random, which caps Quad
well below influence top-k, and "reward > 0" spreads the budget over every above-average arm.
This one adds an influence model (distsel.algorithms.influence_model, after MATES), refitted
after every round on all scores so far, and ranks documents by the value

    v(x) = (s(x) − μ̂) / σ̂ + w · (c(x) − c̄) / sd(c)

s(x) the document's influence where computed, else its prediction; μ̂, σ̂ the mean and
deviation of every influence computed so far (the state's, so a resumed run ranks alike); c the
target-vs-pool classifier's score (also a covariate of the model), standardised over the pool;
w = classifier_weight; w = 0 ranks by influence alone. Where the model predicts influence poorly
(the suite's gsm8k task: Spearman 0.37 on unscored documents), a fill by influence alone is no
better than random; the classifier's score steadies it (benchmarks/suite.py, token budget: gsm8k
loss 7.093 at w = 1, 7.141 at w = 0, random 7.141; mean over the five tasks 6.997 and 7.016).
Then:
- the first round spends half of the evaluation allowance E = max_evaluated × pool on a few
  random draws from each of as many arms as it reaches (at most b each, at least one), so the
  model starts from a sample spread over the clusters;
- after it, an arm's draws are its b documents of highest v not yet scored, and an arm no one
  has pulled has the prior reward of those b; a pull's reward is its draws' mean v − τ (their
  mean standardised influence + w · their mean standardised classifier score; with
  `scale: raw`, in influence units, μ̂ + σ̂ · mean v − τ);
- once half of E is spent, each bandit round takes
  θ = the value of the document that would fill the remaining budget if documents were taken by
  v from the best down; a pulled arm whose draws' mean v ≥ θ is accepted and adds its
  untaken documents with v ≥ θ, best first, at most m of them;
- the last quarter of E (AUDIT_SHARE) audits the fill: in rounds of B·b documents, it scores
  the untaken, unscored documents whose score is worth most to the selection, the value of
  information E[max(y, θ)] − max(v̂, θ) with y ~ N(v̂, (sd(ŷ)² + σ_m²) / σ̂²) (the model's
  uncertainty in influence units, σ_m² its leave-one-out error, distsel.algorithms.influence_model),
  refitting after each round. The fill commits most of the budget to predictions; the audit
  spends scores where a prediction is likeliest to put a document on the wrong side of θ, as
  thresholding bandits do (APT, Locatelli et al. 2016);
- when E is spent (or the rounds or the arms run out) the rest of the budget is filled with the
  untaken documents of highest v, the pool ranked by the model (FILL_CONFIDENCE κ > 0 ranks
  unscored ones by v − κ·sd(ŷ)/σ̂ instead; 0, the mean, maximises the expected value).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distsel.algorithms.bandit import (
    audit_allowance,
    evaluation_allowance,
    group_means,
    random_arms,
    seed_round_arms,
    seed_round_draws,
    top_arms,
    ucb_scores,
)
from distsel.algorithms.influence_model import InfluenceModel
from distsel.core.config import Budget
from distsel.methods.quad.bandit import InfluenceFunction, QuadBandit
from distsel.methods.quad.documents import Found, QuadDocuments
from distsel.methods.quad.options import QuadOptions

AUDIT_SHARE = 0.25  # of the evaluation allowance, kept for the audit of the fill
FILL_CONFIDENCE = 0.0  # κ in the fill's ŷ − κ·sd(ŷ); 0: by ŷ


class PredictedQuadBandit(QuadBandit):
    """Quad with an influence model (`within_cluster: predicted`, see the module docstring).
    Its documents carry the model's features and the classifier score
    (distsel.methods.quad.documents).

    Each shard holds, per document, s(x), the influence where computed, else the model's
    prediction, and the value v(x) = (s(x) − μ̂)/σ̂ + w · z(x), z the classifier score
    standardised over the pool, μ̂ and σ̂ those of the state (every influence evaluated so far),
    so a resumed run recomputes the same values. Both are zero before the model's first fit;
    the driver fits the model on the scored draws and hands the shards its parameters."""

    audit_share: float = AUDIT_SHARE
    fill_confidence: float = FILL_CONFIDENCE
    remaining = "untaken"

    def __init__(
        self,
        documents: QuadDocuments,
        centroid_distances: np.ndarray,
        options: QuadOptions,
        budget: Budget,
        seed: int,
    ) -> None:
        super().__init__(documents, centroid_distances, options, budget, seed)
        if not documents.with_model:
            raise ValueError("quad with within_cluster: predicted needs the pool's features")
        self.model = InfluenceModel(None)  # fitted here, predicting on the shards
        self.allowance = evaluation_allowance(options.max_evaluated, len(documents))

    @property
    def audit(self) -> int:
        """The part of the allowance kept for the audit of the fill."""
        return audit_allowance(self.audit_share, self.allowance)

    def fresh_heads(self) -> tuple[list[Found], np.ndarray]:
        """Each arm's b documents neither scored nor taken, highest value v first (the arm's
        random order before the model's first fit, and among equal values), and how many each
        arm has."""
        b = self.options.draws_per_arm
        arms = np.arange(self.arms)
        return self.docs.best_of_arms(arms, np.full(self.arms, b), "fresh")

    def choose_arms(
        self, heads: list[Found] | None = None, left: np.ndarray | None = None
    ) -> np.ndarray:
        state = self.state
        if heads is None or left is None:
            heads, left = self.fresh_heads()
        live = left > 0
        count = min(self.arms_per_round, int(live.sum()))
        if state.round == 0 or not self.model.fitted:
            # The seed round: a few random draws from many arms, a sample the model can learn from.
            count = seed_round_arms(int(live.sum()), self.arms_per_round, self.allowance)
            return random_arms(live, count, self.seed + state.round)
        # an unpulled arm's prior: the reward its b best documents by v would bring
        prior = np.array([self._standard(h.estimates.mean()) if len(h) else 0.0 for h in heads])
        prior += self._classifier_rewards(heads)
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
        heads, left = self.fresh_heads()
        pulled = self.choose_arms(heads, left)
        room = self.allowance - self.audit - state.evaluated
        per_arm = self.options.draws_per_arm
        if state.round == 0:
            per_arm = seed_round_draws(per_arm, self.allowance, len(pulled))
        draws = []
        for arm in pulled:
            draws.append(heads[arm].first(min(per_arm, room)))
            room -= len(draws[-1])
        kept = [i for i, drawn in enumerate(draws) if len(drawn)]
        pulled, draws = pulled[kept], [draws[i] for i in kept]
        if not len(pulled):
            self._fill("every arm exhausted" if room > 0 else "evaluation allowance spent")
            return
        scores = influence([drawn.rows for drawn in draws])
        rewards = self._mean_scores(scores) + self._classifier_rewards(draws) - self.options.tau
        for arm, reward in zip(pulled, rewards, strict=True):
            state.pulls[arm] += 1
            state.reward_sums[arm] += float(reward)
        self._record_scores([drawn.rows for drawn in draws], scores)
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

    def _record_scores(self, groups: list[np.ndarray], scores: list[np.ndarray]) -> None:
        """Keep the scores in the state and on the shards, then refit."""
        rows = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        values = np.concatenate(scores) if scores else np.zeros(0)
        self.state.scored_rows.extend(int(i) for i in rows)
        self.state.scored_values.extend(float(v) for v in values)
        self.docs.mark(rows, scores=values)
        self._refit()

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
        spread = self._value_moments()[1]
        width = min(self.allowance - state.evaluated, self.arms_per_round * b)
        picked = self.docs.best_for_audit(width, self.model.parameters(), threshold, spread).rows
        if not len(picked):
            self._fill("every document scored or taken")
            return
        groups = [picked[i : i + b] for i in range(0, len(picked), b)]
        scores = influence(groups)
        self._mean_scores(scores)
        self._record_scores(groups, scores)
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
        self, pulled: np.ndarray, draws: list[Found]
    ) -> tuple[list[int], float | None]:
        """After the warm-up (half the allowance), accept the arms whose draws average ≥ θ."""
        if self.state.evaluated < self.allowance / 2:
            return [], None
        threshold = self.threshold()
        means = [float(self.docs.values(drawn.rows).mean()) for drawn in draws]
        accepted = []
        for position in np.argsort(means, kind="stable")[::-1]:
            if self.state.done or means[position] < threshold:
                break
            arm = int(pulled[position])
            accepted.append(arm)
            self.state.accepted.append(arm)
            block = self.docs.best_of_arms(
                np.array([arm]), np.array([self.docs_per_accept]), "untaken", threshold
            )[0][0]
            self._add_all(block)
        return accepted, threshold

    def threshold(self) -> float:
        """θ: the value v of the untaken document that would complete the budget, taking
        untaken documents by v from the best down (−inf when they would not fill it)."""
        if self.budget.docs is not None:
            return self.docs.threshold(self.budget.docs - len(self.selected), 0)
        return self.docs.threshold(None, self.budget.tokens - self.state.selected_tokens)

    def _fill(self, reason: str) -> None:
        """The rest of the budget: untaken documents of highest v (κ > 0: v − κ·sd(ŷ)/σ̂ for
        the unscored)."""
        parameters = self.model.parameters() if self.model.fitted else None
        docs_left = None if self.budget.docs is None else self.budget.docs - len(self.selected)
        tokens_left = 0 if self.budget.tokens is None else self.budget.tokens
        tokens_left -= self.state.selected_tokens
        spread = self._value_moments()[1]
        found = self.docs.fill(parameters, spread, self.fill_confidence, docs_left, tokens_left)
        self.state.filled += self._add_all(found)
        self.state.done = f"{reason}; the rest filled by the influence model"

    def _refit(self) -> None:
        rows = np.asarray(self.state.scored_rows, dtype=np.int64)
        if len(rows) >= 3:
            e, free = self.docs.features(rows)
            self.model.fit_features(e, free, np.asarray(self.state.scored_values))
            center, spread = self._value_moments()
            weight = self.options.classifier_weight
            self.docs.refit(self.model.parameters(), center, spread, weight)

    def _value_moments(self) -> tuple[float, float]:
        """The μ̂, σ̂ that standardise the influence in v: the state's (_moments)."""
        return self._moments()

    def _standard(self, value: float) -> float:
        """A raw score in reward units (standardised like the rewards when scale is)."""
        if self.options.scale != "standardized" or not self.state.evaluated:
            return value
        center, spread = self._moments()
        return (value - center) / spread

    def _classifier_rewards(self, groups: list[Found]) -> np.ndarray:
        """Each group's share of the reward from the classifier: w × its mean standardised
        classifier score, in reward units (× σ̂ with scale: raw), so that a standardised
        reward is the draws' mean v − τ."""
        weight = self.options.classifier_weight
        if self.options.scale != "standardized":
            weight *= self._moments()[1]
        return weight * group_means(
            [group.classifier[: self.options.draws_per_arm] for group in groups]
        )

    def _restore(self) -> None:
        """The shards' state after the saved rounds: the selection taken, the scores known."""
        self.docs.mark(np.asarray(self.selected, dtype=np.int64), taken=True)
        rows = np.asarray(self.state.scored_rows, dtype=np.int64)
        self.docs.mark(rows, scores=np.asarray(self.state.scored_values))
        self._refit()

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "evaluation_allowance_docs": self.allowance,
            "filled_by_model": self.state.filled,
            "model_ridge": self.model.ridge,
        }
