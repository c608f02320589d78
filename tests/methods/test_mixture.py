"""Mixture search: the simplex maps, sampling by weights, and tiny searches on local Ray."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import stdlib_paragraphs, torch_threads, write_jsonl
from ray import tune

from distsel.algorithms.simplex import (
    apportion,
    dirichlet_to_simplex,
    from_simplex,
    natural_weights,
    softmax,
    to_simplex,
    uniform_weights,
)
from distsel.app.report import write_report
from distsel.core.config import Budget, parse_config
from distsel.core.pool import Pool
from distsel.methods.mixture.sampling import sample_by_weights

PROSE = stdlib_paragraphs(260)
TINY_PROXY = {
    "layers": 1,
    "hidden": 32,
    "heads": 2,
    "vocab_size": 512,
    "max_length": 64,
    "batch_size": 8,
    "sample_docs": 400,
}


def code_snippets(count: int) -> list[str]:
    """Chunks of 12 lines of standard-library source."""
    chunks: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        chunks += ["\n".join(lines[i : i + 12]) for i in range(0, len(lines) - 12, 12)]
        if len(chunks) >= count:
            return chunks[:count]
    raise AssertionError("not enough stdlib source")


# ---------------------------------------------------------------------------------------------
# The simplex


@pytest.mark.parametrize("kind", ["dirichlet", "softmax"])
def test_simplex_maps_land_on_the_simplex(kind):
    rng = np.random.default_rng(0)
    params = rng.random((500, 5)) if kind == "dirichlet" else rng.normal(0, 3, (500, 5))
    weights = to_simplex(params, kind)
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_flat_dirichlet_transform_is_uniform_on_the_simplex():
    k = 4
    weights = dirichlet_to_simplex(np.random.default_rng(1).random((40_000, k)))
    np.testing.assert_allclose(weights.mean(axis=0), 1 / k, atol=0.005)
    # Dirichlet(1,…,1): Var w_i = (k − 1) / (k² (k + 1));
    # the marginal is Beta(1, k − 1), so P(w_i > ½) = ½^(k−1)
    np.testing.assert_allclose(weights.var(axis=0), (k - 1) / (k**2 * (k + 1)), rtol=0.05)
    np.testing.assert_allclose((weights > 0.5).mean(axis=0), 0.5 ** (k - 1), atol=0.01)


@pytest.mark.parametrize("kind", ["dirichlet", "softmax"])
def test_inverse_round_trips_the_seeded_points(kind):
    tokens = np.arange(100)  # 70 documents of group a, 25 of b, 5 of c
    natural = natural_weights(np.array([tokens[:70].sum(), tokens[70:95].sum(), tokens[95:].sum()]))
    assert natural.sum() == pytest.approx(1.0) and natural[2] == pytest.approx(485 / 4950)
    for w in (natural, uniform_weights(3), np.array([0.6, 0.3, 0.1])):
        np.testing.assert_allclose(to_simplex(from_simplex(w, kind), kind), w, atol=1e-9)
    np.testing.assert_allclose(from_simplex(uniform_weights(3)), np.exp(-1.0))
    np.testing.assert_allclose(softmax(np.zeros(3)), 1 / 3)


def test_apportion_is_exact_and_proportional():
    counts = apportion(10, np.array([0.55, 0.3, 0.15]))
    assert counts.sum() == 10 and counts.tolist() == [6, 3, 1]
    assert apportion(7, np.array([1.0, 1.0])).sum() == 7


# ---------------------------------------------------------------------------------------------
# Sampling by weights


def synthetic_pool(sizes: dict[str, int], seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    values = np.array([g for g, n in sizes.items() for _ in range(n)], dtype=object)
    count = len(values)
    return Pool(
        parts=["p0"],
        part_index=np.zeros(count, np.int32),
        row_index=np.arange(count, dtype=np.int64),
        tokens=rng.integers(10, 200, count),
        random_key=rng.integers(0, 2**63, count, dtype=np.uint64),
        categories={"group": values},
    )


def shares(pool: Pool, chosen: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(pool.categories["group"][chosen], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_docs_budget_is_exact_and_follows_the_weights():
    pool = synthetic_pool({"a": 500, "b": 500, "c": 500})
    chosen = sample_by_weights(pool, "group", {"a": 0.5, "b": 0.3, "c": 0.2}, Budget(docs=200))
    assert len(chosen) == 200 == len(set(chosen.tolist()))
    assert shares(pool, chosen) == {"a": 100, "b": 60, "c": 40}


def test_an_exhausted_group_passes_its_share_on_in_proportion():
    pool = synthetic_pool({"a": 30, "b": 500, "c": 500})
    chosen = sample_by_weights(pool, "group", {"a": 0.6, "b": 0.3, "c": 0.1}, Budget(docs=230))
    assert len(chosen) == 230
    assert shares(pool, chosen) == {"a": 30, "b": 150, "c": 50}


def test_tokens_budget_is_never_exceeded_and_follows_the_weights():
    pool = synthetic_pool({"a": 400, "b": 400})
    budget = Budget(tokens=20_000)
    chosen = sample_by_weights(pool, "group", {"a": 0.75, "b": 0.25}, budget)
    used = int(pool.tokens[chosen].sum())
    assert len(set(chosen.tolist())) == len(chosen)
    assert budget.tokens - 10 < used <= budget.tokens
    by_group = {g: pool.tokens[chosen][pool.categories["group"][chosen] == g].sum() for g in "ab"}
    assert by_group["a"] / used == pytest.approx(0.75, abs=0.02)


def test_a_budget_over_the_pool_takes_everything():
    pool = synthetic_pool({"a": 10, "b": 5})
    assert len(sample_by_weights(pool, "group", {"a": 0.5, "b": 0.5}, Budget(docs=99))) == 15


# ---------------------------------------------------------------------------------------------
# Searches on local Ray


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture-corpus")
    docs = [{"text": t, "group": "prose"} for t in PROSE[:200]]
    docs += [{"text": t, "group": "code"} for t in code_snippets(120)]
    write_jsonl(root / "pool.jsonl", docs)
    write_jsonl(root / "target.jsonl", [{"text": t} for t in PROSE[200:]])
    return root


def make_run(corpus: Path, out: Path, **mixture):
    """A parsed config, its ingested pool and the selector's context (no scoring stages). The
    corpus is ingested once (under corpus/ingested); each run starts from a copy of that."""
    from distsel.app import pipeline
    from distsel.core import corpus as corpus_module
    from distsel.core.pool import gather_pool
    from distsel.core.stage import StageContext
    from distsel.core.storage import Store

    options = {
        "trials": 4,
        "max_concurrent": 2,
        "train_tokens": 8192,
        "report_every": 4,
        "heldout_docs": 20,
        **mixture,
    }
    config = parse_config(
        {
            "input": {"paths": [str(corpus / "pool.jsonl")], "group_field": "group"},
            "target": {"paths": [str(corpus / "target.jsonl")]},
            "output": {"path": str(out)},
            "select": {"method": "mixture", "budget": {"docs": 60}},
            "proxy": TINY_PROXY,
            "mixture": options,
        }
    )
    shards = corpus_module.list_shards(config.input)
    base = corpus / "ingested"
    if not base.exists():
        pipeline.ingest(shards, config, Store(str(base)), {})
    shutil.copytree(base, out)
    store = Store(str(out))
    ingested = pipeline.ingest(shards, config, store, {})
    parts = [part for result in ingested for part in result.parts]
    return config, gather_pool(store, parts, [], config), StageContext(config, store, parts)


@pytest.mark.slow  # a Ray Tune search
def test_tune_search_end_to_end_with_optuna_and_asha(ray_local, corpus, tmp_path):
    from distsel.methods.mixture.selector import MixtureSelector, run_mixture_search

    config, pool, context = make_run(corpus, tmp_path / "out")
    chosen, section = MixtureSelector().select(pool, config, context)

    assert section["mode"] == "tune" and section["asha"] is True
    rows = section["trials"]
    assert len(rows) == 4
    assert [r["point"] for r in rows[:2]] == ["natural", "uniform"]
    assert all(r["status"] in ("completed", "stopped") for r in rows)
    assert set(section["best_weights"]) == {"code", "prose"}
    assert sum(section["best_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert section["best_loss"] == min(r["target_loss"] for r in rows if r["status"] == "completed")
    assert set(section["baseline_losses"]) == {"uniform", "natural"}
    assert section["proxy_steps"] >= sum(r["steps"] for r in rows)
    natural = next(r for r in rows if r["point"] == "natural")
    code = pool.tokens[pool.categories["group"] == "code"].sum() / pool.tokens.sum()
    assert natural["weights"] == pytest.approx({"code": code, "prose": 1 - code}, abs=1e-6)

    assert len(chosen) == 60
    groups = pool.categories["group"][chosen]
    expected = apportion(60, np.array([section["best_weights"][g] for g in ("code", "prose")]))
    assert [np.count_nonzero(groups == g) for g in ("code", "prose")] == expected.tolist()
    tokens = Path(tmp_path / "out" / "mixture" / "tokens")
    assert sorted(p.name for p in tokens.glob("*.npy")) == ["code.npy", "prose.npy"]
    assert np.load(tokens / "code.npy").dtype == np.int32

    weights, again = run_mixture_search(config, context)  # a finished search is reused
    assert again["resumed_trials"] == 4 and again["trials"] == rows
    assert weights == section["best_weights"] and again["proxy_steps"] == section["proxy_steps"]


def test_the_proxy_trainable_is_deterministic(corpus, tmp_path, ray_local):
    from distsel.methods.mixture.selector import prepare_data
    from distsel.methods.mixture.trials import train_mixture

    config, pool, context = make_run(corpus, tmp_path / "out", train_tokens=2048, report_every=2)
    data, _ = prepare_data(config, context)
    reports: list[dict] = []
    with torch_threads(1):  # as in a one-CPU trial
        first = train_mixture(np.array([0.8, 0.2]), data, reports.append)
        again = train_mixture(np.array([0.8, 0.2]), data, lambda m: None)
        other = train_mixture(np.array([0.2, 0.8]), data, lambda m: None)
    assert [r["steps"] for r in reports] == [2, 4]
    assert first == again == reports[-1]
    assert first != other


def finished_trials(out: Path) -> dict[str, dict]:
    """trial_id → record, for the finished trials in the search's trials file under `out`."""
    files = sorted((out / "mixture" / "trials").glob("*.json"))
    assert len(files) == 1, files
    return {t["trial_id"]: t for t in json.loads(files[0].read_text())["trials"]}


