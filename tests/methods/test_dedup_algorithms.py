"""Near duplicates against references computed another way: MinHash against exact shingle sets
and all-pairs Jaccard, the LSH collision formula and a brute-force union of pairs; SemDeDup
against its greedy rule over the full cosine matrix."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest
from helpers import min_label_components, stdlib_paragraphs

from distsel.algorithms import components, minhash, semdedup


def edited(text: str, share: float, rng: random.Random) -> str:
    """`text` with about `share` of its words replaced."""
    words = text.split()
    for index in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        words[index] = f"edit{rng.randrange(10_000)}"
    return " ".join(words)


def test_hashed_shingles_are_the_shingle_sets():
    texts = [*stdlib_paragraphs(40), "", "!!!", "one two", "Short. Sentences. Here!"]
    for ngram in (1, 2, 5):
        hashes, offsets = minhash.shingle_hashes(texts, ngram)
        assert len(offsets) == len(texts) + 1
        for index, text in enumerate(texts):
            distinct = set(hashes[offsets[index] : offsets[index + 1]].tolist())
            assert len(distinct) == len(minhash.shingles(text, ngram)), (ngram, text)


def test_whitespace_case_and_sentence_order_leave_the_shingles_unchanged():
    text = "The cat sat on the mat today. A dog ran in the park at noon! Birds sang all day."
    sentences = re.split(r"(?<=[.!?])\s+", text)
    variant = "\n\n".join(reversed(sentences)).upper().replace(" ", "  \t")
    assert minhash.shingles(variant) == minhash.shingles(text)
    signature = minhash.signatures([text, variant])
    assert (signature[0] == signature[1]).all()


def test_estimated_jaccard_is_close_to_the_exact_one():
    rng = random.Random(3)
    texts = stdlib_paragraphs(60)
    pairs = [(t, edited(t, rng.choice([0.02, 0.1, 0.3]), rng)) for t in texts]
    signature = minhash.signatures([t for pair in pairs for t in pair], num_perm=256, ngram=2)
    estimate = minhash.estimated_jaccard(signature[0::2], signature[1::2])
    exact = np.array(
        [minhash.jaccard(minhash.shingles(a, 2), minhash.shingles(b, 2)) for a, b in pairs]
    )
    # 256 positions: the estimate's standard deviation is at most 0.5 / 16
    assert np.abs(estimate - exact).max() < 0.12
    assert abs(float(np.mean(estimate - exact))) < 0.02


def test_a_text_without_words_takes_no_part():
    signature = minhash.signatures(["...", "", "real words here"], num_perm=16)
    assert (signature[:2] == minhash.NO_SHINGLES).all()
    assert (signature[2] != minhash.NO_SHINGLES).all()


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_bands_put_the_s_curve_at_the_threshold(threshold):
    bands, rows = minhash.lsh_bands(threshold, 112)
    assert bands * rows <= 112
    collide = 1 - (1 - threshold**rows) ** bands
    assert collide > 0.85, "a pair at the threshold is a candidate"
    assert 1 - (1 - (threshold - 0.3) ** rows) ** bands < 0.25, "a pair far below is not"
    # brute force over every (b, r): none has a smaller error
    grid = np.linspace(0, 1, 1001)
    weight = minhash.FALSE_POSITIVE_WEIGHT

    def error(b: int, r: int) -> float:
        p = 1 - (1 - grid**r) ** b
        weighted = np.where(grid <= threshold, weight * p, (1 - weight) * (1 - p))
        return float(np.sum((weighted[1:] + weighted[:-1]) / 2 * np.diff(grid)))

    best = min(error(b, r) for b in range(1, 113) for r in range(1, 112 // b + 1))
    assert error(bands, rows) == pytest.approx(best, abs=1e-12)


def test_band_collisions_follow_the_s_curve():
    """Pairs at a fixed exact Jaccard share a band as often as 1 − (1 − J^r)^b says."""
    rng = np.random.default_rng(0)
    bands, rows = 10, 5
    shared, size = 60, 100  # J = 60 / 140
    texts = []
    for pair in range(400):
        common = [f"w{pair}x{i}" for i in range(shared)]
        a = common + [f"a{pair}x{i}" for i in range(size - shared)]
        b = common + [f"b{pair}x{i}" for i in range(size - shared)]
        texts += [" ".join(rng.permutation(a)), " ".join(rng.permutation(b))]
    keys = minhash.band_keys(minhash.signatures(texts, bands * rows, ngram=1), bands, rows)
    collided = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    expected = 1 - (1 - (shared / (2 * size - shared)) ** rows) ** bands
    assert abs(collided - expected) < 0.06


def star_components(first: np.ndarray, second: np.ndarray, groups: int) -> tuple[list, list]:
    """large-star and small-star steps as distsel runs them, with the edges cut into `groups`
    groups by key and each group stepped on its own, until not_stars is zero everywhere."""

    def by_group(keys, others, step):
        cut = [(keys[keys % groups == g], others[keys % groups == g]) for g in range(groups)]
        return [step(*edges) for edges in cut]

    keys, others = components.both_ways(first, second)
    while sum(by_group(keys, others, components.not_stars)):
        larger = by_group(keys, others, components.large_star)
        keys, others = (np.concatenate(column) for column in zip(*larger, strict=True))
        smaller = by_group(keys, others, components.small_star)
        keys, others = (np.concatenate(column) for column in zip(*smaller, strict=True))
    leaves, centres = components.star_leaves(keys, others)
    return leaves.tolist(), centres.tolist()


@pytest.mark.parametrize("groups", [1, 3])
def test_star_steps_find_the_components_min_label_propagation_finds(groups):
    """Random graphs (with isolated pairs, repeated edges, big components) and paths whose
    nodes are numbered at random: each node is mapped to its component's smallest node."""
    rng = np.random.default_rng(groups)
    for trial in range(60):
        nodes = int(rng.integers(2, 200))
        if trial % 3 == 0:
            order = rng.permutation(nodes)
            edges = np.stack([order[:-1], order[1:]], axis=1)
        else:
            edges = rng.integers(0, nodes, size=(int(rng.integers(1, 150)), 2))
            edges = edges[edges[:, 0] != edges[:, 1]]
        edges = (edges.astype(np.int64) << 32) + 7  # node ids as part rank << 32 + row
        found = star_components(edges[:, 0], edges[:, 1], groups)
        assert found == min_label_components(edges[:, 0], edges[:, 1]), trial


