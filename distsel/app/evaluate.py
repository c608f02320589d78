"""How good is a selection: KL reduction and bigram cross-entropy towards the target, group and
label shares.

KL reduction is DSIR's data metric (Xie et al. 2023): KL(target ‖ pool) − KL(target ‖ selection)
over hashed n-gram distributions; positive means the selection looks more like the target.

Cross-entropy reduction is the target examples' cross-entropy (nats/token) under a smoothed word
bigram language model fitted on a random selection of the same size, minus the same under one
fitted on the selection (`ngram_lm_section`); positive means the selection predicts the target
better. A small LM trained on little data behaves mostly like a smoothed bigram model, so this
follows its target loss more closely than a distance between bags of n-grams. The target examples
are the ones the target-aware selectors fit on, so neither figure is a held-out measurement.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from distsel.algorithms.dsir import hashed_ngrams, kl_divergence, total_ngram_counts
from distsel.core import layout
from distsel.core.candidates import gather_ranked
from distsel.core.config import Budget, Config
from distsel.core.executor import current
from distsel.core.pool import Pool
from distsel.core.records import read_texts
from distsel.core.samplers import random_order, random_ranking
from distsel.core.storage import Store

if TYPE_CHECKING:
    from distsel.core.stage import Stage

log = logging.getLogger("distsel")

# 2^18 hashed words: the tokens of English text are nearly all in its ~10^5 most common types, and
# among 10^4 of those fewer than 4% share a bucket with another; the unigram vector (2 MiB of
# int64) is what each part sends back. 2^20 would cost 8 MiB a part for little change.
LM_BUCKETS = 1 << 18
# μ of the Dirichlet prior: the pseudo-counts a context's distribution borrows from the unigram
# model. Fitted on 5·10^4 and 2·10^6 tokens of the shared corpus, μ = 200 came within 0.02
# nats/token of the best μ on held-out corpus text and within 0.25 on the two target sets (whose
# best μ lay between 500 and 10^4); μ = 2 lost 1–1.5 nats/token (unseen pairs after frequent
# contexts get too little mass).
LM_PRIOR = 200.0


def evaluation(
    config: Config, store: Store, pool: Pool, chosen: np.ndarray, stages: Iterable[Stage]
) -> dict[str, Any]:
    """The manifest's evaluation: KL, bigram cross-entropy and label shares. What a stage
    already computed is reused (its `evaluation_inputs`, e.g. `pool_counts`)."""
    reused: dict[str, Any] = {}
    for stage in stages:
        reused.update(stage.evaluation_inputs())
    kl, ngram_lm = target_sections(config, store, pool, chosen, reused.get("pool_counts"))
    return {"kl": kl, "ngram_lm": ngram_lm, "labels": label_shares(config, pool, chosen)}


def target_sections(
    config: Config,
    store: Store,
    pool: Pool,
    chosen: np.ndarray,
    pool_counts: np.ndarray | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """`kl_section` and `ngram_lm_section`, when targets are given, from one read of the
    parts' texts (`pool_text_counts`); DSIR's pool counts are counted only when not given."""
    if not config.target.paths:
        return None, None
    target = config.target
    texts = read_texts(target.paths, target.text_field, target.storage_options)
    query = BigramQuery.of(texts, LM_BUCKETS)
    selected = rows_per_part(pool, chosen)
    sample = random_baseline_rows(config, store, pool, chosen)
    options = config.stage_options("dsir")
    ngram_sets = (selected,) if pool_counts is not None else (selected, None)
    bigrams, ngrams = pool_text_counts(
        store,
        pool.parts,
        query,
        row_sets=(pool.accepted_rows(), sample, selected),
        ngrams=NgramJob(options.num_buckets, options.ngrams, ngram_sets),
    )
    kl = kl_section(
        total_ngram_counts(texts, options.num_buckets, options.ngrams),
        ngrams[1] if pool_counts is None else pool_counts,
        ngrams[0],
        options.ngrams,
    )
    return kl, ngram_lm_section(texts, query, *bigrams)


def kl_section(
    target: np.ndarray, pool: np.ndarray, selection: np.ndarray, ngrams: int
) -> dict[str, Any]:
    """KL(target‖pool), KL(target‖selection) and their difference, over hashed n-gram counts."""
    to_pool, to_selection = kl_divergence(target, pool), kl_divergence(target, selection)
    return {
        "kl_target_pool": round(to_pool, 6),
        "kl_target_selection": round(to_selection, 6),
        "kl_reduction": round(to_pool - to_selection, 6),
        "buckets": len(target),
        "ngrams": ngrams,
    }


def label_shares(config: Config, pool: Pool, chosen: np.ndarray) -> dict[str, Any] | None:
    """Share of the pool and of the selection carrying each value of `input.label_field`."""
    counts = pool.counts(config.input.label_field, chosen)
    if counts is None:
        return None
    pool_total, chosen_total = max(pool.totals.docs, 1), max(len(chosen), 1)
    return {
        "field": counts["field"],
        "pool": {k: round(v / pool_total, 6) for k, v in counts["pool"].items()},
        "selected": {k: round(v / chosen_total, 6) for k, v in counts["selected"].items()},
    }


# ---------------------------------------------------------------------------------------------
# Bigram language model over hashed words


@dataclasses.dataclass(frozen=True)
class BigramQuery:
    """The hashed words and word pairs of the texts to be scored: what counts a model needs.

    `contexts` are the distinct buckets v that precede a token, `pairs` the distinct keys
    v·V + w of adjacent buckets (both sorted); V = `buckets`. Counting c(v, w) exactly for these
    pairs only, rather than for all pairs in a hashed bigram table, keeps the counts a fixed size
    (that of the target) without collisions between pairs, and so the model normalised.
    """

    buckets: int
    contexts: np.ndarray
    pairs: np.ndarray

    @classmethod
    def of(cls, texts: list[str], buckets: int = LM_BUCKETS) -> BigramQuery:
        context, word = _adjacent_words(texts, buckets)
        return cls(buckets, np.unique(context), np.unique(context * buckets + word))

    @classmethod
    def everything(cls, buckets: int) -> BigramQuery:
        """Every context and every pair: the whole model (V² pairs, so for small V only)."""
        return cls(buckets, np.arange(buckets), np.arange(buckets * buckets))


@dataclasses.dataclass(frozen=True)
class BigramCounts:
    """Counts of a collection over V hashed words: c(w) for every w; c(v) and c(v, w) for the
    contexts and pairs of a `BigramQuery` (aligned with its arrays). Counts of two collections
    add up to the counts of their union."""

    unigrams: np.ndarray
    contexts: np.ndarray
    pairs: np.ndarray

    @classmethod
    def zeros(cls, query: BigramQuery) -> BigramCounts:
        return cls(
            np.zeros(query.buckets, dtype=np.int64),
            np.zeros(len(query.contexts), dtype=np.int64),
            np.zeros(len(query.pairs), dtype=np.int64),
        )

    def __add__(self, other: BigramCounts) -> BigramCounts:
        return BigramCounts(
            self.unigrams + other.unigrams,
            self.contexts + other.contexts,
            self.pairs + other.pairs,
        )


def _words(texts: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(document index, word bucket) of every token, in document and reading order: DSIR's
    tokens (lower-cased, `\\w+|[^\\w\\s]+`) and its unigram buckets, ngram_hash(token) mod V."""
    return hashed_ngrams(texts, buckets, 1)