class InterruptOnce(tune.Callback):
    """Sends this process SIGUSR1 (Tune's 'save the experiment state and stop', as Ctrl+C)
    when the `count`-th trial completes; once only (the marker file)."""

    def __init__(self, count: int, marker: Path) -> None:
        self.count, self.marker, self.done = count, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done >= self.count and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_an_interrupted_search_resumes_without_rerunning_finished_trials(
    ray_local, corpus, tmp_path
):
    from distsel.methods.mixture.selector import run_mixture_search
    from distsel.methods.mixture.tune import MixtureInterrupted

    out = tmp_path / "out"
    config, pool, context = make_run(corpus, out, trials=6, asha=False, max_concurrent=1)
    steps = 16
    interrupt = InterruptOnce(2, tmp_path / "interrupted")
    with pytest.raises(MixtureInterrupted, match="run again to resume"):
        run_mixture_search(config, context, callbacks=[interrupt])
    earlier = finished_trials(out)
    assert 2 <= len(earlier) < 6
    assert all(t["metrics"]["steps"] == steps for t in earlier.values())

    _, section = run_mixture_search(config, context)
    rows = section["trials"]
    assert section["proxy"]["steps_per_trial"] == steps
    assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
    assert section["resumed_trials"] == len(earlier)
    later = finished_trials(out)
    assert len(later) == 6
    for trial_id, record in earlier.items():
        assert later[trial_id] == record, "a finished trial ran again"
    assert {r["trial_id"] for r in rows} == set(later)
    assert section["proxy_steps"] == 6 * steps


