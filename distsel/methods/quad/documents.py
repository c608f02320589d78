"""Quad's documents on the cluster: every per-document array the bandit reads or changes, held by
shard actors, so that the driver holds per-arm counts and the scored draws, never the pool.

The parts are cut into S shards of consecutive parts (a shard's documents are a run of pool
indices; S = ceil(documents / SHARD_DOCS), at most one per CPU). Each shard is loaded once by an
actor (num_cpus 0: it answers between rounds while the scorer holds the CPUs) that keeps, per
document: its cluster, seeded random key and tokens; with an influence model, its standardised
embedding and covariates and its classifier score standardised over the pool; and the bandit's
state: scored (with the score), taken, the model's estimate and the value v
(distsel.methods.quad.predicted).

What the bandit asks, the shards answer from their documents and the driver merges:
- the best documents of each arm (or of the pool) by a ranking, eligible by the bandit's state:
  each shard sends the head of its own ranking, (1.25 · its share of the arm + 1) documents,
  and a shard whose whole head the merge took, with more left, sends one twice as long, until
  none does (so the merge equals the ranking of the pool held whole);
- the fill under a token budget, walked over such heads; a shard is short when the tokens left
  after its last sent document are at least its fewest tokens left out (as distsel.core.
  candidates' walks);
- θ, the value that would complete the budget: a search over the order-preserving 64-bit
  integers of the values, 255 cut points a call, each shard counting its untaken documents
  (and their tokens) at or above each, so 8 calls find the exact value;
- the mean and squared deviations of each feature column (combined in shard order by Chan et
  al.'s pairwise update), for the pool-wide standardisation of the model's features;
- the features of the rows the model fits on; a fitted model's parameters, after which each
  shard predicts its own documents (distsel.algorithms.influence_model);
- the texts of the draws, read from the parts.

Rankings are by (primary, descending; then the random key; then the pool index): the arm's
value order (its random order while every value is 0), the fill's bound, the audit's value of
information (ties by index).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distsel.algorithms.bandit import document_values, fill_bound, information_value
from distsel.algorithms.influence_model import InfluenceModel
from distsel.algorithms.similarity import cosine_scores
from distsel.core import layout
from distsel.core.executor import ActorGroup, LocalExecutor, current
from distsel.core.pool import part_columns, part_embeddings
from distsel.core.storage import Store

SHARD_DOCS = 100_000  # documents a shard holds at most, where the CPUs allow: 154 MB at d = 384
HEAD_MARGIN = 1.25
GROWTH = 2
COVARIATES = 3  # log(1 + tokens), the best cosine to the targets, the classifier score
CUTS = 255  # cut points per call of θ's search: 8 bits of the 64 a call
SIGN_FLIP = np.int64(0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class Found:
    """Documents a query returned, in its order: pool indices and their columns."""

    rows: np.ndarray
    values: np.ndarray
    estimates: np.ndarray
    classifier: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def first(self, count: int) -> Found:
        return Found(*(column[:count] for column in self.columns()))

    def take(self, positions: np.ndarray) -> Found:
        return Found(*(column[positions] for column in self.columns()))

    def split(self, bounds: np.ndarray) -> list[Found]:
        """Consecutive pieces, the i-th from bounds[i] to bounds[i + 1]."""
        cuts = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return [Found(*(column[cut] for column in self.columns())) for cut in cuts]

    @staticmethod
    def concatenated(pieces: list[Found]) -> Found:
        if not pieces:
            return Found(*(np.zeros(0, t) for t in (np.int64, float, float, float, np.int64)))
        return Found(
            *(
                np.concatenate(columns)
                for columns in zip(*(p.columns() for p in pieces), strict=True)
            )
        )

    def columns(self) -> tuple[np.ndarray, ...]:
        return (self.rows, self.values, self.estimates, self.classifier, self.tokens)


@dataclass
class _Heads:
    """A shard's answer to a ranking query: per group asked, its head (documents in the
    ranking's order, `starts` cutting them by group), what it left out and the fewest tokens of
    those left out."""

    found: Found
    primary: np.ndarray
    secondary: np.ndarray
    starts: np.ndarray
    more: np.ndarray
    left_out_min: np.ndarray


def order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the float64 `values` (NaN as −inf)."""
    filled = np.where(np.isnan(values), -np.inf, values).astype(np.float64)
    bits = filled.view(np.int64)
    return np.where(bits < 0, bits ^ SIGN_FLIP, bits)


