r"""Near-duplicate documents by MinHash and locality-sensitive hashing (LSH).

Broder (1997), "On the resemblance and containment of documents"; the banded LSH of Leskovec,
Rajaraman and Ullman, *Mining of Massive Datasets*, ch. 3, as DataTrove and NeMo Curator run it.

Shingles. A text is lower-cased and cut into sentences (at . ! ? followed by whitespace), each
sentence into words (``\w+``). A shingle is n consecutive words of one sentence
(n = 5); a sentence of fewer than n words is one shingle. Shingles never cross a sentence, so
reordered sentences, changed whitespace, case and punctuation leave the shingle set S(d) as it
was. Its hash is

    word(w)     = the first 8 bytes of blake2b(w), read as a little-endian uint64
    shingle(g)  = fold32( splitmix64( Σ_j word(g_j) · C_j  mod 2^64 ) ),  C_j fixed odd constants
    fold32(z)   = (z ⊕ (z >> 32)) mod 2^32

Signature. With P hash functions h_p(x) = ((a_p · x + b_p) mod 2^64) >> 32, a_p odd (multiply-add-
shift, a universal family on 32-bit keys) drawn from `seed`,

    sig_p(d) = min_{x ∈ S(d)} h_p(x)
    P(sig_p(d) = sig_p(e)) ≈ J(d, e) = |S(d) ∩ S(e)| / |S(d) ∪ S(e)|

so the share of agreeing positions estimates the Jaccard similarity.

Bands. The P positions are cut into b bands of r rows (b · r ≤ P). Two documents are candidates
when one band agrees in all r rows, which happens with probability 1 − (1 − J^r)^b, an S-curve
that `lsh_bands` places around the threshold t: it picks the (b, r) with the least weighted area
of false positives (J < t) and false negatives (J ≥ t) under the curve. Candidates
are verified: a pair is a near duplicate when its estimated Jaccard is at least t. Near
duplicates form clusters, the connected components of the verified pairs
(distsel.algorithms.components); the first document of a component in input order is kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

__all__ = [
    "NO_SHINGLES",
    "band_keys",
    "estimated_jaccard",
    "jaccard",
    "lsh_bands",
    "shingle_hashes",
    "shingles",
    "signatures",
]

#: the signature of a text without a word: it takes part in no band
NO_SHINGLES = np.uint32(0xFFFFFFFF)
FALSE_POSITIVE_WEIGHT = 0.05
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+|\0|(?<=[.!?])\s+")
_BAND_MIX = np.uint64(0x9FB21C651E98DF25)
_TEXTS_AT_ONCE = 500
_CHUNK = 1 << 14  # shingles hashed at once: CHUNK × P × 8 bytes of scratch


def shingles(text: str, ngram: int = 5) -> set[tuple[str, ...]]:
    """S(d) as word tuples: the definition `shingle_hashes` computes hashed, for small checks."""
    found: set[tuple[str, ...]] = set()
    for sentence in _SENTENCE.split(text.lower()):
        words = tuple(_WORD.findall(sentence))
        if 0 < len(words) < ngram:
            found.add(words)
        found.update(words[i : i + ngram] for i in range(len(words) - ngram + 1))
    return found


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def shingle_hashes(texts: Iterable[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The hashed shingles of every text: (uint64 hashes < 2^32, offsets), text i's shingles at
    hashes[offsets[i]:offsets[i + 1]] (repeats kept: they do not change a minimum).

    The texts are joined by NUL and tokenised at once: words, sentence breaks and text breaks."""
    if not 1 <= ngram <= MAX_NGRAM:
        raise ValueError(f"ngram must lie in 1..{MAX_NGRAM}, got {ngram}")
    texts = list(texts)
    joined = "\0".join(t.replace("\0", " ") for t in texts)
    vocabulary: dict[str, int] = {}
    ids = np.fromiter(
        (vocabulary.setdefault(token, len(vocabulary)) for token in _TOKEN.findall(joined.lower())),
        dtype=np.int64,
    )
    keys = list(vocabulary)
    kind = np.array([0 if key[0] == "\0" else 1 if _WORD.match(key) else 2 for key in keys])
    token_kind = kind[ids] if len(ids) else np.zeros(0, dtype=np.int64)
    text_of_token = np.cumsum(token_kind == 0)
    is_word = token_kind == 1
    # a sentence ends before every break (text or sentence) and at the end
    sentence_of_token = np.cumsum(~is_word)
    words = _word_hashes(keys, kind == 1)[ids[is_word]]
    if not len(words):
        return np.zeros(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64)
    sentence_of_word = sentence_of_token[is_word]
    text_of_word = text_of_token[is_word]
    new_sentence = np.flatnonzero(np.diff(sentence_of_word, prepend=-1) != 0)
    starts = new_sentence
    ends = np.append(new_sentence[1:], len(words)).astype(np.int64)
    counts = np.maximum(ends - starts - ngram + 1, 1)  # shingles per sentence
    first = np.repeat(starts, counts) + _ranks_within(counts)
    last = np.repeat(ends, counts)
    mixed = np.zeros(len(first), dtype=np.uint64)
    for j in range(ngram):
        at = first + j
        inside = at < last
        mixed[inside] += words[at[inside]] * _MIX[j]
    folded = _splitmix64(mixed)
    folded = (folded ^ (folded >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    text_of_shingle = text_of_word[first]
    offsets = np.searchsorted(text_of_shingle, np.arange(len(texts) + 1), side="left")
    return folded, offsets.astype(np.int64)


def signatures(
    texts: Iterable[str], num_perm: int = 112, ngram: int = 5, seed: int = 0
) -> np.ndarray:
    """(len(texts), num_perm) uint32: sig_p(d) = min over d's shingles x of h_p(x); a text
    without a word gets NO_SHINGLES in every position. Computed `_TEXTS_AT_ONCE` texts at a
    time, so the scratch arrays stay small."""
    texts = list(texts)
    multipliers, increments = _permutations(num_perm, seed)
    parts = [
        _signatures(texts[start : start + _TEXTS_AT_ONCE], ngram, multipliers, increments)
        for start in range(0, len(texts), _TEXTS_AT_ONCE)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, num_perm), dtype=np.uint32)


def _signatures(
    texts: list[str], ngram: int, multipliers: np.ndarray, increments: np.ndarray
) -> np.ndarray:
    hashes, offsets = _distinct(*shingle_hashes(texts, ngram))
    result = np.full((len(texts), len(multipliers)), NO_SHINGLES, dtype=np.uint32)
    has = np.flatnonzero(np.diff(offsets) > 0)
    if not len(has):
        return result
    bounds = _chunk_bounds(offsets, has, _CHUNK)
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        docs = has[low:high]
        start, stop = offsets[docs[0]], offsets[docs[-1] + 1]
        values = np.multiply.outer(multipliers, hashes[start:stop])  # (P, shingles): rows
        values += increments[:, None]  # contiguous for reduceat
        # x ↦ x >> 32 keeps order, so the minimum is shifted after it is taken
        lowest = np.minimum.reduceat(values, offsets[docs] - start, axis=1)
        result[docs] = (lowest >> np.uint64(32)).T
    return result


def _distinct(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each text's shingle hashes without repeats (a repeat cannot change a minimum)."""
    text_of = np.repeat(np.arange(len(offsets) - 1, dtype=np.uint64), np.diff(offsets))
    keys = np.sort((text_of << np.uint64(32)) | hashes)
    keys = keys[np.concatenate([keys[:1] == keys[:1], keys[1:] != keys[:-1]])]
    texts = (keys >> np.uint64(32)).astype(np.int64)
    starts = np.searchsorted(texts, np.arange(len(offsets), dtype=np.int64))
    return keys & np.uint64(0xFFFFFFFF), starts.astype(np.int64)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The share of positions where the signatures agree, row by row: Ĵ = (1/P) Σ_p [a_p = b_p]."""
    return np.mean(np.atleast_2d(a) == np.atleast_2d(b), axis=1)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r), b · r ≤ num_perm, minimising the weighted false positives plus false negatives,
    0.05 · ∫_0^t P(J) dJ + 0.95 · ∫_t^1 (1 − P(J)) dJ, with P(J) = 1 − (1 − J^r)^b the chance
    of a candidate. Verification removes false positives, so a missed pair costs 19 times more
    (at t = 0.8 and 112 positions: 14 bands of 8 rows, P(0.8) = 0.92, P(0.85) = 0.99)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    grid = np.linspace(0.0, 1.0, 1001)
    below = grid <= threshold
    best, chosen = np.inf, (1, 1)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            candidate = 1 - (1 - grid**rows) ** bands
            error = _integral(np.where(below, FALSE_POSITIVE_WEIGHT * candidate, 0), grid)
            error += _integral(
                np.where(below, 0, (1 - FALSE_POSITIVE_WEIGHT) * (1 - candidate)), grid
            )
            if error < best - 1e-12:
                best, chosen = error, (bands, rows)
    return chosen


def _integral(values: np.ndarray, grid: np.ndarray) -> float:
    """The trapezoid rule (numpy's `trapezoid` needs numpy 2)."""
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64: key[d, j] = splitmix64(Σ_i sig[d, j·r + i] · C_i + j · C),
    equal for two documents exactly when band j agrees (up to 64-bit collisions)."""
    if bands * rows > signature.shape[1]:
        raise ValueError(f"{bands} bands of {rows} rows need {bands * rows} positions")
    cut = signature[:, : bands * rows].astype(np.uint64).reshape(len(signature), bands, rows)
    mixed = (cut * _MIX[:rows]).sum(axis=2, dtype=np.uint64)
    mixed += np.arange(bands, dtype=np.uint64) * _BAND_MIX
    return _splitmix64(mixed)


def _word_hashes(keys: list[str], is_word: np.ndarray) -> np.ndarray:
    """word(w) for each vocabulary key that is a word, 0 for the breaks."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
            if word
            else 0
            for key, word in zip(keys, is_word.tolist(), strict=True)
        ],
        dtype=np.uint64,
    )


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, …, c − 1 for each c in counts, concatenated."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= num_perm <= MAX_PERM:
        raise ValueError(f"num_perm must lie in 1..{MAX_PERM}, got {num_perm}")
    rng = np.random.default_rng(seed)
    odd = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    multipliers = odd * np.uint64(2) + np.uint64(1)
    increments = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return multipliers, increments


def _chunk_bounds(offsets: np.ndarray, docs: np.ndarray, chunk: int) -> list[int]:
    """Cut the documents `docs` (each with shingles) into runs of about `chunk` shingles."""
    block = (offsets[docs + 1] - offsets[docs[0]] - 1) // chunk
    return [0, *(np.flatnonzero(np.diff(block)) + 1).tolist(), len(docs)]


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (arithmetic wraps modulo 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


MAX_NGRAM = 64
MAX_PERM = 1024
# C_j: a distinct odd constant for each position in a shingle and each row of a band
_MIX = _splitmix64(np.arange(1, MAX_PERM + 1, dtype=np.uint64)) | np.uint64(1)
