"""The pool's groups for the mixture, read part by part: their sizes, the search's samples and
the selection sampled by the weights, without the pool on the driver (distsel.core.candidates).

- Sizes: each part counts its documents and tokens per group; the driver adds them.
- Held-out documents: the first `heldout_docs` of the pool's seeded random order, gathered as the
  `random` selector's heads.
- A group's sample: its documents after the held-out ones in the random order (every document
  of the group when the held-out ones are all it has), taken until their tokens reach a floor or
  a count is reached (`SamplePlan`, `ReachWalk`). Each part sends, per group, the head its share
  of the group's tokens would fill, and more where the walk reached past it.
- The selection (`MixturePlan`): each group in its random order under its water-filled share
  (documents or tokens), then for a token budget the tokens left go to the documents not taken,
  in another seeded order. Each part sends heads of these orders, grown until the walks over the
  heads are the walks over the pool.

A part's head of one group's order starts at its expected take plus MIN_GROUP_HEAD documents,
so the heads hold about 1.25 × what the walks take + 2 × (parts × groups they hold).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from distsel.algorithms.simplex import natural_weights, water_fill
from distsel.core.candidates import HEAD_MARGIN, Walk, gather_heads, gather_ranked, last_sent
from distsel.core.config import Budget, Config
from distsel.core.errors import DistselError
from distsel.core.executor import current
from distsel.core.pool import (
    Pool,
    part_columns,
    selection_fields,
)
from distsel.core.samplers import fill_limit, random_order, random_ranking
from distsel.core.storage import Store

# mixture.group_field naming the k-means clusters as groups.
CLUSTER_GROUPS = "cluster"
# A part's head of one group's order, beyond its expected take: CCS's floor per stratum, not
# the 16 of one ranking, since a part sends one head per group.
MIN_GROUP_HEAD = 2


def group_field(config: Config) -> str:
    """The pool field holding each document's group: mixture.group_field, else input.group_field."""
    name = config.mixture.group_field or config.input.group_field
    if not name:
        raise DistselError("select.method 'mixture' needs mixture.group_field or input.group_field")
    return name


def group_stages(field: str) -> list[str]:
    """The stages whose scores hold the groups: the cluster stage for `cluster`."""
    return [CLUSTER_GROUPS] if field == CLUSTER_GROUPS else []


def group_values(pool: Pool, field: str) -> np.ndarray:
    """Each document's group: the passed-through field's value, or for `cluster` its k-means
    cluster (as "cluster-<id>")."""
    if field == CLUSTER_GROUPS and CLUSTER_GROUPS in pool.scores:
        ids = pool.scores[CLUSTER_GROUPS].astype(np.int64).astype(str)
        return np.char.add("cluster-", ids).astype(object)
    if field in pool.categories:
        return pool.categories[field]
    known = [*pool.categories, CLUSTER_GROUPS]
    raise DistselError(f"the pool has no group field '{field}' (known: {known})")


@dataclass(frozen=True)
class GroupSizes:
    """The whole pool's documents and tokens per group, groups sorted."""

    groups: list[str]
    docs: np.ndarray
    tokens: np.ndarray

    @classmethod
    def of_summary(cls, summary: dict[str, dict[str, int]]) -> GroupSizes:
        """The sizes a search's summary of the groups gives (pool_docs, pool_tokens)."""
        groups = sorted(summary)
        docs = [summary[g]["pool_docs"] for g in groups]
        tokens = [summary[g]["pool_tokens"] for g in groups]
        return cls(groups, np.array(docs, np.int64), np.array(tokens, np.int64))

    @classmethod
    def of_counts(cls, docs: Counter, tokens: Counter) -> GroupSizes:
        """The sizes of documents and tokens counted per group."""
        groups = sorted(docs)
        sizes = [[counts[g] for g in groups] for counts in (docs, tokens)]
        return cls(groups, np.array(sizes[0], np.int64), np.array(sizes[1], np.int64))

    def natural(self) -> np.ndarray:
        """The pool's own mixture (natural_weights)."""
        return natural_weights(self.tokens)


@dataclass(frozen=True)
class PoolParts:
    """Where the pool lies: its parts, the rows left out of each, and the run's config."""

    store: Store
    parts: list[str]
    config: Config
    dropped: dict[str, np.ndarray]

    @property
    def field(self) -> str:
        return group_field(self.config)

    def heads(self, plan: object, step: str) -> Pool:
        """The heads of `plan` (a HeadPlan), grown until its walks are exact; `step` names the
        work in the console line."""
        stages = group_stages(self.field)
        return gather_heads(self.store, self.parts, stages, self.config, plan, self.dropped, step)

    def sizes(self) -> GroupSizes:
        calls = [
            (
                self.store,
                part,
                group_stages(self.field),
                selection_fields(self.config),
                self.dropped.get(part, np.zeros(0, np.int64)),
                self.field,
            )
            for part in self.parts
        ]
        docs: Counter = Counter()
        tokens: Counter = Counter()
        for part_docs, part_tokens in current().map(_part_group_sizes, calls):
            docs.update(part_docs)
            tokens.update(part_tokens)
        return GroupSizes.of_counts(docs, tokens)