def key_value(key: int) -> float:
    """The float64 whose order key is `key`."""
    bits = np.int64(key)
    if bits < 0:
        bits = bits ^ SIGN_FLIP
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


class QuadDocuments:
    """The pool's documents for Quad, held by shard actors (see the module docstring). `bounds`
    are the shards' first pool indices (and the pool's size last); `arm_sizes` holds the
    documents of each (shard, arm)."""

    def __init__(self, actors: ActorGroup, bounds: np.ndarray, arm_sizes: np.ndarray) -> None:
        self.actors, self.bounds, self.arm_sizes = actors, bounds, arm_sizes
        self.with_model = False
        self.free_width = 0  # the model's covariates per document

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_store(
        cls,
        store: Store,
        parts: list[str],
        dropped: dict[str, np.ndarray],
        seed: int,
        arms: int,
        with_model: bool,
        shards: int | None = None,
    ) -> QuadDocuments:
        """Shards of `parts`' accepted documents (all but `dropped`), with the cluster stage's
        clusters and, `with_model`, the classifier's scores and the embeddings."""
        executor = current()
        if shards is None:  # one per SHARD_DOCS documents (rows before any left out), per CPU
            rows = sum(store.row_counts([layout.docs(part) for part in parts[:64]]))
            estimate = rows * len(parts) / max(min(len(parts), 64), 1)
            cpus = int(executor.totals().get("CPU", 1))
            shards = min(cpus, math.ceil(estimate / SHARD_DOCS))
        count = max(1, min(shards, len(parts)))
        cuts = np.linspace(0, len(parts), count + 1).round().astype(np.int64)
        actors = executor.actors(_QuadShard, (), size=count, num_cpus=0)
        none = np.zeros(0, np.int64)
        calls = []
        for shard in range(count):
            names = parts[cuts[shard] : cuts[shard + 1]]
            gone = [dropped.get(name, none) for name in names]
            calls.append((shard, arms, _StoreSource(store, names, gone, seed, with_model)))
        documents = cls(actors, *_placed(actors, actors.call("load", calls)))
        documents.with_model = with_model
        return documents

    @classmethod
    def from_arrays(
        cls,
        clusters: np.ndarray,
        random_key: np.ndarray,
        tokens: np.ndarray,
        arms: int,
        features: tuple[np.ndarray, np.ndarray] | None = None,
        classifier: np.ndarray | None = None,
        shards: int = 1,
    ) -> QuadDocuments:
        """Documents held in this process, cut into `shards` runs of pool indices; `features`
        (standardised embeddings and covariates, distsel.algorithms.influence_model.
        pool_features) as they are, `classifier` standardised over the pool."""
        bounds = np.linspace(0, len(clusters), shards + 1).round().astype(np.int64)
        actors = LocalExecutor().actors(_QuadShard, (), size=1)
        calls = []
        for shard in range(shards):
            cut = slice(int(bounds[shard]), int(bounds[shard + 1]))
            source = _ArraySource(
                clusters[cut],
                random_key[cut],
                tokens[cut],
                None if features is None else (features[0][cut], features[1][cut]),
                None if classifier is None else np.asarray(classifier, np.float64)[cut],
            )
            calls.append((shard, arms, source))
        documents = cls(actors, *_placed(actors, actors.call("load", calls)))
        if features is not None:
            documents.with_model, documents.free_width = True, features[1].shape[1]
            if classifier is not None:
                documents._each("standardize", "classifier", *documents._combined("classifier"))
        return documents

    def prepare_features(self, targets: np.ndarray) -> None:
        """The influence model's features, standardised over the pool: the embeddings, and the
        covariates log(1 + tokens), the best cosine to the target examples (RDS+'s max) and the
        classifier score; the classifier score alone too (the value's z)."""
        self._each("target_cosine", targets)
        self.free_width = COVARIATES
        for column in ("embeddings", "free", "classifier"):
            self._each("standardize", column, *self._combined(column))

    def _combined(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """The pool's mean and deviation of a column (per feature), from the shards'."""
        count, mean, squares = 0, 0.0, 0.0
        for n, part_mean, part_squares in self._each("moments", column):
            if n == 0:
                continue
            delta, total = part_mean - mean, count + n
            mean = mean + delta * n / total
            squares = squares + part_squares + delta**2 * count * n / total
            count = total
        spread = np.sqrt(squares / max(count, 1))
        return np.asarray(mean), np.where(spread > 0, spread, 1.0)

    def close(self) -> None:
        self.actors.close()

    # -- the pool as a whole ----------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def shards(self) -> int:
        return len(self.bounds) - 1

    def arms(self) -> np.ndarray:
        """Documents per arm."""
        return self.arm_sizes.sum(axis=0)

    def totals(self) -> tuple[int, int]:
        """The pool's documents and tokens."""
        return self._total("all")

    def values(self, rows: np.ndarray) -> np.ndarray:
        """The value v of pool rows."""
        return self._by_shard("column_rows", rows, "values")

    def key_xor(self) -> int:
        """The xor of every document's random key (a fingerprint of the pool's documents)."""
        return int(np.bitwise_xor.reduce(np.array(self._each("key_xor"), dtype=np.uint64)))

    def column(self, name: str) -> np.ndarray:
        """One per-document array in pool order, gathered (for inspection on small pools)."""
        return np.concatenate(self._each("column", name))

    # -- the model ----------------------------------------------------------------------------

    def features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's features of pool rows (float64): the standardised embeddings, and the
        covariates (one call to the shards)."""
        both = self._by_shard("features", rows)
        return both[:, self.free_width :], both[:, : self.free_width]

    def refit(
        self, parameters: dict[str, Any], center: float, spread: float, weight: float
    ) -> None:
        """Each shard's estimates (its scores where known, the model's prediction elsewhere) and
        values v = (estimate − μ̂)/σ̂ + w · z."""
        self._each("refit", parameters, center, spread, weight)

    def predict(self, sd: bool = False) -> np.ndarray:
        """The model's prediction (or its sd) of every document, gathered (small pools)."""
        return np.concatenate(self._each("predicted", sd))

    # -- the bandit's state -------------------------------------------------------------------

    def mark(
        self, rows: np.ndarray, *, taken: bool = False, scores: np.ndarray | None = None
    ) -> None:
        """Mark pool rows taken, or scored with `scores`."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        values = None if scores is None else np.asarray(scores, dtype=np.float64)
        calls = [
            (shard, local, taken, None if values is None else values[picked])
            for shard, (picked, local) in enumerate(self._split(rows))
        ]
        self.actors.call("mark", calls)

    def fewest_tokens(self, eligible: str) -> float:
        """The fewest tokens of an eligible document (inf: none)."""
        return min(self._each("fewest_tokens", eligible), default=math.inf)

    def cluster_counts(self, rows: np.ndarray, arms: int) -> np.ndarray:
        found = self._by_shard("clusters", rows)
        return np.bincount(found.astype(np.int64), minlength=arms)

    def write_chosen(self, rows: np.ndarray) -> None:
        """Each part's rows among pool rows `rows` (layout.quad_chosen), written by the shards
        (an empty file for a part with none, so that no file of an earlier run remains)."""
        self._by_shard("write_chosen", np.unique(np.asarray(rows, dtype=np.int64)))

    def texts(self, groups: list[np.ndarray]) -> list[list[str]]:
        """The texts of groups of pool rows, read by the shards from the parts."""
        flat = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        texts = self._by_shard("texts", flat, kind=object)
        bounds = np.cumsum([0] + [len(g) for g in groups])
        return [list(texts[bounds[i] : bounds[i + 1]]) for i in range(len(groups))]

    # -- rankings -----------------------------------------------------------------------------

    def best_of_arms(
        self, arms: np.ndarray, counts: np.ndarray, eligible: str, threshold: float = -math.inf
    ) -> tuple[list[Found], np.ndarray]:
        """Each arm's first `counts` eligible documents (value ≥ threshold) by value, then
        random key, and each arm's eligible documents in all."""
        arms = np.asarray(arms, dtype=np.int64)
        share = self.arm_sizes[:, arms] / np.maximum(self.arm_sizes[:, arms].sum(axis=0), 1)
        heads = lambda lengths: self._each("heads", eligible, arms, lengths, threshold)  # noqa: E731
        return self._top(heads, share, np.asarray(counts, dtype=np.int64))

    def best_for_audit(
        self, width: int, parameters: dict[str, Any], threshold: float, spread: float
    ) -> Found:
        """The `width` unscored, untaken documents of highest value of information against θ
        (ties by pool index)."""
        share = self._shares()
        heads = lambda lengths: self._each("audit_heads", lengths, parameters, threshold, spread)  # noqa: E731
        return self._top(heads, share, np.array([width]))[0][0]

    def fill(
        self,
        parameters: dict[str, Any] | None,
        spread: float,
        confidence: float,
        docs_left: int | None,
        tokens_left: int,
    ) -> Found:
        """The untaken documents the fill takes, by the bound v − κ·sd(ŷ)/σ̂ (v for the scored):
        the first `docs_left`, or each that still fits `tokens_left` tokens, in that order."""
        share = self._shares()
        heads = lambda lengths: self._each("fill_heads", lengths, parameters, spread, confidence)  # noqa: E731
        if docs_left is not None:
            return self._top(heads, share, np.array([max(docs_left, 0)]))[0][0]
        count, tokens = self._total("untaken")
        mean_tokens = max(tokens / max(count, 1), 1.0)
        lengths = np.ceil(HEAD_MARGIN * share * tokens_left / mean_tokens).astype(np.int64) + 1
        while True:
            answers = heads(lengths)
            merged = _Merged(answers, 1)
            tokens = merged.found.tokens
            fits = _fits(tokens, tokens_left)
            left = tokens_left - np.cumsum(np.where(fits, tokens, 0))
            last = np.full(len(answers), -1, dtype=np.int64)
            np.maximum.at(last, merged.shard, np.arange(len(merged.shard)))
            left_after = np.where(
                last >= 0, left[np.maximum(last, 0)] if len(left) else 0, tokens_left
            )
            more = np.array([answer.more[0] for answer in answers])
            fewest = np.array([answer.left_out_min[0] for answer in answers])
            short = (more > 0) & (left_after >= fewest)
            if not short.any():
                return merged.found.take(np.flatnonzero(fits))
            lengths[short] = lengths[short] * GROWTH + 1

    def threshold(self, docs_left: int | None, tokens_left: int) -> float:
        """θ: the value of the untaken document that completes the budget when untaken
        documents are taken by value from the best down (−inf when they would not fill it):
        the largest value with at least `docs_left` documents (or `tokens_left` tokens) at or
        above it."""
        by_tokens = docs_left is None
        need = tokens_left if by_tokens else docs_left
        count, tokens = self._total("untaken")
        if count == 0:
            return -math.inf
        if need <= 0:  # the walk's rule: the last document (docs), the first (tokens)
            ranges = [r for r in self._each("value_range") if r is not None]
            return key_value(max(r[1] for r in ranges) if by_tokens else min(r[0] for r in ranges))
        if (tokens if by_tokens else count) < need:
            return -math.inf
        low, high = -(2**63), 2**63 - 1
        while low < high:
            step = (high - low) / (CUTS + 1)
            cuts = sorted({low + max(1, int(step * (i + 1))) for i in range(CUTS)} - {low})
            cuts = [c for c in cuts if c <= high]
            at_least = self._at_least(np.array(cuts, dtype=np.int64), by_tokens)
            reached = [c for c, n in zip(cuts, at_least, strict=True) if n >= need]
            above = [c for c, n in zip(cuts, at_least, strict=True) if n < need]
            low = max(reached, default=low)
            high = min(above, default=high + 1) - 1
        return key_value(low)

    # -- plumbing -----------------------------------------------------------------------------

    def _shares(self) -> np.ndarray:
        sizes = np.diff(self.bounds).astype(np.float64)[:, None]
        return sizes / max(float(sizes.sum()), 1.0)

    def _top(
        self, heads: Callable[[np.ndarray], list[_Heads]], share: np.ndarray, counts: np.ndarray
    ) -> tuple[list[Found], np.ndarray]:
        """Per group, the first `counts` documents of the merged heads, growing a shard's head
        where the merge took all it sent and it left some out; each group's eligible documents
        in all."""
        lengths = np.ceil(HEAD_MARGIN * share * counts[None, :]).astype(np.int64) + 1
        while True:
            answers = heads(lengths)
            merged = _Merged(answers, len(counts))
            taken = merged.rank < counts[merged.group]
            sent = np.array([np.diff(answer.starts) for answer in answers])
            more = np.array([answer.more for answer in answers])
            took = merged.per_shard_and_group(taken)
            short = (more > 0) & (took == sent)
            if not short.any():
                bounds = np.searchsorted(merged.group[taken], np.arange(len(counts) + 1))
                chosen = merged.found.take(np.flatnonzero(taken))
                return chosen.split(bounds), (sent + more).sum(axis=0)
            lengths[short] = lengths[short] * GROWTH + 1

    def _at_least(self, cuts: np.ndarray, by_tokens: bool) -> np.ndarray:
        return sum(self._each("at_least", cuts, by_tokens))

    def _total(self, eligible: str) -> tuple[int, int]:
        answers = self._each("total", eligible)
        return sum(a[0] for a in answers), sum(a[1] for a in answers)

    def _each(self, method: str, *args: object) -> list:
        return self.actors.call(method, [(shard, *args) for shard in range(self.shards)])

    def _by_shard(
        self, method: str, rows: np.ndarray, *args: object, kind: Any = None
    ) -> np.ndarray:
        """`method` on each shard's share of `rows` (pool indices), stacked in their order."""
        rows = np.asarray(rows, dtype=np.int64)
        split = self._split(rows)
        calls = [(shard, local, *args) for shard, (_, local) in enumerate(split)]
        answers = self.actors.call(method, calls)
        stacked = np.concatenate(answers) if answers else np.zeros(0)
        if kind is object:
            stacked = np.asarray(stacked, dtype=object)
        positions = np.concatenate([picked for picked, _ in split])
        restore = np.empty_like(positions)
        restore[positions] = np.arange(len(positions))
        return stacked[restore]

    def _split(self, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard (every one: an actor answers the calls given in shard order), the positions
        in `rows` of its rows, and those rows as its local indices."""
        order = np.argsort(rows, kind="stable")
        cuts = np.searchsorted(rows[order], self.bounds)
        split = []
        for shard in range(self.shards):
            picked = order[cuts[shard] : cuts[shard + 1]]
            split.append((picked, rows[picked] - self.bounds[shard]))
        return split


def _placed(
    actors: ActorGroup, loaded: list[tuple[np.ndarray, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Each shard told its first pool index; the shards' bounds and documents per arm."""
    sizes = np.array([size for _, size in loaded], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    actors.call("place", [(shard, int(bounds[shard])) for shard in range(len(loaded))])
    return bounds, np.array([arm_sizes for arm_sizes, _ in loaded])


class _Merged:
    """The shards' heads of every group merged into one ranking's order per group: the documents
    (`found`), and per document its group, its rank in the group and its shard."""

    def __init__(self, answers: list[_Heads], groups: int) -> None:
        self.groups, self.shards = groups, len(answers)
        group = np.concatenate([_group_ids(a.starts) for a in answers] or [np.zeros(0, np.int64)])
        shard = np.concatenate(
            [np.full(len(a.primary), s, dtype=np.int64) for s, a in enumerate(answers)]
            or [np.zeros(0, np.int64)]
        )
        found = Found.concatenated([a.found for a in answers])
        primary = np.concatenate([a.primary for a in answers] or [np.zeros(0)])
        secondary = np.concatenate([a.secondary for a in answers] or [np.zeros(0, np.uint64)])
        order = np.lexsort((found.rows, secondary, -primary, group))
        self.found, self.group, self.shard = found.take(order), group[order], shard[order]
        starts = np.searchsorted(self.group, np.arange(groups + 1))
        self.rank = np.arange(len(order)) - starts[self.group]

    def per_shard_and_group(self, mask: np.ndarray) -> np.ndarray:
        """How many documents of each (shard, group) `mask` marks."""
        cells = self.shard[mask] * self.groups + self.group[mask]
        counts = np.bincount(cells, minlength=self.shards * self.groups)
        return counts.reshape(self.shards, self.groups)


def _group_ids(starts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(starts) - 1, dtype=np.int64), np.diff(starts))


def _fits(tokens: np.ndarray, budget: int) -> np.ndarray:
    """fill_budget's rule by tokens: each document in order that still fits is taken."""
    taken, left = np.zeros(len(tokens), dtype=bool), budget
    for position, count in enumerate(tokens.tolist()):
        if count <= left:
            taken[position], left = True, left - count
    return taken


# -- the shards --------------------------------------------------------------------------------


@dataclass
class _StoreSource:
    """A shard's parts, read where the shard lives."""

    store: Store
    parts: list[str]
    dropped: list[np.ndarray]
    seed: int
    with_model: bool

    def load(self) -> dict[str, Any]:
        stages = ["cluster", "classifier"] if self.with_model else ["cluster"]
        columns = [
            part_columns(self.store, part, stages, [], self.seed, gone).pool
            for part, gone in zip(self.parts, self.dropped, strict=True)
        ]
        held = {
            "cluster": _stack([c.scores["cluster"] for c in columns], np.int64),
            "random_key": _stack([c.random_key for c in columns], np.uint64),
            "tokens": _stack([c.tokens for c in columns], np.int64),
            "part_of": _stack([np.full(len(c), i) for i, c in enumerate(columns)], np.int64),
            "row": _stack([c.row_index for c in columns], np.int64),
        }
        if self.with_model:
            held["classifier"] = _stack([c.scores["classifier_score"] for c in columns], np.float64)
            vectors = [part_embeddings(self.store, c.parts[0], c.row_index) for c in columns]
            held["embeddings"] = (
                np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
            )
        return held

    def write_chosen(self, part: int, rows: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, rows.astype(np.int64), allow_pickle=False)
        self.store.write_bytes(layout.quad_chosen(self.parts[part]), buffer.getvalue())

    def texts(self, part: int, rows: np.ndarray) -> list[str]:
        column = self.store.read_table(layout.docs(self.parts[part]), columns=["text"]).column(
            "text"
        )
        return column.take(rows).to_pylist()


@dataclass
class _ArraySource:
    """A shard's documents given as arrays (features already standardised)."""

    clusters: np.ndarray
    random_key: np.ndarray
    tokens: np.ndarray
    features: tuple[np.ndarray, np.ndarray] | None
    classifier: np.ndarray | None

    def load(self) -> dict[str, Any]:
        held = {
            "cluster": np.asarray(self.clusters, np.int64),
            "random_key": np.asarray(self.random_key, np.uint64),
            "tokens": np.asarray(self.tokens, np.int64),
        }
        if self.features is not None:
            held["embeddings"], held["free"] = self.features
            size = len(self.clusters)
            held["classifier"] = np.zeros(size) if self.classifier is None else self.classifier
        return held

    def texts(self, part: int, rows: np.ndarray) -> list[str]:
        raise ValueError("documents given as arrays have no texts")


def _stack(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)


@dataclass
class _Shard:
    """One shard's documents (local indices: pool index − offset) and the bandit's state."""

    arms: int
    held: dict[str, Any]
    source: Any
    scored: np.ndarray = field(init=False)
    taken: np.ndarray = field(init=False)
    known: np.ndarray = field(init=False)
    estimates: np.ndarray = field(init=False)
    values: np.ndarray = field(init=False)
    model: InfluenceModel | None = None
    sorted_untaken: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        size = len(self.held["cluster"])
        self.scored = np.zeros(size, dtype=bool)
        self.taken = np.zeros(size, dtype=bool)
        self.known = np.zeros(size)
        self.estimates = np.zeros(size)
        self.values = np.zeros(size)
        self.index = np.arange(size, dtype=np.int64)  # pool indices, once placed
        self.build_model()

    def build_model(self) -> None:
        """The model over this shard's features, once it has them."""
        if "embeddings" in self.held and "free" in self.held:
            self.model = InfluenceModel((self.held["embeddings"], self.held["free"]))

    def eligible(self, kind: str) -> np.ndarray:
        if kind == "fresh":
            return ~self.scored & ~self.taken
        if kind == "untaken":
            return ~self.taken
        return np.ones(len(self.taken), dtype=bool)

    def found(self, local: np.ndarray) -> Found:
        return Found(
            self.index[local],
            self.values[local],
            self.estimates[local],
            self.held["classifier"][local] if "classifier" in self.held else np.zeros(len(local)),
            self.held["tokens"][local],
        )

    def heads(
        self,
        candidates: np.ndarray,
        primary: np.ndarray,
        groups: np.ndarray,
        lengths: np.ndarray,
        by_key: bool = True,
    ) -> _Heads:
        """Per group (0 … len(lengths) − 1; `groups` one per candidate), the first `lengths`
        candidates by primary (descending, NaN last), then random key (`by_key`), then index."""
        keys = (
            self.held["random_key"][candidates] if by_key else np.zeros(len(candidates), np.uint64)
        )
        primary = np.where(np.isnan(primary), -np.inf, primary)
        order = np.lexsort((candidates, keys, -primary, groups))
        candidates, primary, groups, keys = (
            candidates[order],
            primary[order],
            groups[order],
            keys[order],
        )
        counts = np.bincount(groups, minlength=len(lengths))
        starts = np.concatenate([[0], np.cumsum(counts)])
        rank = np.arange(len(candidates)) - starts[groups]
        sent = rank < lengths[groups]
        tokens = self.held["tokens"][candidates]
        left_out = np.full(len(lengths), np.inf)
        np.minimum.at(left_out, groups[~sent], tokens[~sent].astype(np.float64))
        sent_counts = np.minimum(counts, lengths)
        return _Heads(
            self.found(candidates[sent]),
            primary[sent],
            keys[sent],
            np.concatenate([[0], np.cumsum(sent_counts)]),
            counts - sent_counts,
            left_out,
        )


class _QuadShard:
    """The shards' actor: in a Ray actor, one shard; in-process, all of them."""

    def __init__(self) -> None:
        self.held: dict[int, _Shard] = {}

    def load(self, shard: int, arms: int, source: Any) -> tuple[np.ndarray, int]:
        """Read the shard's documents; their count per arm, and in all."""
        held = source.load()
        self.held[shard] = _Shard(arms, held, source)
        return np.bincount(held["cluster"], minlength=arms)[:arms], len(held["cluster"])

    def place(self, shard: int, offset: int) -> None:
        documents = self.held[shard]
        documents.index = offset + np.arange(len(documents.taken), dtype=np.int64)

    # features

    def target_cosine(self, shard: int, targets: np.ndarray) -> None:
        held = self.held[shard].held
        matrix = held["embeddings"]
        cosine = (
            cosine_scores(matrix, targets.astype(matrix.dtype), "max")
            if len(matrix)
            else np.zeros(0)
        )
        held["free"] = np.column_stack(
            [np.log1p(held["tokens"].astype(np.float64)), cosine, held["classifier"]]
        )

    def moments(self, shard: int, column: str) -> tuple[int, np.ndarray, np.ndarray]:
        matrix = np.asarray(self.held[shard].held[column], dtype=np.float64)
        if not len(matrix):
            return 0, np.zeros(matrix.shape[1:]), np.zeros(matrix.shape[1:])
        mean = matrix.mean(axis=0)
        return len(matrix), mean, ((matrix - mean) ** 2).sum(axis=0)

    def standardize(self, shard: int, column: str, mean: np.ndarray, spread: np.ndarray) -> None:
        documents = self.held[shard]
        matrix = np.asarray(documents.held[column], dtype=np.float64)
        standard = (matrix - mean) / spread
        documents.held[column] = standard if column == "classifier" else standard.astype(np.float32)
        documents.build_model()

    def features(self, shard: int, rows: np.ndarray) -> np.ndarray:
        """The covariates, then the embeddings, of the shard's rows: one row each."""
        held = self.held[shard].held
        return np.column_stack([held["free"][rows], held["embeddings"][rows]]).astype(np.float64)

    def column(self, shard: int, name: str) -> np.ndarray:
        documents = self.held[shard]
        found = getattr(documents, name, None)
        return found if isinstance(found, np.ndarray) else documents.held[name]

    def column_rows(self, shard: int, rows: np.ndarray, name: str) -> np.ndarray:
        return self.column(shard, name)[rows]

    def key_xor(self, shard: int) -> int:
        keys = self.held[shard].held["random_key"]
        return int(np.bitwise_xor.reduce(keys)) if len(keys) else 0

    def clusters(self, shard: int, rows: np.ndarray) -> np.ndarray:
        return self.held[shard].held["cluster"][rows]

    def write_chosen(self, shard: int, rows: np.ndarray) -> np.ndarray:
        documents = self.held[shard]
        part_of, row = documents.held["part_of"][rows], documents.held["row"][rows]
        for part in range(len(documents.source.parts)):
            documents.source.write_chosen(part, np.sort(row[part_of == part]))
        return np.zeros(len(rows))

    def texts(self, shard: int, rows: np.ndarray) -> np.ndarray:
        documents = self.held[shard]
        part_of, row = documents.held["part_of"][rows], documents.held["row"][rows]
        texts = np.empty(len(rows), dtype=object)
        for part in np.unique(part_of):
            at = np.flatnonzero(part_of == part)
            texts[at] = documents.source.texts(int(part), row[at])
        return texts

    # the model

    def refit(
        self, shard: int, parameters: dict[str, Any], center: float, spread: float, weight: float
    ) -> None:
        documents = self.held[shard]
        documents.model.with_parameters(parameters)
        estimates = documents.model.predict()
        estimates[documents.scored] = documents.known[documents.scored]
        classifier = documents.held["classifier"]
        documents.estimates = estimates
        documents.values = document_values(estimates, center, spread, classifier, weight)
        documents.sorted_untaken = None

    def predicted(self, shard: int, sd: bool) -> np.ndarray:
        model = self.held[shard].model
        return model.predict_sd() if sd else model.predict()

    # the state

    def mark(self, shard: int, rows: np.ndarray, taken: bool, scores: np.ndarray | None) -> None:
        documents = self.held[shard]
        if taken:
            documents.taken[rows] = True
        if scores is not None:
            documents.scored[rows] = True
            documents.known[rows] = scores
        documents.sorted_untaken = None

    def fewest_tokens(self, shard: int, eligible: str) -> float:
        documents = self.held[shard]
        tokens = documents.held["tokens"][documents.eligible(eligible)]
        return float(tokens.min()) if len(tokens) else math.inf

    def total(self, shard: int, eligible: str) -> tuple[int, int]:
        documents = self.held[shard]
        mask = documents.eligible(eligible)
        return int(mask.sum()), int(documents.held["tokens"][mask].sum())

    def value_range(self, shard: int) -> tuple[int, int] | None:
        keys = self._sorted_untaken(shard)[0]
        return (int(keys[0]), int(keys[-1])) if len(keys) else None

    def at_least(self, shard: int, cuts: np.ndarray, by_tokens: bool) -> np.ndarray:
        """Per cut, the untaken documents (or their tokens) whose value's key is ≥ it."""
        keys, tokens_above = self._sorted_untaken(shard)
        positions = np.searchsorted(keys, cuts, side="left")
        if by_tokens:
            return tokens_above[positions]
        return len(keys) - positions

    def _sorted_untaken(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """The untaken documents' value keys, ascending, and the tokens at or above each
        position (one more entry: 0)."""
        documents = self.held[shard]
        if documents.sorted_untaken is None:
            untaken = ~documents.taken
            keys = order_keys(documents.values[untaken])
            order = np.argsort(keys, kind="stable")
            tokens = documents.held["tokens"][untaken][order]
            above = np.concatenate([np.cumsum(tokens[::-1])[::-1], [0]])
            documents.sorted_untaken = (keys[order], above)
        return documents.sorted_untaken

    # rankings

    def heads(
        self, shard: int, eligible: str, arms: np.ndarray, lengths: np.ndarray, threshold: float
    ) -> _Heads:
        """Per arm asked, its eligible documents with value ≥ threshold, best first."""
        documents = self.held[shard]
        position = np.full(documents.arms + 1, -1, dtype=np.int64)
        position[arms] = np.arange(len(arms))
        mask = documents.eligible(eligible) & (documents.values >= threshold)
        candidates = np.flatnonzero(mask & (position[documents.held["cluster"]] >= 0))
        groups = position[documents.held["cluster"][candidates]]
        return documents.heads(candidates, documents.values[candidates], groups, lengths[shard])

    def audit_heads(
        self,
        shard: int,
        lengths: np.ndarray,
        parameters: dict[str, Any],
        threshold: float,
        spread: float,
    ) -> _Heads:
        """The unscored, untaken documents by value of information against θ, ties by index."""
        documents = self.held[shard]
        candidates = np.flatnonzero(documents.eligible("fresh"))
        model = documents.model.with_parameters(parameters)
        sd = model.predict_sd(candidates) / spread
        noise = model.noise / spread**2
        gain = information_value(documents.values[candidates], sd, noise, threshold)
        groups = np.zeros(len(candidates), dtype=np.int64)
        return documents.heads(candidates, gain, groups, lengths[shard], by_key=False)

    def fill_heads(
        self,
        shard: int,
        lengths: np.ndarray,
        parameters: dict[str, Any] | None,
        spread: float,
        confidence: float,
    ) -> _Heads:
        documents = self.held[shard]
        candidates = np.flatnonzero(~documents.taken)
        values = documents.values[candidates]
        if parameters is None or documents.model is None or confidence == 0:
            bound = values
        else:
            sd = documents.model.with_parameters(parameters).predict_sd(candidates) / spread
            bound = fill_bound(values, sd, documents.scored[candidates], confidence)
        groups = np.zeros(len(candidates), dtype=np.int64)
        return documents.heads(candidates, bound, groups, lengths[shard])
