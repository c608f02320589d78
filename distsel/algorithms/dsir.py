r"""DSIR: importance resampling over hashed n-gram features.

Xie, Santurkar, Ma and Liang (2023), "Data Selection for Language Models via Importance Resampling"
(NeurIPS 2023, arXiv:2302.03169).

Features. A text is lower-cased and cut into tokens, the maximal runs of word characters or of
punctuation (``\w+|[^\w\s]+``, the WordPunct tokenizer the reference package uses). Every n-gram
g, n = 1..ngrams, written as its n tokens joined by one space, falls into one of B buckets:

    bucket(g) = h(g) mod B
    h(g)      = splitmix64( Σ_j (ord(g_j) + 1) · P^j  mod 2^64 ),  P = 0x9E3779B97F4A7C15
    x_i[b]    = #{n-grams g of document i : bucket(g) = b}

h is a fixed function of the code points, so buckets agree across processes and machines
(Python's `hash` is salted per process; the reference uses SHA-256, which gives other buckets).

Model. Summed counts over the raw pool and over the target, normalised, give bag-of-n-gram
distributions; with ε = 1e-8 as in the reference package,

    p[b]        = Σ_i x_i[b] / Σ_i Σ_b' x_i[b']
    log_diff[b] = log(p_target[b] + ε) − log(p_raw[b] + ε)

Importance weight of document i (not length-normalised in the paper, so long documents win):

    log w_i = Σ_b x_i[b] · log_diff[b]                 (≈ log p_target(x_i) − log p_raw(x_i))
    length-normalised: log w_i / max(1, Σ_b x_i[b])

Resampling: Gumbel top-k, the k largest of log w_i + G_i with G_i ~ Gumbel(0, 1) independent, is a
sample of k documents without replacement with probabilities ∝ exp(log w_i).

Data metric: KL reduction = KL(target ‖ pool) − KL(target ‖ selection) over hashed n-gram
distributions, smoothed by adding α to every bucket count (α = 1 by default).

Throughput: `featurize` + `log_importance_weights` go through a dense (documents, B) matrix;
`total_ngram_counts` (for fitting) and `text_log_importance_weights` (for scoring) compute the
same values straight from `hashed_ngrams`, several times faster. All are pure numpy.
"""

from __future__ import annotations

import re
import threading

import numpy as np

__all__ = [
    "DEFAULT_NUM_BUCKETS",
    "TOKEN_PATTERN",
    "featurize",
    "fit_log_diff",
    "fit_ngram_model",
    "gumbel_noise_from_keys",
    "gumbel_topk",
    "hashed_ngrams",
    "kl_divergence",
    "kl_reduction",
    "log_importance_weights",
    "ngram_hash",
    "text_log_importance_weights",
    "topk",
    "total_ngram_counts",
]

DEFAULT_NUM_BUCKETS = 10_000
TOKEN_PATTERN = r"\w+|[^\w\s]+"
FIT_SMOOTHING = 1e-8
KL_SMOOTHING = 1.0

_CHUNK_CHARS = 1 << 16
_MASK64 = (1 << 64) - 1
_POLY_BASE = 0x9E3779B97F4A7C15
_POLY_BASE_INVERSE = pow(_POLY_BASE, -1, 1 << 64)
_SPACE_CODE = ord(" ") + 1

_SPACE, _WORD, _PUNCT, _UNKNOWN = 0, 1, 2, 255
_WORD_CHAR = re.compile(r"\w")
_SPACE_CHAR = re.compile(r"\s")


# ---------------------------------------------------------------------------------------------
# Hashing


def ngram_hash(ngram: str) -> int:
    """The stable 64-bit hash of one n-gram string (its tokens joined by single spaces).

    h(s) = splitmix64( Σ_j (ord(s_j) + 1) · P^j mod 2^64 ), P = 0x9E3779B97F4A7C15.
    This scalar version defines the function; `hashed_ngrams` computes the same values batched.
    """
    value, power = 0, 1
    for char in ngram:
        value = (value + (ord(char) + 1) * power) & _MASK64
        power = (power * _POLY_BASE) & _MASK64
    return _splitmix64_int(value)