def _part_group_sizes(
    store: Store, part: str, stages: list[str], fields: list[str], dropped: np.ndarray, field: str
) -> tuple[Counter, Counter]:
    return group_counts(part_columns(store, part, stages, fields, 0, dropped).pool, field)


def group_counts(pool: Pool, field: str) -> tuple[Counter, Counter]:
    """The pool's documents and tokens per group."""
    values = group_values(pool, field)
    docs, tokens = Counter(values.tolist()), Counter()
    for value, count in zip(values.tolist(), pool.tokens.tolist(), strict=True):
        tokens[value] += count
    return docs, tokens


def _empty_pool(parts: list[str]) -> Pool:
    none = np.zeros(0, np.int64)
    return Pool(parts, none.astype(np.int32), none, none, none.astype(np.uint64))


# ---------------------------------------------------------------------------------------------
# The search's samples


def heldout_sample(source: PoolParts, count: int) -> tuple[Pool, np.ndarray]:
    """The first `count` documents of the pool's random order: a pool holding them, and their
    indices in it, in that order."""
    if count <= 0:
        return _empty_pool(source.parts), np.zeros(0, np.int64)
    select = source.config.select.model_copy(update={"budget": Budget(docs=count)})
    config = source.config.model_copy(update={"select": select})
    stages = group_stages(source.field)
    step = "mixture: the held-out sample"
    pool = gather_ranked(
        source.store, source.parts, stages, config, random_ranking, source.dropped, step
    )
    return pool, random_order(pool.random_key)[:count]


@dataclass(frozen=True)
class ReachWalk(Walk):
    """A walk that takes its order's documents until their tokens reach `limit` or `most`
    documents are taken (the last one may cross the limit)."""

    most: int = 0

    def taken(self, tokens: np.ndarray) -> np.ndarray:
        order = np.asarray(self.order, dtype=np.int64)
        reached = np.cumsum(tokens[order]) >= (self.limit or 0)
        count = int(np.argmax(reached)) + 1 if reached.any() else len(order)
        return order[: min(count, self.most)]

    def short(
        self, pool: Pool, sent: np.ndarray, left_out: np.ndarray, fewest_left_out: float
    ) -> np.ndarray:
        """The parts whose left-out documents the walk reached: it took a document after the
        last one the part sent, or ran out of documents before it stopped."""
        taken = self.taken(pool.tokens)
        stopped = len(taken) == self.most or (
            len(taken) and int(pool.tokens[taken].sum()) >= (self.limit or 0)
        )
        reached = len(taken) - 1 if stopped else len(self.order)
        return last_sent(pool, self.order, sent) < reached


@dataclass(frozen=True)
class SamplePlan:
    """The search's group samples as a HeadPlan: per group, its documents in random order after
    `after_key` (all of them for the groups in `whole`), walked until their tokens reach `floor`
    or `most` documents are taken. A part sends, per group, the head its share of the group's
    tokens (`group_tokens`) would fill, and more where the walk reached past it."""

    field: str
    groups: tuple[str, ...]
    group_tokens: tuple[int, ...]
    after_key: int | None
    whole: frozenset[str]
    floor: int
    most: int
    by_tokens: bool = True
    min_head: int = MIN_GROUP_HEAD

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]]:
        heads = []
        for order, total in zip(self._orders(part), self.group_tokens, strict=True):
            share = int(part.tokens[order].sum()) / total if total else 0.0
            heads.append((order, HEAD_MARGIN * self.floor * share))
        return heads

    def walks(self, pool: Pool) -> list[Walk]:
        return [ReachWalk(order, self.floor, True, self.most) for order in self._orders(pool)]

    def take(self, pool: Pool) -> list[np.ndarray]:
        return [walk.taken(pool.tokens) for walk in self.walks(pool)]

    def _orders(self, pool: Pool) -> list[np.ndarray]:
        values = group_values(pool, self.field)
        orders = []
        for group in self.groups:
            members = np.flatnonzero(values == group)
            if group not in self.whole and self.after_key is not None:
                members = members[pool.random_key[members] > np.uint64(self.after_key)]
            orders.append(members[random_order(pool.random_key[members])])
        return orders


def group_samples(
    source: PoolParts,
    sizes: GroupSizes,
    heldout: tuple[Pool, np.ndarray],
    floor: float,
    most: int,
) -> tuple[Pool, list[np.ndarray]]:
    """Each group's sample (see the module docstring): a pool holding them, and per group
    (sizes.groups) their indices in it."""
    pool, rows = heldout
    held = Counter(group_values(pool, source.field)[rows].tolist()) if len(rows) else Counter()
    whole = frozenset(g for g, n in zip(sizes.groups, sizes.docs, strict=True) if held[g] >= n)
    after = int(pool.random_key[rows].max()) if len(rows) else None
    totals = tuple(int(t) for t in sizes.tokens)
    plan = SamplePlan(
        source.field, tuple(sizes.groups), totals, after, whole, math.ceil(floor), most
    )
    gathered = source.heads(plan, "mixture: the groups' samples")
    return gathered, plan.take(gathered)