@pytest.mark.slow
def test_regmix_end_to_end(ray_local, corpus, tmp_path):
    from distsel.methods.mixture.selector import run_mixture_search

    config, pool, context = make_run(
        corpus, tmp_path / "out", mode="regmix", trials=3, regmix_samples=2000, regmix_top=20
    )
    weights, section = run_mixture_search(config, context)

    assert section["mode"] == "regmix"
    rows = section["trials"]
    assert len(rows) == 3 + 2 and all(r["status"] == "completed" for r in rows)
    assert [r["point"] for r in rows[:2]] == ["natural", "uniform"]
    regmix = section["regmix"]
    assert regmix["model"].startswith(("lightgbm", "sklearn"))
    assert np.isfinite(regmix["predicted_loss"]) and np.isfinite(regmix["real_loss"])
    assert section["best_loss"] == regmix["real_loss"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert section["proxy_steps"] == 6 * section["proxy"]["steps_per_trial"]


@pytest.mark.slow
def test_distsel_run_with_the_mixture_selector(ray_local, corpus, tmp_path):
    from distsel.app import pipeline

    raw = {
        "input": {"paths": [str(corpus / "pool.jsonl")], "group_field": "group"},
        "target": {"paths": [str(corpus / "target.jsonl")]},
        "output": {"path": str(tmp_path / "out")},
        "select": {"method": "mixture", "budget": {"docs": 40}},
        "proxy": TINY_PROXY,
        "mixture": {"trials": 2, "max_concurrent": 2, "train_tokens": 4096, "report_every": 4},
    }
    manifest = pipeline.run(parse_config(raw))
    section = manifest["mixture"]
    assert manifest["selected_docs"] == 40
    held = manifest["stages"]["select"]["held_docs"]
    assert held < manifest["accepted_docs"], "the driver holds the groups' heads, not the pool"
    assert set(section["best_weights"]) == {"code", "prose"}
    assert sum(section["best_weights"].values()) == pytest.approx(1.0)
    assert set(section["baseline_losses"]) == {"uniform", "natural"}
    assert len(section["trials"]) == 2

    page = Path(write_report(str(tmp_path / "out"))).read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert "mixture: target loss vs each group&#x27;s weight" in captions
    assert "mixture: best target loss so far" in captions


@pytest.mark.slow
def test_cluster_groups_searched_in_the_mixture_phase_then_reused(ray_local, corpus, tmp_path):
    from distsel.app import pipeline

    raw = {
        "input": {"paths": [str(corpus / "pool.jsonl")]},
        "target": {"paths": [str(corpus / "target.jsonl")]},
        "output": {"path": str(tmp_path / "out")},
        "select": {"method": "mixture", "budget": {"docs": 30}},
        "proxy": TINY_PROXY,
        "embed": {"max_length": 32},
        "mixture": {
            "group_field": "cluster",
            "clusters": 2,
            "trials": 2,
            "max_concurrent": 2,
            "train_tokens": 4096,
            "report_every": 4,
        },
    }
    config = parse_config(raw)
    search = pipeline.run(config, phase="mixture")
    assert set(search["best_weights"]) == {"cluster-0", "cluster-1"}
    saved = json.loads((tmp_path / "out" / "mixture" / "search.json").read_text())
    assert saved["best_loss"] == search["best_loss"]
    assert not (tmp_path / "out" / "selected").exists()

    manifest = pipeline.run(config)
    assert manifest["mixture"]["resumed_trials"] == 2, "the finished search is reused"
    assert manifest["mixture"]["best_weights"] == search["best_weights"]
    assert manifest["selected_docs"] == 30
    assert manifest["stages"]["cluster"]["summary"]["clusters"] == 2


def test_doremi_update_on_a_two_group_toy_by_hand():
    """α = (½, ½), λ = (0.2, 0), η = 1, c = 1e-3: α' = (e^0.2, 1) / (e^0.2 + 1) =
    (0.549834, 0.450166), α = 0.999 α' + 0.0005 = (0.549784, 0.450216)."""
    from distsel.algorithms.doremi import update_domain_weights

    new = update_domain_weights(np.array([0.5, 0.5]), np.array([0.2, 0.0]))
    e = math.exp(0.2)
    assert new == pytest.approx([0.999 * e / (e + 1) + 0.0005, 0.999 / (e + 1) + 0.0005])
    # a group that keeps the larger excess loss takes the weight, the smoothing keeps c / k
    weights = np.array([0.5, 0.5])
    for _ in range(200):
        weights = update_domain_weights(weights, np.array([0.5, 0.1]))
    assert weights[0] > 0.99 and weights[1] >= 1e-3 / 2


def test_doremi_excess_loss_is_per_token_and_clipped():
    """Group 0's rows: (1 − 0.5) + (2 − 3 → 0) over 2 tokens, and 0.5 + 0.5 over 2 more: 0.375;
    group 1: one row, 1 + 1 over 2 tokens = 1; group 2 has no row: 0."""
    from distsel.algorithms.doremi import excess_losses

    proxy = np.array([[1.0, 2.0], [3.0, 1.5], [2.0, 3.0]])
    reference = np.array([[0.5, 3.0], [2.5, 1.0], [1.0, 2.0]])
    excess = excess_losses(proxy, reference, np.array([0, 0, 1]), 3)
    assert excess.tolist() == pytest.approx([0.375, 1.0, 0.0])


@pytest.mark.slow
def test_doremi_end_to_end(ray_local, corpus, tmp_path):
    from distsel.methods.mixture.selector import run_mixture_search

    config, pool, context = make_run(corpus, tmp_path / "out", mode="doremi", train_tokens=4096)
    weights, section = run_mixture_search(config, context)
    assert section["mode"] == "doremi" and section["trials"] == []
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(w >= 1e-3 / 2 for w in weights.values())
    steps = section["proxy"]["steps_per_trial"]
    assert section["proxy_steps"] == 5 * steps, "reference, DRO proxy, check, two baselines"
    assert np.isfinite(section["best_loss"])
    assert set(section["baseline_losses"]) == {"uniform", "natural"}
    again_weights, again = run_mixture_search(config, context)
    assert again_weights == weights and again["best_loss"] == section["best_loss"]