def _splitmix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (arithmetic wraps modulo 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


class _Powers:
    """P^j, P^-j and Σ_{i<j} P^i (mod 2^64) for j < n, grown on demand, shared within a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tables = self._build(1 << 16)

    @staticmethod
    def _build(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        forward = _power_table(_POLY_BASE, size)
        inverse = _power_table(_POLY_BASE_INVERSE, size)
        forward_prefix = np.zeros(size, dtype=np.uint64)
        np.cumsum(forward[:-1], out=forward_prefix[1:])
        return forward, inverse, forward_prefix

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tables = self.tables
        if len(tables[0]) >= n:
            return tables
        with self._lock:
            if len(self.tables[0]) < n:
                self.tables = self._build(1 << (n - 1).bit_length())
            return self.tables


def _power_table(base: int, size: int) -> np.ndarray:
    table = np.full(size, base, dtype=np.uint64)
    table[0] = 1
    return np.cumprod(table, dtype=np.uint64)


_POWERS = _Powers()


class _CharClasses:
    """Token class (space, word, punctuation) of every code point, filled in as they appear."""

    def __init__(self) -> None:
        self.table = np.full(0x110000, _UNKNOWN, dtype=np.uint8)
        self._fill(np.arange(128))

    def _fill(self, code_points: np.ndarray) -> None:
        for code_point in code_points.tolist():
            char = chr(code_point)
            if _WORD_CHAR.match(char):
                self.table[code_point] = _WORD
            elif _SPACE_CHAR.match(char):
                self.table[code_point] = _SPACE
            else:
                self.table[code_point] = _PUNCT

    def into(self, code_points: np.ndarray, out: np.ndarray, ascii_only: bool) -> None:
        """Write the class of each code point into `out`."""
        if not ascii_only:
            seen = np.unique(code_points[code_points >= 128])
            self._fill(seen[self.table[seen] == _UNKNOWN])
        np.take(self.table, code_points, out=out)


_CHAR_CLASSES = _CharClasses()


# ---------------------------------------------------------------------------------------------
# Features


def hashed_ngrams(
    texts: list[str], num_buckets: int = DEFAULT_NUM_BUCKETS, ngrams: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram occurrence (n = 1..ngrams) of every text as (document index, bucket).

    tokens(t) = re.findall(r"\\w+|[^\\w\\s]+", t.lower()); the n-gram at token i is
    g = " ".join(tokens[i:i+n]) and its bucket is ngram_hash(g) mod num_buckets.

    Computed a chunk of about `_CHUNK_CHARS` characters at a time, vectorised over the chunk:
    the lower-cased texts are joined by spaces and read as code points; a lookup table gives
    each one's token class and token boundaries are where the class changes; a prefix sum
    G[i] = Σ_{j<i} (c_j + 1) P^j gives each token's polynomial as (G[end] − G[start]) · P^-start,
    and the n-gram polynomial follows from the tokens',
    poly(a ␣ b) = poly(a) + (ord(" ") + 1) P^|a| + poly(b) P^(|a|+1).
    Returns two int64 arrays of equal length (one entry per occurrence, in a fixed order).
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
    if ngrams < 1:
        raise ValueError(f"ngrams must be at least 1, got {ngrams}")
    lowered = [text.lower() for text in texts]
    lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
    chunk_of_doc = (np.cumsum(lengths + 1) - 1) // _CHUNK_CHARS
    bounds = [0, *(np.flatnonzero(np.diff(chunk_of_doc)) + 1).tolist(), len(lowered)]
    doc_parts, bucket_parts = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        if first == last:
            continue
        doc_index, keys = _ngram_keys(lowered[first:last], lengths[first:last], ngrams)
        doc_parts.append(doc_index + first)
        bucket_parts.append((keys % np.uint64(num_buckets)).astype(np.int64))
    return np.concatenate(doc_parts), np.concatenate(bucket_parts)


def _ngram_keys(
    lowered: list[str], lengths: np.ndarray, ngrams: int
) -> tuple[np.ndarray, np.ndarray]:
    """(document index, 64-bit n-gram hash) for every n-gram of the lower-cased texts."""
    empty = np.zeros(0, dtype=np.int64)
    doc_start = np.zeros(len(lowered), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=doc_start[1:])
    joined = " ".join(lowered)
    code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    n_chars = len(code_points)

    # Token boundaries: positions where the class changes, padded with spaces at both ends.
    padded = np.zeros(n_chars + 2, dtype=np.uint8)
    _CHAR_CLASSES.into(code_points, padded[1:-1], joined.isascii())
    boundary = np.flatnonzero(padded[1:] != padded[:-1])
    starts = boundary[padded[boundary + 1] != _SPACE]
    ends = boundary[padded[boundary] != _SPACE]
    if len(starts) == 0:
        return empty, empty.astype(np.uint64)

    # G[i] = Σ_{j<i} c_j P^j + Σ_{j<i} P^j, so G[e] − G[s] = P^s · poly(text[s:e]).
    forward, inverse, forward_prefix = _POWERS.get(n_chars + ngrams + 2)
    prefix = np.zeros(n_chars + 1, dtype=np.uint64)
    np.cumsum(np.multiply(code_points, forward[:n_chars], dtype=np.uint64), out=prefix[1:])
    prefix += forward_prefix[: n_chars + 1]

    token_poly = (prefix[ends] - prefix[starts]) * inverse[starts]
    token_len = ends - starts
    tokens_per_doc = np.diff(np.searchsorted(starts, doc_start), append=len(starts))
    token_doc = np.repeat(np.arange(len(lowered), dtype=np.int64), tokens_per_doc)

    docs = [token_doc]
    keys = [_splitmix64(token_poly)]
    poly, length = token_poly, token_len
    for n in range(2, ngrams + 1):
        count = len(token_poly) - n + 1
        if count <= 0:
            break
        poly = (
            poly[:count]
            + np.uint64(_SPACE_CODE) * forward[length[:count]]
            + token_poly[n - 1 :] * forward[length[:count] + 1]
        )
        length = length[:count] + 1 + token_len[n - 1 :]
        same_doc = token_doc[:count] == token_doc[n - 1 :]
        docs.append(token_doc[:count][same_doc])
        keys.append(_splitmix64(poly[same_doc]))

    return np.concatenate(docs), np.concatenate(keys)


def featurize(
    texts: list[str], num_buckets: int = DEFAULT_NUM_BUCKETS, ngrams: int = 2
) -> np.ndarray:
    """Hashed n-gram counts, one row per text: x_i[b] = #{n-grams g of text i : bucket(g) = b}.

    n-grams are all token 1-grams .. `ngrams`-grams (see `hashed_ngrams`); bucket(g) =
    ngram_hash(g) mod num_buckets. Returns a dense (len(texts), num_buckets) float64 array of
    whole numbers, so that the weights are one BLAS matrix-vector product.
    """
    doc_index, bucket = hashed_ngrams(texts, num_buckets, ngrams)
    counts = np.zeros((len(texts), num_buckets), dtype=np.float64)
    np.add.at(counts.reshape(-1), doc_index * num_buckets + bucket, 1.0)
    return counts


def total_ngram_counts(
    texts: list[str], num_buckets: int = DEFAULT_NUM_BUCKETS, ngrams: int = 2
) -> np.ndarray:
    """c[b] = Σ_i x_i[b], the summed counts for `fit_ngram_model` (int64, no dense matrix)."""
    _, bucket = hashed_ngrams(texts, num_buckets, ngrams)
    return np.bincount(bucket, minlength=num_buckets)


def text_log_importance_weights(
    texts: list[str], log_diff: np.ndarray, ngrams: int = 2, length_normalize: bool = False
) -> np.ndarray:
    """log_importance_weights(featurize(texts, len(log_diff), ngrams), log_diff, length_normalize).

    log w_i = Σ_{n-grams g of text i} log_diff[bucket(g)] (divided by max(1, #n-grams) when
    `length_normalize`), summed straight from `hashed_ngrams` without the dense count matrix.
    """
    log_diff = np.asarray(log_diff, dtype=np.float64)
    doc_index, bucket = hashed_ngrams(texts, len(log_diff), ngrams)
    weights = np.bincount(doc_index, weights=log_diff[bucket], minlength=len(texts))
    if length_normalize:
        weights /= np.maximum(np.bincount(doc_index, minlength=len(texts)), 1)
    return weights


# ---------------------------------------------------------------------------------------------
# Model and weights


def _summed(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim == 2:
        counts = counts.sum(axis=0)
    if counts.ndim != 1:
        raise ValueError(
            f"counts must be a vector or a (documents, buckets) matrix: {counts.shape}"
        )
    if (counts < 0).any():
        raise ValueError("counts must not be negative")
    return counts


def fit_ngram_model(counts: np.ndarray, smoothing: float = FIT_SMOOTHING) -> np.ndarray:
    """Log-probabilities of the bag-of-hashed-n-grams model: log(p[b] + ε), p[b] = c[b] / Σ c.

    `counts` is the summed count vector c (or a (documents, buckets) matrix, summed over rows);
    ε = `smoothing` (1e-8, as in the reference package).
    """
    total_counts = _summed(counts)
    total = total_counts.sum()
    if total <= 0:
        raise ValueError("cannot fit an n-gram model on zero counts")
    return np.log(total_counts / total + smoothing)


def fit_log_diff(
    target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float = FIT_SMOOTHING
) -> np.ndarray:
    """log_diff[b] = log(p_target[b] + ε) − log(p_raw[b] + ε), each by `fit_ngram_model`."""
    return fit_ngram_model(target_counts, smoothing) - fit_ngram_model(raw_counts, smoothing)


def log_importance_weights(
    counts: np.ndarray, log_diff: np.ndarray, length_normalize: bool = False
) -> np.ndarray:
    """log w_i = Σ_b x_i[b] · log_diff[b]; length-normalised: log w_i / max(1, Σ_b x_i[b]).

    `counts` is the (documents, buckets) matrix from `featurize`; Σ_b x_i[b] is the number of
    n-grams in document i. Returns float64 of shape (documents,).
    """
    counts = np.asarray(counts)
    log_diff = np.asarray(log_diff, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != log_diff.shape[0]:
        raise ValueError(f"counts {counts.shape} do not match log_diff {log_diff.shape}")
    weights = counts @ log_diff
    if length_normalize:
        weights /= np.maximum(counts.sum(axis=1), 1)
    return weights


# ---------------------------------------------------------------------------------------------
# Resampling


def _checked_weights(log_weights: np.ndarray) -> np.ndarray:
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 1:
        raise ValueError(f"log_weights must be a vector, got shape {log_weights.shape}")
    if np.isnan(log_weights).any():
        raise ValueError("log_weights contain NaN")
    return log_weights


def topk(log_weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest log_weights, largest first; ties go to the lower index.

    O(n) selection (argpartition) plus a sort of the k chosen. k ≥ n returns every index.
    """
    log_weights = _checked_weights(log_weights)
    n = len(log_weights)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    negated = -log_weights
    if k < n:
        threshold = negated[np.argpartition(negated, k - 1)[:k]].max()
        above = np.flatnonzero(negated < threshold)
        tied = np.flatnonzero(negated == threshold)[: k - len(above)]
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(n)
    return chosen[np.lexsort((chosen, negated[chosen]))].astype(np.int64)


def gumbel_noise_from_keys(keys: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) noise from uniform 64-bit keys: G = −log(−log U), U = (⌊key / 2^11⌋ + ½) / 2^53.

    With per-document keys (e.g. a seeded hash of the document id) the noise, and so the
    Gumbel top-k sample, does not depend on the order or sharding of the pool.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    uniform = ((keys >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(uniform))


def gumbel_topk(
    log_weights: np.ndarray, k: int, seed: int = 0, noise: np.ndarray | None = None
) -> np.ndarray:
    """k indices sampled without replacement with probabilities ∝ exp(log_weights).

    Gumbel top-k: the top k of log w_i + G_i, G_i ~ Gumbel(0, 1) i.i.d. (drawn from
    numpy's PCG64 with `seed`, in index order, unless `noise` is given). The first index has
    P(i) = exp(log w_i) / Σ_j exp(log w_j); the next is drawn likewise from the rest, and so on.
    Returned in the order drawn. Documents with log weight −inf are never drawn before others.
    """
    log_weights = _checked_weights(log_weights)
    if noise is None:
        noise = np.random.default_rng(seed).gumbel(size=log_weights.shape)
    elif np.shape(noise) != log_weights.shape:
        raise ValueError(f"noise {np.shape(noise)} does not match log_weights {log_weights.shape}")
    return topk(log_weights + noise, k)


# ---------------------------------------------------------------------------------------------
# KL reduction


def _smoothed_distribution(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = _summed(counts) + smoothing
    total = counts.sum()
    if total <= 0:
        raise ValueError("cannot normalise zero counts; use a positive smoothing")
    return counts / total


def kl_divergence(
    p_counts: np.ndarray, q_counts: np.ndarray, smoothing: float = KL_SMOOTHING
) -> float:
    """KL(p ‖ q) = Σ_b p[b] log(p[b] / q[b]) with add-α smoothing of both count vectors.

    p[b] = (c_p[b] + α) / (Σ c_p + α B), likewise q; α = `smoothing` (default 1, Laplace: it keeps
    the divergence finite when the selection misses a bucket the target uses, and barely moves
    buckets with many counts). Counts are vectors or (documents, buckets) matrices (summed).
    """
    p = _smoothed_distribution(p_counts, smoothing)
    q = _smoothed_distribution(q_counts, smoothing)
    if p.shape != q.shape:
        raise ValueError(f"p has {p.shape[0]} buckets, q has {q.shape[0]}")
    support = p > 0
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def kl_reduction(
    target_counts: np.ndarray,
    pool_counts: np.ndarray,
    selection_counts: np.ndarray,
    smoothing: float = KL_SMOOTHING,
) -> float:
    """KL(target ‖ pool) − KL(target ‖ selection), each by `kl_divergence` with add-α smoothing.

    Positive when the selection's n-gram distribution is closer to the target's than the pool's.
    """
    return kl_divergence(target_counts, pool_counts, smoothing) - kl_divergence(
        target_counts, selection_counts, smoothing
    )