# ---------------------------------------------------------------------------------------------
# The selection


@dataclass(frozen=True)
class TopUpWalk(Walk):
    """A walk that skips the documents `taken_before` (the groups' own walks)."""

    taken_before: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def taken(self, tokens: np.ndarray) -> np.ndarray:
        order = np.asarray(self.order, dtype=np.int64)
        order = order[~np.isin(order, self.taken_before)]
        return fill_limit(order, tokens, self.limit or 0, self.by_tokens)


@dataclass(frozen=True)
class MixturePlan:
    """The selection by mixture weights as a HeadPlan (distsel.core.candidates): one order per
    group, walked under its share, and for a token budget the top-up order. `search` is the
    mixture section the weights came from."""

    field: str
    sizes: GroupSizes
    shares: tuple[int, ...]
    limit: int
    by_tokens: bool
    seed: int
    search: dict
    min_head: int = MIN_GROUP_HEAD

    def part_orders(self, part: Pool) -> list[tuple[np.ndarray, float | None]]:
        values = group_values(part, self.field)
        totals = self.sizes.tokens if self.by_tokens else self.sizes.docs
        orders = []
        for group, share, total in zip(self.sizes.groups, self.shares, totals, strict=True):
            members = np.flatnonzero(values == group)
            held = int(part.tokens[members].sum()) if self.by_tokens else len(members)
            expected = HEAD_MARGIN * share * held / total if total else 0.0
            orders.append((members[random_order(part.random_key[members])], expected))
        if self.by_tokens:
            orders.append((top_up_order(part, self.seed), 0.0))
        return orders

    def walks(self, pool: Pool) -> list[Walk]:
        values = group_values(pool, self.field)
        walks: list[Walk] = []
        for group, share in zip(self.sizes.groups, self.shares, strict=True):
            members = np.flatnonzero(values == group)
            order = members[random_order(pool.random_key[members])]
            walks.append(Walk(order, share, self.by_tokens))
        if self.by_tokens:
            taken = np.concatenate([w.taken(pool.tokens) for w in walks])
            left = max(self.limit - int(pool.tokens[taken].sum()), 0)
            walks.append(TopUpWalk(top_up_order(pool, self.seed), left, True, taken))
        return walks

    def __reduce__(self) -> tuple:
        """Sent to every part without the search section, which only the driver reads."""
        fields = (self.field, self.sizes, self.shares, self.limit, self.by_tokens, self.seed)
        return (MixturePlan, (*fields, {}, self.min_head))

    def chosen(self, pool: Pool) -> np.ndarray:
        """The selection over the gathered heads: each group's walk, then the top-up."""
        taken = [walk.taken(pool.tokens) for walk in self.walks(pool)]
        return np.concatenate(taken) if taken else np.zeros(0, np.int64)


def mixture_plan(
    sizes: GroupSizes,
    field: str,
    weights: dict[str, float],
    budget: Budget,
    seed: int,
    search: dict,
) -> MixturePlan:
    """The plan for `weights`: each group's water-filled share of the budget (groups with no
    document in the pool get none)."""
    w = np.array([max(0.0, float(weights.get(g, 0.0))) for g in sizes.groups])
    held = sizes.tokens if budget.by_tokens else sizes.docs
    shares = water_fill(budget.limit, w, held.astype(np.int64)) if len(w) else []
    shares_ = tuple(int(s) for s in shares)
    return MixturePlan(field, sizes, shares_, budget.limit, budget.by_tokens, seed, search)


def top_up_order(pool: Pool, seed: int) -> np.ndarray:
    """Every document in the top-up's seeded order: random keys mixed with the seed."""
    return random_order(pool.random_key ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))


def sample_by_weights(
    pool: Pool, groups_field: str, weights: dict[str, float], budget: Budget, seed: int = 0
) -> np.ndarray:
    """Pool indices sampled from the groups in proportion to `weights`, to the exact budget, on
    a pool held whole: MixturePlan's walks.

    Each group is read in its seeded random order (`pool.random_key`). docs: group g gets
    apportion(docs, w)_g documents; tokens: group g is filled (keep each document that still
    fits) up to its apportioned share of the tokens, then the tokens left over go to the
    remaining documents in random order, so the total never exceeds the budget. A group that
    runs out gives everything it has and the rest is shared again over the groups left, in
    proportion to their weights (groups of weight 0 only once all others are exhausted).
    `seed` mixes the key order of the leftover pass.
    """
    sizes = GroupSizes.of_counts(*group_counts(pool, groups_field))
    return mixture_plan(sizes, groups_field, weights, budget, seed, {}).chosen(pool)