def _adjacent(doc: np.ndarray, word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    same_doc = doc[1:] == doc[:-1]
    return word[:-1][same_doc], word[1:][same_doc]


def _adjacent_words(texts: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) for every two adjacent tokens of one document, as word buckets."""
    return _adjacent(*_words(texts, buckets))


def _count_in(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How often each of the sorted `keys` occurs in `values`."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    index = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return np.bincount(index[keys[index] == values], minlength=len(keys)).astype(np.int64)


def bigram_counts(texts: list[str], query: BigramQuery) -> BigramCounts:
    """c(w) = #tokens in bucket w; c(v, w) = #adjacent tokens (v, w) within one document, for the
    query's pairs; c(v) = Σ_w c(v, w), for the query's contexts."""
    return _counts(*_words(texts, query.buckets), query)


def _counts(doc: np.ndarray, word: np.ndarray, query: BigramQuery) -> BigramCounts:
    context, following = _adjacent(doc, word)
    return BigramCounts(
        np.bincount(word, minlength=query.buckets).astype(np.int64),
        _count_in(context, query.contexts),
        _count_in(context * query.buckets + following, query.pairs),
    )


def unigram_log_prob(counts: BigramCounts, word: np.ndarray) -> np.ndarray:
    """log P_uni(w), Witten–Bell interpolation of the counts with the uniform distribution:

        P_uni(w) = (c(w) + T / V) / (N + T),   N = Σ_w c(w),  T = #{w : c(w) > 0}

    (Witten and Bell 1991; Chen and Goodman 1998, §2.4): the mass of unseen buckets, T / (N + T),
    grows with the variety seen, which needs no constant tuned to the collection's size. The
    uniform distribution 1/V when there are no counts.
    """
    buckets = len(counts.unigrams)
    total, types = float(counts.unigrams.sum()), float(np.count_nonzero(counts.unigrams))
    if total == 0:
        return np.full(len(word), -np.log(buckets))
    return np.log((counts.unigrams[word] + types / buckets) / (total + types))


def bigram_log_prob(
    counts: BigramCounts,
    query: BigramQuery,
    context: np.ndarray,
    word: np.ndarray,
    prior: float = LM_PRIOR,
) -> np.ndarray:
    """log P(w | v) of a bigram model with a Dirichlet prior centred on the unigram model:

        P(w | v) = (c(v, w) + μ P_uni(w)) / (c(v) + μ)

    (MacKay and Peto 1995, "A hierarchical Dirichlet language model"; Dirichlet-prior smoothing
    in Zhai and Lafferty 2001), μ = `prior` > 0. It is an interpolation, λ_v c(v, w)/c(v) +
    (1 − λ_v) P_uni(w) with λ_v = c(v) / (c(v) + μ): often-seen contexts trust their counts,
    rare ones the unigram model. It sums to 1 over the V words for every v, since
    c(v) = Σ_w c(v, w), and needs only counts that add up across parts (absolute discounting and
    Witten–Bell also need N1+(v), the number of distinct words after v, which does not add up).
    A context v < 0 (the start of a document) gives P_uni(w). Every (v, w) with v ≥ 0 must be a
    pair of the query.
    """
    if prior <= 0:
        raise ValueError(f"prior must be positive, got {prior}")
    context, word = np.asarray(context, dtype=np.int64), np.asarray(word, dtype=np.int64)
    log_prob = unigram_log_prob(counts, word)
    inside = context >= 0
    keys = context[inside] * query.buckets + word[inside]
    pair = np.searchsorted(query.pairs, keys)
    where = np.searchsorted(query.contexts, context[inside])
    known = (pair < len(query.pairs)) & (where < len(query.contexts))
    if not known.all() or (query.pairs[pair] != keys).any():
        raise ValueError("bigram_log_prob: a pair outside the query")
    pair_count, context_count = counts.pairs[pair], counts.contexts[where]
    uni = np.exp(log_prob[inside])
    log_prob[inside] = np.log(pair_count + prior * uni) - np.log(context_count + prior)
    return log_prob


def cross_entropy(
    texts: list[str], counts: BigramCounts, query: BigramQuery, prior: float = LM_PRIOR
) -> float:
    """−(1/n) Σ_i log P(t_i | t_{i−1}) over the n tokens of the texts, in nats per token; the first
    token of each text by P_uni. `query` must be `BigramQuery.of(texts)` (or cover it)."""
    doc, word = _words(texts, query.buckets)
    if len(word) == 0:
        return 0.0
    context = np.full(len(word), -1, dtype=np.int64)
    same_doc = doc[1:] == doc[:-1]
    context[1:][same_doc] = word[:-1][same_doc]
    return float(-bigram_log_prob(counts, query, context, word, prior).mean())


@dataclasses.dataclass(frozen=True)
class NgramJob:
    """DSIR's hashed n-gram counts (`buckets`, n-grams up to `ngrams`) of sets of documents,
    counted in the same read as the bigram counts; `row_sets` as `pool_text_counts`'."""

    buckets: int
    ngrams: int
    row_sets: tuple[list[np.ndarray] | None, ...]


TextCounts = tuple[list[BigramCounts], list[np.ndarray]]


def _part_text_counts(
    store: Store,
    folder: str,
    part: str,
    query: BigramQuery,
    subsets: tuple[np.ndarray | None, ...],
    ngrams: NgramJob | None,
    ngram_subsets: tuple[np.ndarray | None, ...],
) -> TextCounts:
    texts = store.read_table(f"{folder}/{part}", columns=["text"]).column("text").to_pylist()
    doc, word = _words(texts, query.buckets)
    bigrams = []
    for rows in subsets:
        keep = slice(None) if rows is None else np.isin(doc, rows)
        bigrams.append(_counts(doc[keep], word[keep], query))
    totals = []
    for rows in ngram_subsets:
        chosen = texts if rows is None else [texts[i] for i in rows]
        totals.append(total_ngram_counts(chosen, ngrams.buckets, ngrams.ngrams))
    return bigrams, totals


def pool_text_counts(
    store: Store,
    parts: list[str],
    query: BigramQuery,
    folder: str = layout.DOCS,
    row_sets: tuple[list[np.ndarray] | None, ...] = (None,),
    ngrams: NgramJob | None = None,
) -> TextCounts:
    """`bigram_counts` of sets of documents, each summed over the parts, and `ngrams`' hashed
    n-gram counts, from one read of each part (tokenised once) in a task of its own, added by a
    tree of tasks: only fixed-size count vectors reach the driver.
    Each of `row_sets` is None (every document) or one array of row numbers per part; one
    BigramCounts per set is returned, and one n-gram count vector per set of `ngrams`."""
    ngram_sets = ngrams.row_sets if ngrams else ()
    if not parts:
        zeros = [np.zeros(ngrams.buckets, dtype=np.int64) for _ in ngram_sets]
        return [BigramCounts.zeros(query) for _ in row_sets], zeros
    executor = current()
    shared = executor.share(query)
    calls = [
        (
            store,
            folder,
            part,
            shared,
            tuple(None if rows is None else rows[i] for rows in row_sets),
            ngrams,
            tuple(None if rows is None else rows[i] for rows in ngram_sets),
        )
        for i, part in enumerate(parts)
    ]
    return executor.map_reduce(_part_text_counts, calls, _add_counts)


def _add_counts(*per_part: TextCounts) -> TextCounts:
    """Element-wise sum of the parts' counts (one per row set)."""
    bigrams, ngrams = zip(*per_part, strict=True)
    return (
        [sum(counts[1:], counts[0]) for counts in zip(*bigrams, strict=True)],
        [sum(counts[1:], counts[0]) for counts in zip(*ngrams, strict=True)],
    )


def rows_per_part(pool: Pool, indices: np.ndarray) -> list[np.ndarray]:
    """The row numbers within each part of the pool documents `indices` (in the order given),
    by one stable sort on the part, not one pass per part."""
    indices = np.asarray(indices, dtype=np.int64)
    parts = pool.part_index[indices]
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(len(pool.parts) + 1))
    rows = pool.row_index[indices[order]]
    return [rows[bounds[i] : bounds[i + 1]] for i in range(len(pool.parts))]


