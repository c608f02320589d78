"""Ranked selection from the parts' heads (distsel.core.candidates) against the walk over the
whole pool, on real part files in a real Store, in-process."""

from __future__ import annotations

import math
import pickle
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from helpers import base_config, read_folder, stdlib_paragraphs, write_jsonl

from distsel.app import pipeline
from distsel.core import candidates, layout, registry
from distsel.core.config import Budget, parse_config
from distsel.core.executor import LocalExecutor
from distsel.core.pool import PartColumns, Pool, category_values, gather_pool, random_keys
from distsel.core.samplers import fill_budget, random_ranking
from distsel.core.selector import selection_pool
from distsel.core.storage import Store


def write_parts(root, rng, sizes, ties: bool, stage: str = "s") -> list[str]:
    store = Store(str(root))
    parts = []
    for index, size in enumerate(sizes):
        part = f"p{index:03d}{layout.PART_SUFFIX}"
        ids = [f"d{index}-{row}" for row in range(size)]
        tokens = np.maximum(1, rng.pareto(1.2, size) * 20).astype(np.int64)  # heavy-tailed
        score = rng.integers(0, 5, size) if ties else rng.normal(size=size)
        store.write_table(
            layout.docs(part),
            pa.table({"id": ids, "text": ["x"] * size, "tokens_approx": tokens}),
        )
        store.write_table(
            layout.scores(stage, part), pa.table({"id": ids, "similarity": score.astype(float)})
        )
        parts.append(part)
    return parts


def config(root, method: str, budget: dict):
    raw = {"input": {"paths": ["corpus/"]}, "output": {"path": str(root)}}
    raw["select"] = {"method": method, "budget": budget}
    return parse_config(raw)


def chosen_rows(pool, chosen) -> list[tuple[int, int]]:
    pairs = zip(pool.part_index[chosen].tolist(), pool.row_index[chosen].tolist(), strict=True)
    return sorted(pairs)


@pytest.mark.parametrize("method", ["topk", "random"])
@pytest.mark.parametrize("seed", range(12))
def test_the_heads_select_what_the_whole_pool_selects(tmp_path, method, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 80, rng.integers(1, 9)).tolist()
    parts = write_parts(tmp_path, rng, sizes, ties=seed % 2 == 0)
    total = sum(sizes)
    budget = (
        {"docs": int(rng.integers(1, total + 10))}
        if seed % 3 == 0
        else {"tokens": int(rng.integers(1, 40 * total + 50))}
    )
    cfg = config(tmp_path, method, budget)
    selector = registry.selector(method)
    store = Store(str(tmp_path))
    with LocalExecutor().active():
        whole = gather_pool(store, parts, ["s"], cfg)
        heads, _ = selection_pool(selector, store, parts, ["s"], cfg)
    expected = selector.select(whole, cfg, None)[0]
    got = selector.select(heads, cfg, None)[0]
    assert chosen_rows(heads, got) == chosen_rows(whole, expected)
    assert heads.totals == whole.totals and heads.totals.docs == total


def test_parts_send_heads_not_the_pool_and_a_short_head_grows(tmp_path):
    rng = np.random.default_rng(7)
    parts = write_parts(tmp_path, rng, [400] * 6, ties=False)
    store = Store(str(tmp_path))
    cfg = config(tmp_path, "topk", {"docs": 30})
    with LocalExecutor().active():
        heads, _ = selection_pool(registry.selector("topk"), store, parts, ["s"], cfg)
    head = math.ceil(candidates.HEAD_MARGIN * 30 / 6) + candidates.MIN_HEAD
    assert len(heads) == 6 * head and heads.totals.docs == 2400
    assert not heads.complete

    # One part holds every high score: the others' heads suffice, its own must grow.
    table = store.read_table(layout.scores("s", parts[0]))
    high = pa.table({"id": table["id"], "similarity": np.linspace(100, 200, 400)})
    store.write_table(layout.scores("s", parts[0]), high)
    with LocalExecutor().active():
        heads, _ = selection_pool(registry.selector("topk"), store, parts, ["s"], cfg)
    # its head grows once: 23 documents (short of the 30), then 45 (share and MIN_HEAD doubled)
    grown = math.ceil((candidates.HEAD_MARGIN * 30 / 6 + candidates.MIN_HEAD) * candidates.GROWTH)
    assert np.bincount(heads.part_index, minlength=6).tolist() == [grown] + [head] * 5
    chosen = registry.selector("topk").select(heads, cfg, None)[0]
    assert set(heads.part_index[chosen].tolist()) == {0}


