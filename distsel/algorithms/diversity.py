r"""Diversity-aware selection over k-means clusters: MIG's information gain and Diversify-and-
Conquer's iterative cluster weights.

MIG: Chen et al. (2025), "MIG: Automatic Data Selection for Instruction Tuning by Maximizing
Information Gain in Semantic Space" (arXiv:2504.13835), adapted to text without tags: the label
graph's nodes are the clusters, a document carries its own cluster's label, and its quality
q_i ∈ (0, 1] spreads over the graph's edges A (a kernel of the centroid cosines, the
`neighbours` largest per node, self weight 1). With S the chosen documents, node l holds

    I_l(S) = Σ_{i ∈ S} A[l, c_i] · q_i,        information  F(S) = Σ_l φ(I_l(S)),  φ(x) = x^α

and greedy selection adds the document of largest gain F(S + i) − F(S). Documents of one cluster
share their column of A, so a cluster's best document is its highest-quality one remaining, and
the greedy compares one head per cluster. φ concave makes F submodular: a gain only falls as S
grows, so lazy greedy (heads kept in a heap with their stale gains, a popped head recomputed and
taken when it still beats the next) selects what plain greedy does.

Diversify-and-Conquer: Yu et al. (2024), "Diversify and Conquer: Diversity-Centric Data
Selection with Iterative Refinement" (arXiv:2409.11378). The budget is spent in R rounds; round
1 gives every cluster an equal quota, each later round gives cluster c the share
softmax(r̄_c / T) of the mean reward r̄_c of its documents chosen so far; within a cluster the
documents are taken in a seeded random order.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["centroid_graph", "diversify_rounds", "information_gain", "mig_greedy"]


def centroid_graph(
    centroids: np.ndarray, neighbours: int, bandwidth: float = 0.1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per node c: (the nodes l it spreads to, A[l, c]): itself with weight 1 and its
    `neighbours` most similar others, A[l, c] = exp(−(1 − cos(μ_l, μ_c)) / bandwidth). The
    kernel keeps the spread local where every centroid is somewhat alike (text embeddings: cos
    0.3–0.8 between clusters): cos 0.9 gives 0.37, cos 0.6 gives 0.02 at bandwidth 0.1."""
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    weight = np.exp(-(1.0 - unit @ unit.T) / bandwidth)
    np.fill_diagonal(weight, -1.0)
    graph = []
    for node in range(len(unit)):
        others = np.argsort(-weight[node], kind="stable")[: min(neighbours, len(unit) - 1)]
        graph.append(
            (np.concatenate([[node], others]), np.concatenate([[1.0], weight[node, others]]))
        )
    return graph


def information_gain(
    information: np.ndarray, nodes: np.ndarray, weights: np.ndarray, quality: float, alpha: float
) -> float:
    """Σ_l φ(I_l + A[l, c] · q) − φ(I_l) over the nodes `nodes` that cluster c spreads to."""
    before = information[nodes]
    return float(np.sum((before + weights * quality) ** alpha - before**alpha))


def mig_greedy(
    cluster_of: np.ndarray,
    quality: np.ndarray,
    graph: list[tuple[np.ndarray, np.ndarray]],
    costs: np.ndarray,
    limit: float,
    alpha: float = 0.5,
) -> np.ndarray:
    """The documents lazy greedy adds, in order, until their costs reach `limit` (a document
    that does not fit is passed over). Within a cluster, higher quality first, then index."""
    queues = _cluster_queues(cluster_of, -quality)
    information = np.zeros(len(graph))
    heap = [(-information_gain(information, *graph[c], quality[q[0]], alpha), c) for c, q in queues]
    heapq.heapify(heap)
    heads = {c: 0 for c, _ in queues}
    members = dict(queues)
    chosen, spent = [], 0.0
    while heap and spent < limit:
        _, cluster = heapq.heappop(heap)
        queue, head = members[cluster], heads[cluster]
        document = queue[head]
        gain = information_gain(information, *graph[cluster], quality[document], alpha)
        if heap and gain < -heap[0][0] - 1e-12:
            heapq.heappush(heap, (-gain, cluster))  # stale: another head may now gain more
            continue
        if spent + costs[document] <= limit:
            nodes, weights = graph[cluster]
            information[nodes] += weights * quality[document]
            chosen.append(document)
            spent += costs[document]
        heads[cluster] = head + 1
        if head + 1 < len(queue):
            next_gain = information_gain(
                information, *graph[cluster], quality[queue[head + 1]], alpha
            )
            heapq.heappush(heap, (-next_gain, cluster))
    return np.asarray(chosen, dtype=np.int64)