def random_baseline(pool: Pool, chosen: np.ndarray) -> np.ndarray:
    """The pool documents a random selection of the same size as `chosen` takes: the longest
    prefix of the seeded random order (the `random` selector's, `pool.random_key`) whose
    tokens do not exceed the chosen documents' tokens."""
    return _random_prefix(pool, int(pool.tokens[chosen].sum()))


def _random_prefix(pool: Pool, tokens: int) -> np.ndarray:
    order = random_order(pool.random_key)
    return order[: int(np.searchsorted(np.cumsum(pool.tokens[order]), tokens, side="right"))]


def random_baseline_rows(
    config: Config, store: Store, pool: Pool, chosen: np.ndarray
) -> list[np.ndarray]:
    """`random_baseline`'s row numbers per part. When `pool` holds only a ranking selector's
    candidates, the random order's own candidates are gathered from the parts instead: they
    hold the prefix (distsel.core.candidates)."""
    tokens = int(pool.tokens[chosen].sum())
    if pool.complete or not tokens:
        return rows_per_part(pool, _random_prefix(pool, tokens))
    select = config.select.model_copy(update={"budget": Budget(tokens=tokens)})
    config = config.model_copy(update={"select": select})
    step = "evaluate: a random selection of its size"
    randoms = gather_ranked(store, pool.parts, [], config, random_ranking, pool.dropped, step)
    return rows_per_part(randoms, _random_prefix(randoms, tokens))


