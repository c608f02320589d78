"""The Quad bandit's arithmetic and bookkeeping, with a known influence landscape."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from distsel.algorithms.bandit import neighbour_weights, ucb_scores
from distsel.algorithms.influence_model import InfluenceModel, pool_features
from distsel.core.config import Budget
from distsel.core.storage import Store
from distsel.methods.quad import AUDIT_SHARE, PredictedQuadBandit, QuadBandit, make_bandit
from distsel.methods.quad.documents import QuadDocuments
from distsel.methods.quad.options import QuadOptions
from distsel.methods.quad.state import Checkpoints

ARMS, PER_ARM = 12, 40


def landscape(seed: int = 0):
    """12 clusters of 40 documents; clusters 3 and 7 hold the influential documents."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(ARMS), PER_ARM)
    quality = np.where(np.isin(np.arange(ARMS), [3, 7]), 1.0, -0.5)
    influence = quality[clusters] + 0.1 * rng.standard_normal(len(clusters))
    keys = rng.integers(0, 2**63, size=len(clusters), dtype=np.uint64)
    tokens = rng.integers(5, 50, size=len(clusters))
    centroids = rng.standard_normal((ARMS, 3))
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    return clusters, influence, keys, tokens, distances / distances.max()


def scorer(influence, calls=None):
    def score(groups):
        if calls is not None:
            calls.append([len(g) for g in groups])
        return [influence[g] for g in groups]

    return score


class Killed(Exception):
    pass


def dies_in_round(round_: int, influence):
    """A scorer that raises Killed when round `round_` asks for scores."""
    played = []

    def score(groups):
        played.append(1)
        if len(played) == round_:
            raise Killed
        return scorer(influence)(groups)

    return score


def make(budget=None, seed=0, **options):
    budget = budget or Budget(docs=60)
    clusters, influence, keys, tokens, distances = landscape()
    defaults = {
        "arms_per_round": 3,
        "draws_per_arm": 5,
        "docs_per_accept": 20,
        "rounds": 40,
        "within_cluster": "random",
    }
    options = QuadOptions(**{**defaults, **options})
    bandit = make_bandit(clusters, keys, tokens, distances, options, budget, seed, shards=3)
    return bandit, clusters, influence, tokens


def arm_order(arm: int, seed: int = 0) -> np.ndarray:
    """The arm's documents in their random order (by random key)."""
    clusters, _, keys, _, _ = landscape(seed)
    members = np.flatnonzero(clusters == arm)
    return members[np.argsort(keys[members], kind="stable")]


def test_ucb_score_is_shared_mean_plus_exploration_bonus():
    distances = np.array([[0.0, 0.1, 0.5], [0.1, 0.0, 0.5], [0.5, 0.5, 0.0]])
    weights = neighbour_weights(distances, gamma=0.2)
    assert weights[0, 1] == pytest.approx(0.5) and weights[0, 2] == 0 and weights[0, 0] == 0
    sums, pulls = np.array([2.0, -1.0, 0.0]), np.array([2.0, 1.0, 0.0])
    live = np.array([True, True, True])
    scores = ucb_scores(sums, pulls, weights, alpha=0.3, live=live)
    n = pulls.sum()
    expected = [
        (2.0 + 0.5 * -1.0) / (2 + 0.5 * 1) + 0.3 * math.sqrt(2 * math.log(n) / 3),
        (-1.0 + 0.5 * 2.0) / (1 + 0.5 * 2) + 0.3 * math.sqrt(2 * math.log(n) / 2),
        0.0 + 0.3 * math.sqrt(2 * math.log(n) / 1),
    ]
    assert scores == pytest.approx(expected)


