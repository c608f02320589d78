"""Quad: k-means clusters as bandit arms, influence computed only on a few documents per pull
(Zhang et al., *Harnessing Diversity for Important Data Selection in Pretraining Large Language
Models*, ICLR 2025).

    state      the saved bandit state, its fingerprint, saving and resuming
    bandit     the paper's bandit (`within_cluster: random`): rounds, draws, acceptance, budget
    predicted  the bandit with an influence model (`within_cluster: predicted`, the default)
    documents  the pool's documents and the bandit's per-document state, on shard actors
    selector   the registered selector: the scorer, the bandit on the shards, the manifest section

The bandit's arithmetic (UCB scores, rewards, thresholds, counts) is distsel.algorithms.bandit.
"""

from distsel.methods.quad.bandit import QuadBandit
from distsel.methods.quad.predicted import AUDIT_SHARE, FILL_CONFIDENCE, PredictedQuadBandit
from distsel.methods.quad.selector import QuadSelector, make_bandit
from distsel.methods.quad.state import BanditState

__all__ = [
    "AUDIT_SHARE",
    "FILL_CONFIDENCE",
    "BanditState",
    "PredictedQuadBandit",
    "QuadBandit",
    "QuadSelector",
    "make_bandit",
]