def diversify_rounds(
    cluster_of: np.ndarray,
    reward: np.ndarray,
    random_key: np.ndarray,
    costs: np.ndarray,
    limit: float,
    rounds: int = 4,
    temperature: float = 0.5,
) -> np.ndarray:
    """The documents chosen over `rounds` rounds, in the order taken. Each round has 1/R of
    the budget (the last, what is left): cluster c's quota is its weight times the round's
    budget (equal weights in round 1, then softmax of the mean reward of its chosen documents
    over `temperature`); a cluster takes its next documents in `random_key` order while its
    quota lasts, and what a small cluster cannot use goes to the others by weight."""
    queues = dict(_cluster_queues(cluster_of, random_key))
    heads = dict.fromkeys(queues, 0)
    weights = dict.fromkeys(queues, 1.0 / max(len(queues), 1))
    chosen: list[int] = []
    spent = 0.0
    for round_index in range(rounds):
        budget = (limit - spent) / (rounds - round_index)
        taken = _fill_round(queues, heads, weights, costs, budget, limit - spent)
        chosen += taken
        spent += float(costs[taken].sum()) if taken else 0.0
        weights = _softmax_weights(queues, heads, reward, temperature)
    return np.asarray(chosen, dtype=np.int64)


def _fill_round(
    queues: dict[int, np.ndarray],
    heads: dict[int, int],
    weights: dict[int, float],
    costs: np.ndarray,
    budget: float,
    left: float,
) -> list[int]:
    taken: list[int] = []
    spent = 0.0
    # the heaviest clusters first; equal weights in the order of their first random key
    visit = sorted(queues, key=lambda c: (-weights[c], float(queues[c][0])))
    open_clusters = [c for c in visit if heads[c] < len(queues[c])]
    while open_clusters and budget - spent > 0:
        total = sum(weights[c] for c in open_clusters) or 1.0
        share = {c: weights[c] / total * (budget - spent) for c in open_clusters}
        progress = False
        for cluster in open_clusters:
            quota, queue = share[cluster], queues[cluster]
            while heads[cluster] < len(queue) and quota > 0:
                document = queue[heads[cluster]]
                if spent + costs[document] > left:
                    break
                quota -= costs[document]
                spent += costs[document]
                heads[cluster] += 1
                taken.append(int(document))
                progress = True
        open_clusters = [c for c in open_clusters if heads[c] < len(queues[c])]
        if not progress:
            break
    return taken


def _softmax_weights(
    queues: dict[int, np.ndarray], heads: dict[int, int], reward: np.ndarray, temperature: float
) -> dict[int, float]:
    chosen = np.concatenate([q[: heads[c]] for c, q in queues.items()])
    prior = float(np.mean(reward[chosen])) if len(chosen) else 0.0  # a cluster not yet drawn
    means = {
        c: float(np.mean(reward[q[: heads[c]]])) if heads[c] else prior for c, q in queues.items()
    }
    values = np.array(list(means.values())) / temperature
    exp = np.exp(values - values.max()) if len(values) else values
    return dict(zip(means, (exp / exp.sum()).tolist(), strict=True))


def _cluster_queues(cluster_of: np.ndarray, key: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Per cluster (in cluster order): its documents sorted by `key` ascending, then index."""
    order = np.lexsort((np.arange(len(cluster_of)), key, cluster_of))
    clusters = cluster_of[order]
    starts = np.flatnonzero(np.diff(clusters, prepend=clusters[:1] - 1) != 0)
    bounds = [*starts.tolist(), len(order)]
    return [(int(clusters[a]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
