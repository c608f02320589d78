"""Quad: k-means clusters as bandit arms, influence computed only on a few documents per pull.

Zhang et al., *Harnessing Diversity for Important Data Selection in Pretraining Large Language
Models* (ICLR 2025).

Each round every live arm i gets the UCB score

    s_i = r̄_i + α · sqrt(2 ln N / (n_i + 1))
    r̄_i = (R_i + Σ_j w_ij R_j) / (n_i + Σ_j w_ij n_j),   R_i = Σ_{pulls of i} reward
    w_ij = 1 − d_ij / γ for neighbours (d_ij < γ, j ≠ i), else 0

(r̄_i = 0 while neither i nor a neighbour has been pulled), N the total pulls so far and n_i the
pulls of arm i; the first round takes B arms at random (seeded). The top-B arms are pulled: from
each, the next b documents not yet drawn (each arm's documents in a seeded random order) are
scored by influence, all pulled arms in parallel. The reward is the mean influence − τ (with
`scale: standardized`, influences are first standardised by the mean and deviation of all
influences evaluated so far). An arm with reward > 0 is accepted and adds m documents:
its b drawn ones and the next m − b of its order. An arm whose documents are all drawn retires.
The run stops at the budget, exactly (documents, or tokens filled greedily), or after `rounds`.

Unlike the authors' code, the documents scored for an arm and those taken from it come from one
ordering of that arm, so the scored ones are among the taken ones.

That is the paper's form (`within_cluster: random`). Taking whole blocks at random caps Quad well
below influence top-k, and "reward > 0" spreads the budget over every above-average arm. The
default, `within_cluster: predicted`, adds an influence model (distsel.algorithms.influence_model,
after MATES), refitted after every round on all scores so far, and ranks documents by the value

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

import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from distsel.algorithms.influence_model import InfluenceModel
from distsel.core import layout
from distsel.core.config import Budget, Config, QuadOptions
from distsel.core.errors import DistselError
from distsel.core.pool import Pool, fetch_texts
from distsel.core.registry import register_selector, stage_class
from distsel.core.samplers import descending, random_order
from distsel.core.selector import budget_section, score_column
from distsel.core.stage import StageContext, prepare_stage
from distsel.core.storage import Store

InfluenceFunction = Callable[[list[np.ndarray]], list[np.ndarray]]
AUDIT_SHARE = 0.25  # of the evaluation allowance, kept for the audit of the fill
FILL_CONFIDENCE = 0.0  # κ in the fill's ŷ − κ·sd(ŷ); 0: by ŷ
# A progress line every this many rounds, and after any round ending this long (seconds) after
# the last line.
PROGRESS_ROUNDS = 5
PROGRESS_SECONDS = 10.0

log = logging.getLogger("distsel")


@dataclass
class BanditState:
    """Everything a round changes; saved after every round so a killed run resumes."""

    fingerprint: dict[str, Any]
    round: int = 0
    pulls: list[int] = field(default_factory=list)
    reward_sums: list[float] = field(default_factory=list)
    cursors: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    evaluated: int = 0
    influence_sum: float = 0.0
    influence_sq_sum: float = 0.0
    selected_tokens: int = 0
    done: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    scored_rows: list[int] = field(default_factory=list)
    scored_values: list[float] = field(default_factory=list)
    filled: int = 0


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


def pool_z(scores: np.ndarray) -> np.ndarray:
    """Scores minus their mean over the pool, over their deviation (1 where it is 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    spread = float(scores.std())
    return (scores - scores.mean()) / (spread if spread > 0 else 1.0)


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
        by_cluster = np.argsort(clusters, kind="stable")
        bounds = np.searchsorted(clusters[by_cluster], np.arange(arms + 1))
        self.orders = [
            members[random_order(random_key[members])]
            for members in (by_cluster[bounds[i] : bounds[i + 1]] for i in range(arms))
        ]
        self.sizes = np.array([len(order) for order in self.orders])
        self.weights = neighbour_weights(centroid_distances, options.gamma)
        self.arms_per_round = options.arms_per_round or max(1, min(50, arms // 8))
        self.docs_per_accept = options.docs_per_accept or self._default_docs_per_accept()
        self.state = BanditState(
            fingerprint=self._fingerprint(clusters, random_key),
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
        return max(self.options.draws_per_arm, math.ceil(docs / 50))

    def _fingerprint(self, clusters: np.ndarray, random_key: np.ndarray) -> dict[str, Any]:
        return {
            "options": self.options.model_dump(),
            "budget": self.budget.model_dump(),
            "seed": self.seed,
            "docs": int(len(clusters)),
            "clusters_checksum": int(np.bincount(clusters).dot(np.arange(len(self.orders)) + 1)),
            # the pool's documents (their random keys follow from their ids), in any order
            "pool": int(np.bitwise_xor.reduce(random_key)) if len(random_key) else 0,
        }

    # -- the rounds -------------------------------------------------------------------------

    def run(self, influence: InfluenceFunction, store: Store | None = None) -> np.ndarray:
        """Play rounds until the budget, exhaustion or the round limit; return pool indices."""
        if store is not None and self.resume(store):
            log.info("quad: resuming after round %d", self.state.round)
        log.info(
            "quad: up to %d rounds over %d clusters, %d arms a round",
            self.options.rounds,
            len(self.orders),
            self.arms_per_round,
        )
        last = time.monotonic()
        while not self.state.done:
            self.play_round(influence)
            if store is not None:
                self.save(store)
            round_, now = self.state.round, time.monotonic()
            if (
                self.state.done
                or round_ == 1
                or round_ % PROGRESS_ROUNDS == 0
                or now - last >= PROGRESS_SECONDS
            ):
                log.info(self.progress_line())
                last = now
        return np.asarray(self.selected, dtype=np.int64)

    def progress_line(self) -> str:
        """`quad: round R, S[/E] documents scored, N/budget documents selected` (tokens too
        for a token budget), and why the run stopped once it has."""
        state, allowance = self.state, getattr(self, "allowance", None)
        scored = f"{state.evaluated:,}" + (f"/{allowance:,}" if allowance else "")
        if self.budget.docs is not None:
            selected = f"{len(self.selected):,}/{self.budget.docs:,} documents selected"
        else:
            selected = (
                f"{len(self.selected):,} documents selected, "
                f"{state.selected_tokens:,}/{self.budget.tokens:,} tokens"
            )
        stopped = f" (stopped: {state.done})" if state.done else ""
        return f"quad: round {state.round}{stopped}, {scored} documents scored, {selected}"

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
        candidates = np.flatnonzero(live)
        count = min(self.arms_per_round, len(candidates))
        if state.round == 0:
            rng = np.random.default_rng(self.seed)
            return np.sort(rng.choice(candidates, size=count, replace=False))
        scores = ucb_scores(
            np.array(state.reward_sums),
            np.array(state.pulls, dtype=np.float64),
            self.weights,
            self.options.alpha,
            live,
        )
        return np.argsort(-scores, kind="stable")[:count]

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
        means = np.array([float(np.mean(s)) if len(s) else 0.0 for s in scores])
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
        if not state.evaluated:
            return 0.0, 1.0
        center = state.influence_sum / state.evaluated
        spread = math.sqrt(max(state.influence_sq_sum / state.evaluated - center**2, 0.0))
        return center, (spread if spread > 0 else 1.0)

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

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, store: Store) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(self.selected, dtype=np.int64), allow_pickle=False)
        store.write_bytes(layout.QUAD_SELECTED, buffer.getvalue())
        store.write_bytes(layout.QUAD_STATE, json.dumps(asdict(self.state)).encode())

    def resume(self, store: Store) -> bool:
        """Continue from the last saved round when it belongs to this very run."""
        if not store.exists(layout.QUAD_STATE):
            return False
        saved = BanditState(**store.read_json(layout.QUAD_STATE))
        if saved.fingerprint != self.state.fingerprint:
            return False
        with store.fs.open(store.path(layout.QUAD_SELECTED), "rb") as handle:
            selected = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        self.state, self.selected = saved, selected.tolist()
        return True

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
    ) -> None:
        super().__init__(clusters, random_key, tokens, centroid_distances, options, budget, seed)
        if classifier is None and options.classifier_weight > 0:
            raise ValueError("quad with classifier_weight > 0 needs the pool's classifier scores")
        self.model = InfluenceModel(features)
        self.scored = np.zeros(len(clusters), dtype=bool)
        self.taken = np.zeros(len(clusters), dtype=bool)
        self.classifier = np.zeros(len(clusters)) if classifier is None else pool_z(classifier)
        self.estimates = np.zeros(len(clusters))
        self.values = np.zeros(len(clusters))
        self.allowance = max(1, math.floor(options.max_evaluated * len(clusters)))

    @property
    def audit(self) -> int:
        """The part of the allowance kept for the audit of the fill."""
        return math.floor(self.audit_share * self.allowance)

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
            count = min(int(live.sum()), max(count, self.allowance // 2))
            rng = np.random.default_rng(self.seed + state.round)
            return np.sort(rng.choice(np.flatnonzero(live), size=count, replace=False))
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
        return np.argsort(-scores, kind="stable")[:count]

    def play_round(self, influence: InfluenceFunction) -> None:
        state = self.state
        if self._auditing():
            self._audit_round(influence)
            return
        pulled = self.choose_arms()
        room = self.allowance - self.audit - state.evaluated
        per_arm = self.options.draws_per_arm
        if state.round == 0:
            per_arm = max(1, min(per_arm, (self.allowance // 2) // max(len(pulled), 1)))
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
            position = self.budget.docs - len(self.selected) - 1
        else:
            remaining = self.budget.tokens - self.state.selected_tokens
            position = int(np.searchsorted(np.cumsum(self.tokens[order]), remaining))
        return float(self.values[order[position]]) if position < len(order) else -math.inf

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
        bound = self.values[untaken] - self.fill_confidence * sd
        bound[self.scored[untaken]] = self.values[untaken][self.scored[untaken]]
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
            self.values = (self.estimates - center) / spread + weight * self.classifier

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
        return np.array(
            [weight * float(self.classifier[g].mean()) if len(g) else 0.0 for g in groups]
        )

    def _budget_met(self) -> bool:
        if self.budget.docs is not None:
            return len(self.selected) >= self.budget.docs
        remaining = self.budget.tokens - self.state.selected_tokens
        untaken = ~self.taken
        untaken[np.asarray(self.selected, dtype=np.int64)] = False
        return remaining <= 0 or not untaken.any() or int(self.tokens[untaken].min()) > remaining

    def resume(self, store: Store) -> bool:
        if not super().resume(store):
            return False
        self.taken[np.asarray(self.selected, dtype=np.int64)] = True
        self._refit()
        return True

    def summary(self, clusters: np.ndarray) -> dict[str, Any]:
        return {
            **super().summary(clusters),
            "evaluation_allowance_docs": self.allowance,
            "filled_by_model": self.state.filled,
            "model_ridge": self.model.ridge,
        }


def make_bandit(
    clusters: np.ndarray,
    random_key: np.ndarray,
    tokens: np.ndarray,
    centroid_distances: np.ndarray,
    options: QuadOptions,
    budget: Budget,
    seed: int,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    classifier: np.ndarray | None = None,
) -> QuadBandit:
    """The paper's bandit, or with `within_cluster: predicted` the one with an influence model
    (`features`) whose value adds the classifier score (`classifier`, one per document) with
    weight classifier_weight."""
    arguments = (clusters, random_key, tokens, centroid_distances, options, budget, seed)
    if options.within_cluster == "random":
        return QuadBandit(*arguments)
    if features is None:
        raise ValueError("quad with within_cluster: predicted needs the pool's features")
    return PredictedQuadBandit(*arguments, features, classifier)


@register_selector("quad", options=QuadOptions, needs_target=True)
class QuadSelector:
    """Quad: a bandit over k-means clusters that computes a costly score (influence by default)
    only on a few draws per pull."""

    def required_stages(self, config: Config) -> tuple[str, ...]:
        if config.select.quad.within_cluster == "predicted":
            return ("embed", "cluster", "classifier")
        return ("embed", "cluster")

    def select(
        self, pool: Pool, config: Config, context: StageContext
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from distsel.algorithms.influence_model import pool_features
        from distsel.core.pool import gather_embeddings
        from distsel.core.runner import StagePool
        from distsel.methods.cluster import load_centroid_distances

        options = config.select.quad
        stage, column = _quad_scorer(config, context)
        features = classifier = None
        if options.within_cluster == "predicted":
            embeddings = gather_embeddings(context.store, pool)
            classifier = score_column(pool, "classifier_score")
            features = pool_features(
                embeddings, pool.tokens, _target_cosine(config, embeddings), classifier
            )
        clusters = score_column(pool, "cluster").astype(np.int64)
        bandit = make_bandit(
            clusters,
            pool.random_key,
            pool.tokens,
            load_centroid_distances(context.store),
            options,
            config.select.budget,
            config.seed,
            features,
            classifier,
        )
        # the scores in a saved state hold only under the scorer they came from
        bandit.state.fingerprint["scorer"] = stage.fingerprint()
        scorer = StagePool(stage, column)
        try:
            chosen = bandit.run(
                lambda groups: scorer.score(fetch_texts(context.store, pool, groups)), context.store
            )
        finally:
            scorer.close()
        section = {"budget": budget_section(config), **options.model_dump(), "score_column": column}
        return chosen, {**section, **bandit.summary(clusters), stage.name: stage.summary}


def _target_cosine(config: Config, embeddings: np.ndarray) -> np.ndarray:
    """Each pool document's best cosine to the target examples (RDS+'s max), a covariate of
    Quad's influence model."""
    from distsel.core.corpus import read_texts
    from distsel.methods.embed import EmbedStage, embed_texts_on_cluster
    from distsel.methods.similarity import cosine_scores

    target = config.target
    texts = read_texts(target.paths, target.text_field, target.storage_options)
    resources = EmbedStage.from_config(config, EmbedStage.default_resources).resources
    vectors = embed_texts_on_cluster({"target": texts}, config.embed, resources)["target"]
    return cosine_scores(embeddings, vectors.astype(embeddings.dtype), "max")


def _quad_scorer(config: Config, context: StageContext) -> tuple[Any, str]:
    """The prepared stage behind Quad's rewards, and the column of its output they use."""
    options = config.select.quad
    stage_type = stage_class(options.scorer)
    if tuple(stage_type.input_columns) != ("text",) and not stage_type.tokenizes_texts:
        raise DistselError(f"select.quad.scorer: stage '{options.scorer}' does not score text")
    column = options.score_column
    if column is None and options.scorer == "influence":
        column = "influence_normalized" if config.select.influence.normalize else "influence"
    column = column or stage_type.output_columns[0]
    if column not in stage_type.output_columns:
        known = ", ".join(stage_type.output_columns)
        raise DistselError(
            f"select.quad.score_column: stage '{options.scorer}' writes {known}, not '{column}'"
        )
    resources = stage_type.default_resources.with_overrides(config.stages.get(options.scorer))
    stage = stage_type.from_config(config, resources)
    prepare_stage(stage, context)
    return stage, column