def ngram_lm_section(
    texts: list[str],
    query: BigramQuery,
    whole: BigramCounts,
    random: BigramCounts,
    selection: BigramCounts,
    prior: float = LM_PRIOR,
) -> dict[str, Any]:
    """How well bigram models of the pool, of a random selection and of the selection predict the
    target examples `texts`: their `cross_entropy` (nats/token) under a model fitted on all pool
    documents (docs/), on `random_baseline` (the random selection of the same number of tokens)
    and on the selection.

    xent_reduction = H(target | random) − H(target | selection), positive when the selection
    predicts the target better than a random selection of its size would. It is measured
    against equal size, not against the whole pool, because a model of fewer tokens sees fewer
    words: a subset of the pool nearly always predicts worse than the pool, however well chosen.
    When it is negative, one warning says so. The target examples are the same that target-aware
    selectors fit on, so this is no held-out measurement.
    """
    to_pool, to_random, to_selection = (
        cross_entropy(texts, counts, query, prior) for counts in (whole, random, selection)
    )
    if to_random - to_selection < 0:
        log.warning(
            "warning: the selection looks less like the target than a random selection of its "
            "size does (target cross-entropy %.2f vs %.2f nats/token under bigram models); "
            "check the target files and the method",
            to_selection,
            to_random,
        )
    return {
        "target_xent_pool": round(to_pool, 6),
        "target_xent_random": round(to_random, 6),
        "target_xent_selection": round(to_selection, 6),
        "xent_reduction": round(to_random - to_selection, 6),
        "target_tokens": int(len(_words(texts, query.buckets)[1])),
        "pool_tokens": int(whole.unigrams.sum()),
        "random_tokens": int(random.unigrams.sum()),
        "selection_tokens": int(selection.unigrams.sum()),
        "buckets": query.buckets,
        "prior": prior,
        "model": "word bigram, Dirichlet prior on a Witten-Bell unigram",
    }
