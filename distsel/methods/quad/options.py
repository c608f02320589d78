"""Quad's options: `select.quad`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distsel.core.config import StrictModel


class QuadOptions(StrictModel):
    """Quad's bandit (its arms: the cluster stage's k-means clusters, `stages.cluster`). With
    `scale: standardized`, rewards are influences standardised by the mean and deviation of all
    influences evaluated so far, so α and τ are in units of that deviation and one default
    serves any proxy; `raw` uses influences as they are. With `within_cluster: predicted`,
    documents are ranked (and arms rewarded) by the value v = the standardised influence (its
    model's prediction where not computed) + `classifier_weight` × the classifier stage's
    score standardised over the pool; 0 ranks by influence alone."""

    alpha: float = Field(default=1.0, ge=0)
    gamma: float = Field(default=0.2, gt=0)
    tau: float = 0.0
    scale: Literal["standardized", "raw"] = "standardized"
    arms_per_round: int | None = Field(default=None, gt=0)
    draws_per_arm: int = Field(default=10, gt=0)
    docs_per_accept: int | None = Field(default=None, gt=0)
    rounds: int = Field(default=200, gt=0)
    # `predicted`: an influence model (ridge on embeddings; length, target cosine and the
    # classifier stage's score as covariates) orders each arm's documents, sizes
    # blocks and fills what the bandit leaves; `random`: the paper's form.
    within_cluster: Literal["predicted", "random"] = "predicted"
    # With `predicted`: the share of the pool whose score the bandit may compute.
    max_evaluated: float = Field(default=0.1, gt=0, le=1)
    # With `predicted`: weight w of the classifier's standardised score in the value (and the
    # rewards); 0: influence alone. 1 on the task suite: mean loss 6.997, against 7.016 at 0.
    classifier_weight: float = Field(default=1.0, ge=0)
    # The costly score behind the rewards: a stage's column (default: the influence column
    # that select.influence.normalize names).
    scorer: str = "influence"
    score_column: str | None = None