def test_a_short_part_is_one_whose_left_out_documents_could_still_fit():
    """Walk by hand: budget 10 tokens, order a(6) b(5) c(4): a is taken (4 left), b skipped,
    c taken (0 left). A part that left out a 1-token document after a is short (4 ≥ 1); after c
    it is not (0 < 1)."""
    pool = Pool(
        parts=["x", "y"],
        part_index=np.array([0, 1, 1]),
        row_index=np.array([0, 0, 1]),
        tokens=np.array([6, 5, 4]),
        random_key=np.arange(3, dtype=np.uint64),
    )
    order = np.array([0, 1, 2])
    assert fill_budget(order, pool.tokens, Budget(tokens=10)).tolist() == [0, 2]
    one = np.array([1.0])
    x_cut = [PartColumns(pool, one), PartColumns(pool, None)]
    y_cut = [PartColumns(pool, None), PartColumns(pool, one)]

    def short(gathered, budget):
        cfg = config("/tmp", "random", budget)
        plan = candidates.RankedPlan(lambda pool, config: [order], cfg, 2)
        return candidates.short_parts(pool, gathered, plan)

    assert short(x_cut, {"tokens": 10}) == [(0, 0)]
    assert short(y_cut, {"tokens": 10}) == []
    assert short(x_cut, {"docs": 1}) == []
    assert short(x_cut, {"docs": 2}) == [(0, 0)]
    assert random_ranking(pool, None)[0].tolist() == [0, 1, 2]


def four_part_run(tmp_path, method: str, docs: int) -> dict:
    """A run of `method` with a budget of `docs` over 400 documents in 4 parts; its manifest."""
    texts = [f"{p} ({i})" for i, p in enumerate(stdlib_paragraphs(100) * 4)]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": t} for t in texts])
    raw = base_config([tmp_path / "corpus"], tmp_path / "out", method=method, budget={"docs": docs})
    raw["input"]["rows_per_part"] = 100
    with LocalExecutor().active():
        return pipeline.run(parse_config(raw))


def test_a_run_hands_the_selector_heads_and_selects_the_smallest_random_keys(tmp_path):
    """The whole pipeline: a random selection of 10 of 400 documents in 4 parts holds 4 heads of
    ⌈1.25 · 10 / 4⌉ + 16 documents, and takes the 10 smallest seeded keys of the whole pool."""
    manifest = four_part_run(tmp_path, "random", 10)
    head = math.ceil(candidates.HEAD_MARGIN * 10 / 4) + candidates.MIN_HEAD
    assert manifest["stages"]["select"]["held_docs"] == 4 * head < manifest["accepted_docs"] == 400
    docs = read_folder(tmp_path / "out" / "docs")
    keys = random_keys(docs["id"].to_pylist(), manifest["seed"])
    smallest = {docs["id"][int(i)].as_py() for i in np.argsort(keys, kind="stable")[:10]}
    assert set(read_folder(tmp_path / "out" / "selected")["id"].to_pylist()) == smallest


def test_all_under_a_budget_takes_the_pool_in_order_from_the_parts_first_documents(tmp_path):
    """`all` with a budget of 150 of 400 documents in 4 parts: the first 150 in pool order, from
    heads of each part's first documents (part 0's grown to the whole part), not the pool."""
    manifest = four_part_run(tmp_path, "all", 150)
    assert manifest["stages"]["select"]["held_docs"] < manifest["accepted_docs"] == 400
    docs = read_folder(tmp_path / "out" / "docs")
    selected = read_folder(tmp_path / "out" / "selected")["id"].to_pylist()
    assert sorted(selected) == sorted(docs["id"].to_pylist()[:150])


