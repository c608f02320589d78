"""The paper's Quad bandit (`within_cluster: random`): k-means clusters as arms, influence
computed only on a few documents per pull (the arithmetic: distsel.algorithms.bandit).

Each round the top-B live arms by UCB score are pulled (the first round: B at random, seeded):
from each, the next b documents not yet drawn (each arm's documents in a seeded random order)
are scored by influence, all pulled arms in parallel. The reward is the mean influence − τ
(with `scale: standardized`, influences are first standardised by the mean and deviation of
all influences evaluated so far). An arm with reward > 0 is accepted and adds m documents: its
b drawn ones and the next m − b of its order. An arm whose documents are all drawn retires.
The run stops at the budget, exactly (documents, or tokens filled greedily), or after `rounds`.

Unlike the authors' code, the documents scored for an arm and those taken from it come from one
ordering of that arm, so the scored ones are among the taken ones.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np

from distsel.algorithms.bandit import (
    default_arms_per_round,
    default_docs_per_accept,
    group_means,
    neighbour_weights,
    random_arms,
    running_moments,
    top_arms,
    ucb_scores,
)
from distsel.core.config import Budget
from distsel.core.storage import Store
from distsel.methods.quad.documents import Found, QuadDocuments
from distsel.methods.quad.options import QuadOptions
from distsel.methods.quad.state import BanditState, Checkpoints, fingerprint

InfluenceFunction = Callable[[list[np.ndarray]], list[np.ndarray]]
# A progress line every this many rounds, and after any round ending this long (seconds) after
# the last line.
PROGRESS_ROUNDS = 5
PROGRESS_SECONDS = 10.0

log = logging.getLogger("distsel")


class QuadBandit:
    """The bandit over clusters. Its documents (distsel.methods.quad.documents) stay on the shards;
    the driver holds per-arm counts, the draws, and the selection (pool indices); `influence`
    scores groups of documents given as their texts' pool indices."""

    # the documents a token budget may still take: those not yet drawn or taken
    remaining = "fresh"

    def __init__(
        self,
        documents: QuadDocuments,
        centroid_distances: np.ndarray,
        options: QuadOptions,
        budget: Budget,
        seed: int,
    ) -> None:
        self.options, self.budget, self.seed, self.docs = options, budget, seed, documents
        self.arms = int(centroid_distances.shape[0])
        self.sizes = documents.arms()[: self.arms]
        self.weights = neighbour_weights(centroid_distances, options.gamma)
        self.arms_per_round = options.arms_per_round or default_arms_per_round(self.arms)
        self.docs_per_accept = options.docs_per_accept or self._default_docs_per_accept()
        self.state = BanditState(
            fingerprint=fingerprint(options, budget, seed, documents, self.arms),
            pulls=[0] * self.arms,
            reward_sums=[0.0] * self.arms,
            cursors=[0] * self.arms,
        )
        self.selected = array("q")  # pool indices, 8 B each

    def _default_docs_per_accept(self) -> int:
        """m = max(b, ceil(budget in documents / 50)): about 50 acceptances fill the budget."""
        docs = self.budget.docs
        if docs is None:
            count, tokens = self.docs.totals()
            docs = self.budget.tokens / max(tokens / max(count, 1), 1.0)
        return default_docs_per_accept(self.options.draws_per_arm, docs)

    # -- the rounds -------------------------------------------------------------------------

    def run(self, influence: InfluenceFunction, store: Store | None = None) -> np.ndarray:
        """Play rounds until the budget, exhaustion or the round limit; return pool indices."""
        checkpoints = None if store is None else Checkpoints(store)
        if checkpoints is not None and self.resume(checkpoints):
            log.info("quad: resuming after round %d", self.state.round)
        elif checkpoints is not None:
            checkpoints.start(self.state)
        log.info(
            "quad: up to %d rounds over %d clusters, %d arms a round",
            self.options.rounds,
            self.arms,
            self.arms_per_round,
        )
        last = time.monotonic()
        while not self.state.done:
            self.play_round(influence)
            if checkpoints is not None:
                checkpoints.save(self.state, self.selected)
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
        draws = self._take(pulled, np.full(len(pulled), b))
        scores = influence([drawn.rows for drawn in draws])
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

    def _take(self, arms: np.ndarray, counts: np.ndarray) -> list[Found]:
        """The next `counts` documents of each arm's random order, drawn (marked taken on the
        shards: no longer fresh)."""
        found = self.docs.best_of_arms(arms, counts, "fresh")[0]
        for arm, taken in zip(arms, found, strict=True):
            self.state.cursors[arm] += len(taken)
        self.docs.mark(Found.concatenated(found).rows, taken=True)
        return found

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

    def _accept(self, arm: int, drawn: Found) -> None:
        """Add the arm's drawn documents and the next m − b of its order, within the budget."""
        self.state.accepted.append(int(arm))
        extra = max(self.docs_per_accept - len(drawn), 0)
        taken = self._take(np.array([arm]), np.array([extra]))[0]
        self._add_all(Found.concatenated([drawn, taken]))

    def _add_all(self, found: Found) -> int:
        """Add documents in order within the budget (a token budget skips those that do not
        fit) and mark them taken; returns how many were added."""
        state, added = self.state, []
        for index, tokens in zip(found.rows.tolist(), found.tokens.tolist(), strict=True):
            if self.budget.docs is not None:
                if len(self.selected) >= self.budget.docs:
                    break
            elif state.selected_tokens + tokens > self.budget.tokens:
                continue
            self.selected.append(index)
            state.selected_tokens += tokens
            added.append(index)
        self.docs.mark(np.asarray(added, dtype=np.int64), taken=True)
        if self._budget_met():
            state.done = "budget reached"
        return len(added)

    def _budget_met(self) -> bool:
        """The budget is reached, or (tokens) no document it may still take fits."""
        if self.budget.docs is not None:
            return len(self.selected) >= self.budget.docs
        remaining = self.budget.tokens - self.state.selected_tokens
        return remaining <= 0 or self.docs.fewest_tokens(self.remaining) > remaining

    # -- checkpoints --------------------------------------------------------------------------

    def resume(self, checkpoints: Checkpoints) -> bool:
        """Continue from the last saved round when it belongs to this very run."""
        saved = checkpoints.load(self.state.fingerprint)
        if saved is None:
            return False
        self.state, self.selected = saved
        self._restore()
        return True

    def _restore(self) -> None:
        """The shards' state after the saved rounds: each arm's first `cursors` documents of its
        random order drawn."""
        cursors = np.array(self.state.cursors, dtype=np.int64)
        arms = np.flatnonzero(cursors)
        found = self.docs.best_of_arms(arms, cursors[arms], "all")[0]
        self.docs.mark(Found.concatenated(found).rows, taken=True)

    def summary(self) -> dict[str, Any]:
        chosen = np.asarray(self.selected, dtype=np.int64)
        counts = self.docs.cluster_counts(chosen, self.arms)
        return {
            "influence_evaluated_docs": self.state.evaluated,
            "rounds": self.state.round,
            "stopped": self.state.done,
            "clusters": self.arms,
            "clusters_accepted": len(set(self.state.accepted)),
            "acceptances": len(self.state.accepted),
            "clusters_covered": int(np.count_nonzero(counts)),
            "arms_per_round": self.arms_per_round,
            "docs_per_accept": self.docs_per_accept,
            "selected_per_cluster": {str(i): int(c) for i, c in enumerate(counts) if c},
            "history": self.state.history,
        }