def test_an_unpulled_arm_inherits_its_neighbours_rewards_only():
    distances = np.array([[0.0, 0.05, 0.9], [0.05, 0.0, 0.9], [0.9, 0.9, 0.0]])
    weights = neighbour_weights(distances, gamma=0.2)
    scores = ucb_scores(
        np.array([3.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), weights, 0.0, np.ones(3, bool)
    )
    assert scores[1] == pytest.approx(3.0), "neighbour's mean reward, weight cancels out"
    assert scores[2] == 0.0, "too far to share"


def test_retired_arms_are_never_pulled_and_exhaustion_stops_the_run():
    bandit, clusters, influence, _ = make(budget=Budget(docs=10_000), rounds=1000)
    bandit.state.cursors[3] = PER_ARM
    assert 3 not in bandit.choose_arms()
    chosen = bandit.run(scorer(influence))
    assert bandit.state.done == "every arm exhausted"
    assert bandit.state.cursors == [PER_ARM] * ARMS
    assert len(set(chosen.tolist())) == len(chosen)


def test_good_clusters_are_found_and_docs_budget_is_exact():
    bandit, clusters, influence, _ = make(budget=Budget(docs=60))
    chosen = bandit.run(scorer(influence))
    assert len(chosen) == 60 and bandit.state.done == "budget reached"
    share_good = np.isin(clusters[chosen], [3, 7]).mean()
    assert share_good >= 0.6
    assert bandit.state.evaluated < len(clusters) * 0.5, "influence only on draws"
    first_accept = next(h for h in bandit.state.history if h["accepted"])
    arm = first_accept["accepted"][0]
    assert np.isin(arm_order(arm)[:20], chosen).all(), "drawn docs count toward the m taken"


def test_token_budget_is_never_exceeded_and_cannot_take_more():
    bandit, _, influence, tokens = make(budget=Budget(tokens=1500))
    chosen = bandit.run(scorer(influence))
    used = int(tokens[chosen].sum())
    assert used <= 1500
    if bandit.state.done == "budget reached":
        drawn = np.concatenate([arm_order(arm)[:c] for arm, c in enumerate(bandit.state.cursors)])
        assert set(drawn.tolist()) == set(np.flatnonzero(bandit.docs.column("taken")).tolist())
        rest = np.setdiff1d(np.arange(len(tokens)), drawn)
        assert len(rest) == 0 or tokens[rest].min() > 1500 - used


def test_same_seed_same_selection():
    first = make(seed=4)[0].run(scorer(landscape()[1]))
    again = make(seed=4)[0].run(scorer(landscape()[1]))
    other = make(seed=5)[0].run(scorer(landscape()[1]))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_arms_are_scored_together_each_round():
    calls: list[list[int]] = []
    bandit, _, influence, _ = make()
    bandit.run(scorer(influence, calls))
    assert all(len(sizes) == 3 and set(sizes) <= {5} for sizes in calls)


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    clean, _, influence, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    expected = clean.run(scorer(influence))

    store = Store(str(tmp_path / "out"))
    crashed, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    with pytest.raises(Killed):
        crashed.run(dies_in_round(4, influence), store)
    assert store.read_json("_state/quad/state.json")["round"] == 3

    resumed, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    calls: list[list[int]] = []
    result = resumed.run(scorer(influence, calls), store)
    assert result.tolist() == expected.tolist()
    assert len(calls) == clean.state.round - 3, "finished rounds are not played again"
    assert resumed.state.history == clean.state.history

    changed, _, _, _ = make(budget=Budget(docs=90), docs_per_accept=10)
    assert not changed.resume(Checkpoints(store)), "another budget does not resume this run"


def saves_of(store: Store) -> list[dict[str, np.ndarray]]:
    found = []
    for name in store.list("_state/quad/saves", ".npz"):
        with np.load(
            io.BytesIO(store.read_bytes(f"_state/quad/saves/{name}")), allow_pickle=False
        ) as save:
            found.append({key: save[key] for key in save.files})
    return found


def test_each_checkpoint_writes_only_what_its_round_added(tmp_path):
    store = Store(str(tmp_path / "out"))
    bandit, influence, _ = make_predicted(max_evaluated=0.1)
    chosen = bandit.run(scorer(influence), store)
    saves = saves_of(store)
    assert len(saves) == bandit.state.round == store.read_json("_state/quad/state.json")["saves"]
    assert np.concatenate([s["selected"] for s in saves]).tolist() == chosen.tolist()
    grown = np.diff([0] + [r["selected"] for r in bandit.state.history])
    grown[-1] += bandit.state.filled  # the last round's fill
    assert [len(s["selected"]) for s in saves] == grown.tolist()
    assert np.concatenate([s["scored_rows"] for s in saves]).tolist() == bandit.state.scored_rows
    state = store.read_json("_state/quad/state.json")
    assert not {"scored_rows", "scored_values"} & set(state), "the draws are in the saves"


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints(tmp_path):
    """Run A finishes; run B (another budget) is killed in its second round; A's settings then
    start afresh, with B's checkpoints and none of A's saves on disk."""
    store = Store(str(tmp_path / "out"))
    first, _, influence, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    expected = first.run(scorer(influence), store)
    assert len(saves_of(store)) > 2
    other, _, _, _ = make(budget=Budget(docs=90), docs_per_accept=10)
    with pytest.raises(Killed):
        other.run(dies_in_round(2, influence), store)
    assert len(saves_of(store)) == store.read_json("_state/quad/state.json")["saves"] == 1
    again, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    assert not again.resume(Checkpoints(store))
    assert again.run(scorer(influence), store).tolist() == expected.tolist()


def test_a_state_in_the_old_layout_is_not_resumed(tmp_path):
    """state.json as written before saves/ (the selection in selected.npy) starts afresh."""
    store = Store(str(tmp_path / "out"))
    bandit, _, influence, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    expected = bandit.run(scorer(influence), store)
    old = store.read_json("_state/quad/state.json")
    old["fingerprint"].pop("layout")
    store.write_json("_state/quad/state.json", {**old, "scored_rows": [], "scored_values": []})
    again, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    again.state.fingerprint.pop("layout")
    assert again.resume(Checkpoints(store)), "the same fingerprint resumes"
    fresh, _, _, _ = make(budget=Budget(docs=100), docs_per_accept=10)
    assert not fresh.resume(Checkpoints(store))
    assert fresh.run(scorer(influence), store).tolist() == expected.tolist()


# ------------------------------------------------------------------ with the influence model


def smooth_landscape(seed: int = 0, arms: int = 20, per_arm: int = 100, dim: int = 8):
    """Embeddings = cluster centre + noise; influence = a linear function of the embedding plus a
    little noise, so it varies inside clusters too."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(arms), per_arm)
    centres = rng.standard_normal((arms, dim))
    embeddings = centres[clusters] + 0.7 * rng.standard_normal((len(clusters), dim))
    influence = embeddings @ rng.standard_normal(dim) + 0.1 * rng.standard_normal(len(clusters))
    keys = rng.integers(0, 2**63, size=len(clusters), dtype=np.uint64)
    tokens = rng.integers(5, 50, size=len(clusters))
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return clusters, embeddings, influence, keys, tokens, distances / distances.max()


def relevance(influence: np.ndarray, seed: int = 0) -> np.ndarray:
    """A classifier score that agrees with the influence only in part (correlation about 0.7)."""
    noise = np.random.default_rng(seed + 100).standard_normal(len(influence))
    return (influence - influence.mean()) / influence.std() + noise


def make_predicted(budget=None, seed=0, classifier=None, **options):
    clusters, embeddings, influence, keys, tokens, distances = smooth_landscape()
    classifier = relevance(influence) if classifier is None else classifier
    defaults = {"arms_per_round": 4, "draws_per_arm": 5, "max_evaluated": 0.05}
    bandit = make_bandit(
        clusters,
        keys,
        tokens,
        distances,
        QuadOptions(**{**defaults, **options}),
        budget or Budget(docs=100),
        seed,
        pool_features(embeddings, tokens, classifier),
        classifier,
    )
    return bandit, influence, tokens


def test_the_influence_model_recovers_a_known_function_from_few_scores():
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((2000, 16))
    tokens = rng.integers(10, 500, size=2000)
    truth = embeddings @ rng.standard_normal(16) + 0.5 * np.log1p(tokens)
    scored = rng.choice(2000, size=150, replace=False)
    noisy = truth[scored] + 0.05 * rng.standard_normal(150)
    model = InfluenceModel(pool_features(embeddings, tokens)).fit(scored, noisy)
    predicted = model.predict()
    assert np.corrcoef(predicted, truth)[0, 1] > 0.99
    assert np.abs(predicted - truth).mean() < 0.1 * truth.std()
    assert model.predict(scored[:5]) == pytest.approx(predicted[scored[:5]])


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_within_an_arm_documents_come_in_order_of_value(weight):
    bandit, influence, _ = make_predicted(classifier_weight=weight)
    assert isinstance(bandit, PredictedQuadBandit)
    rows = np.arange(0, 2000, 13)
    bandit._record_scores([rows], [influence[rows]])
    predictions, values = bandit.docs.predict(), bandit.docs.column("values")
    clusters = smooth_landscape()[0]
    for arm in (0, 7, 19):
        order = bandit.docs.best_of_arms(np.array([arm]), np.array([100]), "fresh")[0][0].rows
        assert not np.isin(order, rows).any(), "scored documents are not drawn again"
        assert np.all(np.diff(values[order]) <= 0), "best value first"
        if not weight:
            assert np.all(np.diff(predictions[order]) <= 0), "w = 0: best predicted first"
        assert set(order) == set(np.flatnonzero(clusters == arm)) - set(rows)


def test_predicted_quad_nears_top_k_while_scoring_a_twentieth():
    bandit, influence, _ = make_predicted()
    calls: list[list[int]] = []
    chosen = bandit.run(scorer(influence, calls))
    top_k = np.sort(influence)[-100:].mean()
    assert len(chosen) == 100 == len(set(chosen.tolist()))
    assert bandit.state.evaluated <= 100 == sum(map(sum, calls))
    assert influence[chosen].mean() >= 0.9 * top_k
    for entry in bandit.state.history:
        taken_blocks = entry["accepted"]
        assert entry["threshold"] is not None or not taken_blocks

    paper, _, _ = make_predicted(within_cluster="random", docs_per_accept=20)
    assert influence[paper.run(scorer(influence))].mean() < influence[chosen].mean()


def test_predicted_quad_keeps_a_token_budget():
    bandit, influence, tokens = make_predicted(budget=Budget(tokens=3000))
    chosen = bandit.run(scorer(influence))
    used = int(tokens[chosen].sum())
    assert used <= 3000
    rest = np.setdiff1d(np.arange(len(tokens)), chosen)
    assert tokens[rest].min() > 3000 - used, "stopped only when nothing else fits"


@pytest.mark.parametrize("killed_in", [4, 6], ids=["bandit round", "audit round"])
def test_a_killed_predicted_run_resumes_to_the_uninterrupted_result(tmp_path, killed_in):
    clean, influence, _ = make_predicted(max_evaluated=0.1)
    expected = clean.run(scorer(influence))
    assert clean.state.round > 6
    assert bool(clean.state.history[killed_in - 1].get("audited")) == (killed_in == 6)

    store = Store(str(tmp_path / "out"))
    crashed, _, _ = make_predicted(max_evaluated=0.1)
    with pytest.raises(Killed):
        crashed.run(dies_in_round(killed_in, influence), store)
    resumed, _, _ = make_predicted(max_evaluated=0.1)
    calls: list[list[int]] = []
    result = resumed.run(scorer(influence, calls), store)
    assert result.tolist() == expected.tolist()
    assert len(calls) == clean.state.round - killed_in + 1, "finished rounds are not played again"
    assert resumed.state.history == clean.state.history
    assert resumed.state.filled == clean.state.filled


class InfluenceUnits(PredictedQuadBandit):
    """Today's bandit before the classifier joined the value: v = s in influence units (θ,
    the audit's sd and noise too); the rewards and priors stay standardised."""

    def _value_moments(self):
        return 0.0, 1.0


@pytest.mark.parametrize(
    "options, budget, audit_share",
    [
        ({}, Budget(docs=100), AUDIT_SHARE),
        ({"max_evaluated": 0.1}, Budget(tokens=3000), 0.5),
        ({"scale": "raw", "tau": 0.2}, Budget(docs=400), AUDIT_SHARE),
    ],
    ids=["docs", "tokens, long audit", "raw scale"],
)
def test_with_no_classifier_weight_the_selection_is_the_influence_ranking(
    options, budget, audit_share
):
    """w = 0: v is the standardised s, a ranking the standardisation leaves alone, so the
    selection, rewards and history are those of the value in influence units."""
    options = {"classifier_weight": 0.0, **options}
    bandit, influence, _ = make_predicted(budget, **options)
    bandit.audit_share = audit_share
    chosen = bandit.run(scorer(influence))

    clusters, embeddings, _, keys, tokens, distances = smooth_landscape()
    defaults = {"arms_per_round": 4, "draws_per_arm": 5, "max_evaluated": 0.05}
    features = pool_features(embeddings, tokens, relevance(influence))
    documents = QuadDocuments.from_arrays(clusters, keys, tokens, 20, features)
    old = InfluenceUnits(documents, distances, QuadOptions(**{**defaults, **options}), budget, 0)
    old.audit_share = audit_share
    assert chosen.tolist() == old.run(scorer(influence)).tolist()
    assert bandit.state.filled == old.state.filled and bandit.state.round == old.state.round
    for new_round, old_round in zip(bandit.state.history, old.state.history, strict=True):
        assert {**new_round, "threshold": 0} == {**old_round, "threshold": 0}
    rows = np.asarray(bandit.state.scored_rows)
    values = np.asarray(bandit.state.scored_values)
    estimates = bandit.docs.predict()
    estimates[rows] = values
    assert bandit.docs.column("estimates").tolist() == estimates.tolist()
    assert estimates.tolist() == old.docs.column("values").tolist()
    center, spread = bandit._moments()
    assert bandit.docs.column("values").tolist() == ((estimates - center) / spread).tolist()


def test_the_value_is_the_standardised_influence_plus_the_weighted_classifier_score():
    """A brute-force v from the saved state, and the last bandit round's rewards: its draws'
    mean v − τ."""
    clusters, embeddings, influence, keys, tokens, distances = smooth_landscape()
    classifier = relevance(influence)
    groups: list[list[np.ndarray]] = []
    bandit, _, _ = make_predicted(classifier=classifier, classifier_weight=1.5, tau=0.1)
    bandit.audit_share = 0.0
    bandit.run(_recording(influence, groups))
    state = bandit.state
    rows = np.asarray(state.scored_rows)
    scores = np.asarray(state.scored_values)
    assert state.evaluated == len(rows) == len(set(rows.tolist()))
    assert scores.tolist() == influence[rows].tolist()
    model = InfluenceModel(pool_features(embeddings, tokens, classifier)).fit(rows, scores)
    s = model.predict()
    s[rows] = scores
    z = (classifier - classifier.mean()) / classifier.std()
    v = (s - scores.mean()) / scores.std() + 1.5 * z
    assert bandit.docs.column("values") == pytest.approx(v, rel=1e-9, abs=1e-9)
    last = state.history[-1]
    assert last["arms"] and len(groups[-1]) == len(last["arms"])
    expected = [float(v[g].mean()) - 0.1 for g in groups[-1]]
    assert last["rewards"] == pytest.approx(expected, abs=1e-5)


def _recording(influence, groups):
    def score(drawn):
        groups.append([np.asarray(g) for g in drawn])
        return [influence[g] for g in drawn]

    return score


def test_the_classifier_score_rescues_the_selection_when_influence_is_noise():
    """Influence is pure noise; the classifier score marks the target documents (a tenth of the
    pool). By influence alone Quad selects at random; with the classifier in the value it
    selects mostly target documents."""
    rng = np.random.default_rng(0)
    arms, per_arm, dim = 20, 100, 8
    clusters = np.repeat(np.arange(arms), per_arm)
    centres = rng.standard_normal((arms, dim))
    embeddings = centres[clusters] + 0.7 * rng.standard_normal((len(clusters), dim))
    target = rng.random(len(clusters)) < 0.1
    classifier = 2.0 * target + 0.5 * rng.standard_normal(len(clusters))
    influence = rng.standard_normal(len(clusters))
    keys = rng.integers(0, 2**63, size=len(clusters), dtype=np.uint64)
    tokens = rng.integers(5, 50, size=len(clusters))
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    features = pool_features(embeddings, tokens, classifier)

    def precision(weight):
        options = QuadOptions(
            arms_per_round=4, draws_per_arm=5, max_evaluated=0.1, classifier_weight=weight
        )
        bandit = make_bandit(
            clusters,
            keys,
            tokens,
            distances / distances.max(),
            options,
            Budget(docs=int(target.sum())),
            0,
            features,
            classifier,
        )
        return target[bandit.run(scorer(influence))].mean()

    blended, alone = precision(QuadOptions().classifier_weight), precision(0.0)
    # (by influence alone the precision is chance, 0.02 to 0.65 over seeds 0-7: the model
    # fits the noise, the classifier score among its covariates; with it, 0.83 to 0.89)
    assert blended >= 0.8 and alone <= 0.3 and blended - alone >= 0.5, (blended, alone)


def test_a_classifier_weight_needs_the_classifier_scores():
    clusters, embeddings, _, keys, tokens, distances = smooth_landscape()
    features = pool_features(embeddings, tokens)

    def bandit(**options):
        pool = (clusters, keys, tokens, distances, QuadOptions(**options), Budget(docs=10), 0)
        return make_bandit(*pool, features)

    with pytest.raises(ValueError, match="classifier scores"):
        bandit()
    assert isinstance(bandit(classifier_weight=0.0), PredictedQuadBandit)
    assert type(bandit(within_cluster="random")) is QuadBandit, "the paper's form has no value"


def test_with_fewer_scores_than_features_the_ridge_stays_at_least_the_mean_variance():
    """A bandit's usual case: 40 scored rows of 65 features. The least-squares interpolant would
    fit them exactly; the model keeps λ ≥ mean(s²) and still ranks the unscored rows."""
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((1000, 64))
    truth = embeddings[:, :4] @ np.array([2.0, -1.0, 1.0, 0.5])
    tokens = np.full(1000, 100)
    scored = rng.choice(1000, size=40, replace=False)
    model = InfluenceModel(pool_features(embeddings, tokens)).fit(scored, truth[scored])
    x = model.penalised[scored].astype(np.float64)
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    assert model.ridge >= np.mean(singular**2) * (1 - 1e-9)
    rest = np.setdiff1d(np.arange(1000), scored)
    assert np.corrcoef(model.predict(rest), truth[rest])[0, 1] > 0.5


def test_the_prediction_sd_grows_where_the_model_extrapolates_and_covers_the_truth():
    """Scored rows span only the first 8 of 16 embedding directions: the other rows, which
    also move along the last 8, get a larger sd, and ŷ ± 2 sd (noise included) holds the truth
    for about 95 % of the pool."""
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((1500, 16))
    scored = np.arange(300)
    embeddings[scored, 8:] = 0.0
    truth = embeddings @ rng.standard_normal(16) * 0.3
    tokens = rng.integers(10, 500, size=1500)
    noisy = truth + 0.2 * rng.standard_normal(1500)
    model = InfluenceModel(pool_features(embeddings, tokens)).fit(scored, noisy[scored])
    sd = model.predict_sd()
    assert np.median(sd[300:]) > 2 * np.median(sd[scored])
    band = 2 * np.sqrt(sd[300:] ** 2 + model.noise)
    covered = np.abs(model.predict()[300:] - noisy[300:]) <= band
    assert 0.85 <= covered.mean() <= 1.0
    unfitted = InfluenceModel(pool_features(embeddings, tokens))
    assert unfitted.predict_sd(scored[:3]).tolist() == [0] * 3


def test_the_fill_ranks_unscored_documents_by_a_lower_confidence_bound():
    bandit, influence, _ = make_predicted()
    rows = np.arange(0, 2000, 13)
    bandit._record_scores([rows], [influence[rows]])
    bandit.fill_confidence = 1.0
    bandit._fill("test")
    chosen = np.asarray(bandit.selected)
    values = bandit.docs.column("values")
    bound = values - bandit.docs.predict(sd=True) / bandit._moments()[1]
    bound[rows] = values[rows]
    rest = np.setdiff1d(np.arange(2000), chosen)
    assert len(chosen) == 100 and bound[chosen].min() >= bound[rest].max()


def test_the_audit_scores_the_documents_nearest_the_threshold_within_the_allowance():
    bandit, influence, _ = make_predicted(max_evaluated=0.1)
    bandit.audit_share = 0.5
    calls: list[list[int]] = []
    chosen = bandit.run(scorer(influence, calls))
    audits = [h for h in bandit.state.history if h.get("audited")]
    assert audits and bandit.state.evaluated == sum(map(sum, calls)) <= bandit.allowance
    assert sum(h["audited"] for h in audits) == bandit.audit
    assert all(h["arms"] == h["rewards"] == h["accepted"] == [] for h in audits), "no arm pulled"
    assert len(chosen) == 100 == len(set(chosen.tolist()))

    plain, _, _ = make_predicted(max_evaluated=0.1)
    plain.audit_share = 0.0
    plain_chosen = plain.run(scorer(influence))
    assert influence[chosen].mean() >= influence[plain_chosen].mean()


def test_an_audit_round_picks_the_smallest_distance_to_the_threshold_in_sds():
    bandit, influence, _ = make_predicted(max_evaluated=0.1)
    rows = np.arange(0, 2000, 13)
    bandit._record_scores([rows], [influence[rows]])
    bandit.state.evaluated, bandit.state.round, bandit.audit_share = len(rows), 1, 0.5
    threshold, sd = bandit.threshold(), bandit.docs.predict(sd=True)
    ambiguity = np.abs(bandit.docs.column("values") - threshold) / sd
    groups: list[np.ndarray] = []
    bandit.play_round(lambda g: groups.extend(g) or [influence[x] for x in g])
    picked = np.concatenate(groups)
    others = np.setdiff1d(np.arange(2000), np.concatenate([picked, rows]))
    assert len(picked) == 4 * 5 and ambiguity[picked].max() <= ambiguity[others].min()


# ---------------------------------------------------------------------------------------------
# Progress on the console


def test_the_rounds_report_their_progress_every_few_rounds(caplog, monkeypatch):
    import logging
    import re

    from distsel.methods.quad import bandit as quad

    line = re.compile(
        r"^quad: round (\d+)(?: \(stopped: [^)]+\))?, ([\d,]+)(/[\d,]+)? documents scored, "
        r"([\d,]+)/100 documents selected$"
    )
    bandit, influence, _ = make_predicted()
    with caplog.at_level(logging.INFO, logger="distsel"):
        chosen = bandit.run(scorer(influence))
    messages = [r.getMessage() for r in caplog.records if r.name == "distsel"]
    assert messages[0].startswith("quad: up to 200 rounds over 20 clusters, 4 arms a round")
    found = [line.match(m) for m in messages[1:]]
    assert all(found), messages
    rounds = [int(m.group(1)) for m in found]
    assert rounds[0] == 1 and rounds[-1] == bandit.state.round
    assert all(r % quad.PROGRESS_ROUNDS == 0 for r in rounds[1:-1])
    assert len(rounds) >= bandit.state.round // quad.PROGRESS_ROUNDS
    assert all(m.group(3) == f"/{bandit.allowance}" for m in found), "scored / allowance"
    assert "stopped: " in messages[-1] and found[-1].group(4) == str(len(chosen))

    monkeypatch.setattr(quad, "PROGRESS_SECONDS", 0.0)  # a line after every round then
    caplog.clear()
    paper, clusters, paper_influence, _ = make(budget=Budget(tokens=600))
    with caplog.at_level(logging.INFO, logger="distsel"):
        paper.run(scorer(paper_influence))
    lines = [r.getMessage() for r in caplog.records if r.name == "distsel"][1:]
    assert len(lines) == paper.state.round
    assert re.match(
        r"quad: round 1, 15 documents scored, [\d,]+ documents selected, "
        r"[\d,]+/600 tokens$",
        lines[0],
    ), lines[0]


def test_a_saved_state_holds_only_for_the_same_pool(tmp_path):
    """A pool of other documents (other ids, so other random keys) of the same size and
    clusters does not resume the saved bandit."""
    from distsel.core.config import Budget
    from distsel.core.storage import Store
    from distsel.methods.quad import make_bandit
    from distsel.methods.quad.options import QuadOptions

    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(4), 25)
    distances = np.ones((4, 4)) - np.eye(4)
    tokens = np.full(100, 10)
    options, budget = QuadOptions(within_cluster="random"), Budget(docs=20)

    def bandit(keys):
        return make_bandit(clusters, keys, tokens, distances, options, budget, 0)

    keys = rng.integers(0, 2**63, 100).astype(np.uint64)
    store = Store(str(tmp_path))
    first = bandit(keys)
    first.run(lambda groups: [np.ones(len(g)) for g in groups], store)
    assert bandit(keys.copy()).resume(Checkpoints(store))
    other = keys.copy()
    other[0] += np.uint64(1)
    assert not bandit(other).resume(Checkpoints(store))