def ccs_reference(scores, random_key, tokens, budget, bins, hard_fraction, hard_is_high):
    """CCS over the whole pool in memory (the selector's code before it went part by part)."""
    hardness = scores if hard_is_high else -scores
    kept = np.sort(np.argsort(-hardness, kind="stable")[int(hard_fraction * len(scores)) :])
    if not len(kept):
        return kept
    values = scores[kept]
    edges = np.linspace(values.min(), values.max(), bins + 1)
    stratum = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    strata = sorted((kept[stratum == j] for j in np.unique(stratum)), key=lambda m: (len(m), m[0]))
    by_tokens = budget.tokens is not None
    remaining = budget.tokens if by_tokens else budget.docs
    chosen = []
    for visited, members in enumerate(strata):
        order = members[np.argsort(random_key[members], kind="stable")]
        share = remaining // (len(strata) - visited)
        if by_tokens:
            within = np.cumsum(tokens[order]) <= share
            taken, left = list(order[within]), share - int(tokens[order[within]].sum())
            for doc in order[~within]:
                if tokens[doc] <= left:
                    taken.append(doc)
                    left -= int(tokens[doc])
            taken = np.array(taken, dtype=np.int64)
        else:
            taken = order[:share]
        chosen.append(taken)
        remaining -= int(tokens[taken].sum()) if by_tokens else len(taken)
    return np.concatenate(chosen)


def threshold_reference(scores, random_key, tokens, budget, low, high):
    low = float(np.nanmedian(scores)) if low is None else low
    passing = np.flatnonzero((scores >= low) & (scores <= (np.inf if high is None else high)))
    order = passing[np.argsort(random_key[passing], kind="stable")]
    return fill_budget(order, tokens, budget) if budget else order


