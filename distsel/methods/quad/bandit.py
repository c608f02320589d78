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
from collections.abc import Callable
from typing import Any

import numpy as np

from distsel.algorithms.bandit import (
    arm_members,
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
from distsel.core.samplers import random_order
from distsel.core.storage import Store
from distsel.methods.quad.options import QuadOptions
from distsel.methods.quad.state import BanditState, fingerprint, load_state, save_state

InfluenceFunction = Callable[[list[np.ndarray]], list[np.ndarray]]
# A progress line every this many rounds, and after any round ending this long (seconds) after
# the last line.
PROGRESS_ROUNDS = 5
PROGRESS_SECONDS = 10.0

log = logging.getLogger("distsel")


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
            fingerprint=fingerprint(options, budget, seed, clusters, random_key, arms),
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

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, store: Store) -> None:
        """Write the state and the selection so far (distsel.methods.quad.state)."""
        save_state(store, self.state, self.selected)

    def resume(self, store: Store) -> bool:
        """Continue from the last saved round when it belongs to this very run."""
        saved = load_state(store, self.state.fingerprint)
        if saved is None:
            return False
        self.state, self.selected = saved
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