def test_the_ridge_fit_and_its_leave_one_out_error_match_a_brute_force_refit():
    """The model's w, β at its chosen λ solve the penalised normal equations, and its noise (the
    leave-one-out error) equals n refits each without one row; with a repeated covariate (Z
    rank-deficient) too."""
    rng = np.random.default_rng(3)
    n, d = 40, 6
    embeddings = rng.standard_normal((n, d))
    tokens = rng.integers(5, 500, n)
    cosine = rng.standard_normal(n)
    e, free = pool_features(embeddings, tokens, cosine, cosine)
    y = embeddings @ rng.standard_normal(d) + cosine + 0.3 * rng.standard_normal(n)
    model = InfluenceModel((e, free)).fit(np.arange(n), y)
    z = np.column_stack([np.ones(n), free]).astype(np.float64)
    x = np.column_stack([z, e]).astype(np.float64)

    def solve(rows: np.ndarray) -> np.ndarray:
        penalty = np.diag([0.0] * z.shape[1] + [model.ridge] * d)
        return np.linalg.lstsq(x[rows].T @ x[rows] + penalty, x[rows].T @ y[rows], rcond=None)[0]

    whole = solve(np.arange(n))
    np.testing.assert_allclose(model.predict(), x @ whole, atol=1e-8)
    errors = [y[i] - x[i] @ solve(np.delete(np.arange(n), i)) for i in range(n)]
    assert model.noise == pytest.approx(float(np.mean(np.square(errors))), rel=1e-6)