@pytest.mark.parametrize("seed", range(12))
def test_threshold_and_ccs_from_the_parts_select_what_the_whole_pool_selects(tmp_path, seed):
    """Median, cut, strata and walks computed part by part (or from a pool in memory) equal the
    whole-pool selections, with ties at the cut, quarantined rows and document or token budgets;
    the parts send heads."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 120, rng.integers(1, 7)).tolist()
    parts = write_parts(tmp_path, rng, sizes, ties=seed % 2 == 0, stage="similarity")
    store = Store(str(tmp_path))
    dropped = {parts[0]: np.array([1, 3])} if sizes[0] > 3 else {}
    total = sum(sizes)
    budget = (
        {"docs": int(rng.integers(1, total // 3 + 2))}
        if seed % 3
        else {"tokens": int(rng.integers(1, 10 * total + 50))}
    )
    ccs = {"bins": int(rng.integers(1, 12)), "hard_fraction": float(rng.choice([0, 0.1, 0.35]))}
    ccs["hard_is_high"] = bool(seed % 4 < 2)
    low = None if seed % 2 else 0.5
    runs = {
        "stratified": ({"stratified": ccs}, budget),
        "threshold": ({"threshold": {"min": low}}, budget if seed % 5 else None),
    }
    for method, (options, method_budget) in runs.items():
        raw = {"input": {"paths": ["corpus/"]}, "output": {"path": str(tmp_path)}}
        raw["select"] = {"method": method, "budget": method_budget, **options}
        cfg = parse_config(raw)
        selector = registry.selector(method)
        with LocalExecutor().active():
            whole = gather_pool(store, parts, ["similarity"], cfg, dropped)
            heads, _ = selection_pool(selector, store, parts, ["similarity"], cfg, dropped)
        got = selector.select(heads, cfg, None)[0]
        values, keys, tokens = whole.scores["similarity"], whole.random_key, whole.tokens
        resolved = cfg.select.budget
        if method == "stratified":
            expected = ccs_reference(values, keys, tokens, resolved, **ccs)
        else:
            expected = threshold_reference(values, keys, tokens, resolved, low, None)
        assert chosen_rows(heads, got) == chosen_rows(whole, expected), method
        in_memory = selector.select(whole, cfg, None)[0]  # no plan: computed from the pool
        assert chosen_rows(whole, in_memory) == chosen_rows(whole, expected), method
        if method == "stratified" and total > 200:
            assert len(heads) < len(whole), "the parts sent heads, not the pool"


def test_group_values_are_dictionary_encoded_strings_shared_across_documents():
    table = pa.table(
        {
            "g": pa.chunked_array([["a", None, "b"], ["a", "c"]]),
            "n": [1, 2, None, 1, 2],
            "nested": [[1], [2], None, [1], [3]],
        }
    )
    assert category_values(table, "g").tolist() == ["a", "(none)", "b", "a", "c"]
    assert category_values(table, "n").tolist() == ["1", "2", "(none)", "1", "2"]
    assert category_values(table, "nested").tolist() == ["[1]", "[2]", "(none)", "[1]", "[3]"]
    assert category_values(table, "absent").tolist() == ["(none)"] * 5

    many = pa.table({"g": np.array(["news", "legal", "code"])[np.arange(300_000) % 3]})
    tracemalloc.start()
    values = pickle.loads(pickle.dumps(category_values(many, "g")))  # as the driver gets them
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert values[0] is values[3] and values.tolist()[:3] == ["news", "legal", "code"]
    assert held < 9 * len(values), f"{held / len(values):.1f} B per document"


def test_a_budget_over_the_pool_selects_every_document_though_ccs_sent_only_kept_ones(tmp_path):
    """CCS drops its hardest 30 % before the parts send heads; a budget larger than the pool still
    selects the whole pool (every document, one warning), as for any selector that does not
    filter."""
    texts = [f"{p} ({i})" for i, p in enumerate(stdlib_paragraphs(60))]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": t} for t in texts])
    raw = base_config(
        [tmp_path / "corpus"], tmp_path / "out", method="stratified", budget={"docs": 1000}
    )
    raw["input"]["rows_per_part"] = 20
    raw["select"]["stratified"] = {"column": "n_words", "hard_fraction": 0.3, "bins": 4}
    with LocalExecutor().active():
        manifest = pipeline.run(parse_config(raw))
    assert manifest["budget_exceeds_pool"] and manifest["selected_docs"] == 60


def round_robin_case(root, seed: int, unit: str, budget_share: float | None = None):
    """Similarity with 2–3 target sets on random parts (ties; part 0 holds the first task's
    best documents): the selection from the heads and from the whole pool, as (part, row)
    pairs, and how many documents the heads held of the pool's."""
    rng = np.random.default_rng(seed)
    store, tasks = Store(str(root)), int(rng.integers(2, 4))
    sizes = rng.integers(0, 150, rng.integers(1, 7)).tolist()
    parts, pool_tokens = [], 0
    for index, size in enumerate(sizes):
        part = f"p{index:03d}{layout.PART_SUFFIX}"
        ids = [f"d{index}-{row}" for row in range(size)]
        tokens = np.maximum(1, rng.pareto(1.2, size) * 20).astype(np.int64)
        pool_tokens += int(tokens.sum())
        docs = pa.table({"id": ids, "text": ["x"] * size, "tokens_approx": tokens})
        store.write_table(layout.docs(part), docs)
        scores = {f"similarity_task_t{t}": rng.integers(0, 6, size) * 1.0 for t in range(tasks)}
        if index == 0:
            scores["similarity_task_t0"] = scores["similarity_task_t0"] + 10
        table = pa.table({"id": ids, "similarity": np.zeros(size), **scores})
        store.write_table(layout.scores("similarity", part), table)
        parts.append(part)
    total = sum(sizes)
    size = pool_tokens if unit == "tokens" else total
    limit = int(rng.integers(1, size + 5)) if budget_share is None else int(budget_share * size)
    raw = {"input": {"paths": ["corpus/"]}, "output": {"path": str(root)}}
    raw["target"] = {"paths": ["t.jsonl"]}
    raw["select"] = {"method": "similarity", "budget": {unit: max(limit, 1)}}
    cfg = parse_config(raw)
    selector = registry.selector("similarity")
    with LocalExecutor().active():
        whole = gather_pool(store, parts, ["similarity"], cfg)
        heads, _ = selection_pool(selector, store, parts, ["similarity"], cfg)
    expected = chosen_rows(whole, selector.select(whole, cfg, None)[0])
    got = chosen_rows(heads, selector.select(heads, cfg, None)[0])
    return expected, got, len(heads), len(whole)


@pytest.mark.parametrize("unit", ["docs", "tokens"])
@pytest.mark.parametrize("seed", range(10))
def test_round_robin_over_target_tasks_from_heads_selects_what_the_whole_pool_selects(
    tmp_path, seed, unit
):
    """Several target sets, under a document or a token budget: each part sends heads of
    every task's ranking, grown where the round-robin looked past them (for tokens: while the
    fill could still take a document); the selection is the whole pool's."""
    expected, got, _, _ = round_robin_case(tmp_path, seed, unit)
    assert got == expected


@pytest.mark.parametrize("unit", ["docs", "tokens"])
def test_round_robin_heads_hold_less_than_the_pool_under_a_small_budget(tmp_path, unit):
    held = []
    for seed in range(4):
        expected, got, heads, whole = round_robin_case(tmp_path / str(seed), seed + 20, unit, 0.05)
        assert got == expected
        held.append((heads, whole))
    assert sum(h for h, _ in held) < 0.8 * sum(w for _, w in held), held