def test_not_stars_is_zero_only_for_stars_around_the_smallest_node():
    star = components.both_ways(np.array([1, 1, 1]), np.array([4, 5, 9]))
    assert components.not_stars(*star) == 0
    off_centre = components.both_ways(np.array([4, 4, 4]), np.array([1, 5, 9]))
    assert components.not_stars(*off_centre) == 1, "node 4 has a smaller neighbour and others"
    path = components.both_ways(np.array([1, 2]), np.array([2, 3]))
    assert components.not_stars(*path) == 1


def test_lsh_finds_the_pairs_an_all_pairs_jaccard_finds():
    """On a small corpus with edited copies: verified LSH pairs against exact all-pairs Jaccard."""
    rng = random.Random(7)
    base = stdlib_paragraphs(120)
    texts = base + [edited(rng.choice(base), rng.choice([0.0, 0.03, 0.3]), rng) for _ in range(80)]
    threshold, ngram = 0.7, 2
    sets = [minhash.shingles(t, ngram) for t in texts]
    exact = {
        (a, b)
        for a, b in itertools.combinations(range(len(texts)), 2)
        if minhash.jaccard(sets[a], sets[b]) >= threshold
    }
    signature = minhash.signatures(texts, 112, ngram)
    keys = minhash.band_keys(signature, *minhash.lsh_bands(threshold, 112))
    candidates = {
        (a, b)
        for a, b in itertools.combinations(range(len(texts)), 2)
        if (keys[a] == keys[b]).any()
    }
    found = {
        (a, b)
        for a, b in candidates
        if minhash.estimated_jaccard(signature[a], signature[b])[0] >= threshold
    }
    assert len(exact) > 30
    assert len(found & exact) / len(exact) >= 0.9
    assert len(found & exact) / len(found) >= 0.9


def brute_force_semdedup(embeddings: np.ndarray, epsilon: float) -> list[tuple[int, int]]:
    """The greedy rule over the full cosine matrix: (duplicate, kept partner) in order."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    kept: list[int] = []
    found = []
    for i in range(len(unit)):
        close = [j for j in kept if cosine[i, j] > 1 - epsilon]
        if close:
            found.append((i, max(close, key=lambda j: cosine[i, j])))
        else:
            kept.append(i)
    return found


@pytest.mark.parametrize("block", [7, 1024])
def test_semdedup_equals_the_greedy_rule_over_all_cosines(monkeypatch, block):
    monkeypatch.setattr(semdedup, "BLOCK", block)
    rng = np.random.default_rng(4)
    base = rng.normal(size=(40, 16))
    copies = base[rng.integers(0, 40, size=30)] + rng.normal(scale=0.05, size=(30, 16))
    embeddings = rng.permutation(np.concatenate([base, copies]))
    later, kept, cosine = semdedup.cluster_duplicates(embeddings, epsilon=0.02)
    expected = brute_force_semdedup(embeddings, 0.02)
    assert len(expected) >= 20
    assert list(zip(later.tolist(), kept.tolist(), strict=True)) == expected
    unit = semdedup.unit_rows(embeddings)
    assert np.allclose(cosine, np.sum(unit[later] * unit[kept], axis=1), atol=1e-5)
