"""EER, minDCF (with and without the full sort), bootstrap intervals, Cllr and min Cllr, each against an
independent computation."""

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

import metrics
from metrics import (
    bootstrap_metrics,
    cllr,
    compute_eer,
    compute_min_dcf,
    eer_from_points,
    min_cllr,
    min_dcf_from_points,
    operating_points,
    relevant_points,
    verification_metrics,
)

P_TARGETS = (0.01, 0.05)


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """The widespread recipe: linear interpolation of scikit-learn's ROC, root of 1 - tpr(fpr) - fpr."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def brute_force_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Every candidate threshold (each score, and above all), accept when score >= threshold."""
    tar, non = scores[labels == 1], scores[labels == 0]
    best = np.inf
    for t in np.r_[np.unique(scores), np.inf]:
        p_miss = np.mean(tar < t)
        p_fa = np.mean(non >= t)
        best = min(best, c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(labels * rng.uniform(0.5, 3), 1.0)
    assert compute_eer(scores, labels).eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)


def test_eer_with_ties_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(labels, 1.0), 1)  # many ties
    assert compute_eer(scores, labels).eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)


def test_eer_edge_cases():
    assert compute_eer(np.array([0.0, 1.0]), np.array([0, 1])).eer == 0.0  # separable
    assert compute_eer(np.array([1.0, 0.0]), np.array([0, 1])).eer == 1.0  # inverted
    assert compute_eer(np.ones(10), np.r_[np.ones(5), np.zeros(5)]).eer == pytest.approx(0.5)  # all equal
    scores = np.array([0.9, 0.1, 0.2, 0.3])
    result = compute_eer(scores, np.array([1, 0, 0, 0]))  # a single target, perfectly separated
    assert result.eer == 0.0 and 0.3 <= result.threshold <= 0.9
    with pytest.raises(ValueError):
        compute_eer(np.ones(3), np.ones(3))


def test_eer_threshold_splits_errors_evenly():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20000)
    scores = rng.normal(labels * 2.0, 1.0)
    result = compute_eer(scores, labels)
    p_miss = np.mean(scores[labels == 1] < result.threshold)
    p_fa = np.mean(scores[labels == 0] >= result.threshold)
    assert p_miss == pytest.approx(result.eer, abs=2e-3) and p_fa == pytest.approx(result.eer, abs=2e-3)


@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
@pytest.mark.parametrize("seed", range(3))
def test_min_dcf_matches_brute_force(p_target, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 1.5, 1.0), 2)
    assert compute_min_dcf(scores, labels, p_target).min_dcf == pytest.approx(
        brute_force_min_dcf(scores, labels, p_target), abs=1e-12)


def test_min_dcf_bounds():
    labels = np.array([1, 0] * 50)
    assert compute_min_dcf(np.ones(100), labels, 0.01).min_dcf == pytest.approx(1.0)  # nothing to gain
    assert compute_min_dcf(labels.astype(float), labels, 0.01).min_dcf == 0.0  # separable


def test_operating_points_are_monotone():
    rng = np.random.default_rng(3)
    points = operating_points(rng.normal(size=100), rng.integers(0, 2, 100))
    assert np.all(np.diff(points.p_miss) <= 0) and np.all(np.diff(points.p_fa) >= 0)
    assert points.p_miss[0] == 1 and points.p_fa[0] == 0 and points.p_miss[-1] == 0 and points.p_fa[-1] == 1


# --- without the full sort -------------------------------------------------------------------------------

@pytest.fixture
def always_binned(monkeypatch):
    """Send small lists through relevant_points' binned path (normally taken above 65,536 trials)."""
    monkeypatch.setattr("metrics.SORT_ALL_BELOW", 0)
    monkeypatch.setattr("metrics.TRIALS_PER_BIN", 2)


def score_lists():
    """Random scores of several kinds: continuous, rounded (ties), piled on one value, with an outlier."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(200, 3000))
        labels = rng.random(n) < rng.uniform(0.02, 0.6)
        labels[:2] = [True, False]
        scores = rng.normal(labels * rng.uniform(0, 3), 1.0)
        if seed % 3 == 1:
            scores = np.round(scores, int(rng.integers(0, 3)))
        if seed % 4 == 2:
            scores[rng.random(n) < 0.2] = 0.5
        if seed % 5 == 3:
            scores[0] = 1e4
        yield scores, labels


def test_verification_metrics_equal_the_full_sort(always_binned):
    for scores, labels in score_lists():
        points = operating_points(scores, labels)
        metrics = verification_metrics(scores, labels, P_TARGETS)
        assert metrics.eer == eer_from_points(points)  # same value and threshold, bit for bit
        for p in P_TARGETS:
            assert metrics.min_dcf[p] == min_dcf_from_points(points, p)


def test_verification_metrics_match_sklearn_and_brute_force(always_binned):
    for scores, labels in score_lists():
        metrics = verification_metrics(scores, labels, P_TARGETS)
        assert metrics.eer.eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)
        for p in P_TARGETS:
            assert metrics.min_dcf[p].min_dcf == pytest.approx(brute_force_min_dcf(scores, labels, p), abs=1e-12)


def test_relevant_points_are_a_subsequence_with_the_thresholds_the_metrics_read(always_binned):
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.3
    scores = rng.normal(labels * 2.0, 1.0)
    full, sub = operating_points(scores, labels), relevant_points(scores, labels)
    assert len(sub.p_miss) < len(full.p_miss) / 2  # the binned path did leave points out
    pairs = {(m, f): t for m, f, t in zip(full.p_miss, full.p_fa, full.thresholds)}
    for m, f, t in zip(sub.p_miss, sub.p_fa, sub.thresholds):
        assert (m, f) in pairs and (np.isnan(t) or t == pairs[(m, f)])


@pytest.mark.parametrize("scores, labels, eer", [
    (np.ones(10), np.r_[np.ones(5), np.zeros(5)], 0.5),  # all equal: one operating point besides +inf
    (np.array([0.9, 0.1, 0.2, 0.3]), np.array([1, 0, 0, 0]), 0.0),  # a single target
    (np.array([0.1, 0.9, 0.8]), np.array([1, 0, 0]), 1.0),  # a single target, below everything
])
def test_edge_cases_binned_and_direct(scores, labels, eer, monkeypatch):
    for binned in (False, True):
        if binned:
            monkeypatch.setattr("metrics.SORT_ALL_BELOW", 0)
        metrics = verification_metrics(scores, labels)
        assert metrics.eer.eer == pytest.approx(eer) == compute_eer(scores, labels).eer
        for p in P_TARGETS:
            assert metrics.min_dcf[p].min_dcf == pytest.approx(compute_min_dcf(scores, labels, p).min_dcf)


def test_large_list_takes_the_binned_path_and_agrees():
    rng = np.random.default_rng(3)
    labels = rng.random(200_000) < 0.1
    scores = rng.normal(labels * 2.5, 1.0).astype(np.float32)  # float32 scores, as cosine gives
    metrics = verification_metrics(scores, labels, P_TARGETS)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert len(relevant_points(scores, labels).p_miss) < 20_000
    assert metrics.eer.eer == pytest.approx(sklearn_eer(scores, labels), abs=1e-9)
    assert metrics.min_dcf[0.01] == compute_min_dcf(scores, labels, 0.01)


# --- bootstrap ---------------------------------------------------------------------------------------------

def test_bootstrap_replicates_are_weighted_resamples_of_the_trials():
    """The vectorised replicates equal EER / minDCF recomputed on explicitly resampled trial lists, built from
    the same draws (index i = the i-th target, or non-target, in decreasing score order)."""
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # ties
    ci = bootstrap_metrics(scores, labels, P_TARGETS, rounds=40, seed=5)
    draw = np.random.default_rng(5)
    tar = np.sort(scores[labels])[::-1]
    non = np.sort(scores[~labels])[::-1]
    tar_idx = draw.integers(0, len(tar), size=(40, len(tar)))
    non_idx = draw.integers(0, len(non), size=(40, len(non)))
    eers, dcfs = [], {p: [] for p in P_TARGETS}
    for t, n in zip(tar_idx, non_idx):
        s = np.r_[tar[t], non[n]]
        y = np.r_[np.ones(len(t)), np.zeros(len(n))]
        eers.append(compute_eer(s, y).eer)
        for p in P_TARGETS:
            dcfs[p].append(compute_min_dcf(s, y, p).min_dcf)
    assert ci.eer == pytest.approx(tuple(np.quantile(eers, [0.025, 0.975])), abs=1e-12)
    for p in P_TARGETS:
        assert ci.min_dcf[p] == pytest.approx(tuple(np.quantile(dcfs[p], [0.025, 0.975])), abs=1e-6)  # float32


def test_bootstrap_interval_contains_the_estimate_shrinks_and_is_seeded():
    rng = np.random.default_rng(1)
    widths = []
    for n in (500, 8000):
        labels = rng.random(n) < 0.5
        scores = rng.normal(labels * 2.0, 1.0)
        point = verification_metrics(scores, labels, P_TARGETS)
        ci = bootstrap_metrics(scores, labels, P_TARGETS, rounds=200, seed=0)
        assert ci.eer[0] <= point.eer.eer <= ci.eer[1]
        for p in P_TARGETS:
            assert ci.min_dcf[p][0] <= point.min_dcf[p].min_dcf <= ci.min_dcf[p][1]
        widths.append(ci.eer[1] - ci.eer[0])
        assert bootstrap_metrics(scores, labels, P_TARGETS, rounds=200, seed=0) == ci
        assert bootstrap_metrics(scores, labels, P_TARGETS, rounds=200, seed=1) != ci
    assert widths[1] < widths[0] / 2  # 16x the trials: about a quarter of the width


def test_bootstrap_edge_cases():
    ci = bootstrap_metrics(np.ones(10), np.r_[np.ones(5), np.zeros(5)], rounds=20)
    assert ci.eer == (0.5, 0.5) and ci.min_dcf[0.01] == (1.0, 1.0)  # all equal: nothing to resample
    ci = bootstrap_metrics(np.array([0.9, 0.1, 0.2, 0.3]), np.array([1, 0, 0, 0]), rounds=20)
    assert ci.eer == (0.0, 0.0)  # a single target above everything stays above in every replicate
    with pytest.raises(ValueError):
        bootstrap_metrics(np.ones(3), np.ones(3))


# --- Cllr ------------------------------------------------------------------------------------------------

def test_cllr_and_min_cllr_reference_values():
    labels = np.array([1, 1, 0, 0, 0])
    assert cllr(np.zeros(5), labels) == pytest.approx(1.0)  # llr 0 says nothing: 1 bit
    assert cllr(np.array([1.0, 2.0, -1.0, -3.0, 0.0]), labels) == pytest.approx(
        (np.mean(np.log2(1 + np.exp(-np.array([1.0, 2.0])))) + np.mean(np.log2(1 + np.exp([-1.0, -3.0, 0.0])))) / 2)
    assert min_cllr(np.array([5.0, 4.0, 1.0, 0.0, -1.0]), labels) == 0.0  # separable
    assert min_cllr(np.ones(5), labels) == pytest.approx(1.0)  # all equal: the prior, nothing more


# --- speaker bootstrap and paired comparisons -----------------------------------------------------------

def speaker_list(seed: int = 0, speakers: int = 12, trials: int = 600):
    """Scores with speaker effects, and each trial's two speakers."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.3, speakers)
    labels = rng.integers(0, 2, trials)
    enroll = rng.integers(0, speakers, trials)
    test = np.where(labels == 1, enroll, (enroll + rng.integers(1, speakers, trials)) % speakers)
    scores = np.where(labels == 1, 1.0 + effect[enroll], effect[enroll] + effect[test]) + rng.normal(0, 0.5, trials)
    return scores, labels, metrics.trial_speakers([f"s{i}" for i in enroll], [f"s{i}" for i in test])


def test_weighted_metrics_equal_the_metrics_of_the_list_with_trials_repeated():
    scores, labels, speakers = speaker_list()
    scores = np.round(scores, 1)  # ties
    order = np.argsort(-scores, kind="stable")
    last = np.r_[np.flatnonzero(np.diff(scores[order])), scores.size - 1]
    weights = metrics._speaker_weights(np.random.default_rng(3), 4, speakers)
    eer, dcf = metrics._weighted_metrics(order, last, labels.astype(bool), weights, (0.01, 0.05), 1.0, 1.0)
    for row in range(4):
        repeat = weights[row].astype(int)
        expected = metrics.verification_metrics(np.repeat(scores, repeat), np.repeat(labels, repeat))
        assert eer[row] == pytest.approx(expected.eer.eer, abs=1e-12)
        assert dcf[0.01][row] == pytest.approx(expected.min_dcf[0.01].min_dcf, abs=1e-9)
    ones = metrics._weighted_metrics(order, last, labels.astype(bool), np.ones((1, scores.size)), (0.01,), 1.0,
                                     1.0)[0]
    assert ones[0] == pytest.approx(metrics.compute_eer(scores, labels).eer, abs=1e-12)


def test_speaker_weights_count_copies_of_each_speaker():
    _, labels, speakers = speaker_list()
    weights = metrics._speaker_weights(np.random.default_rng(0), 1, speakers)[0]
    drawn = np.zeros(speakers.num_speakers)
    for e, t, w in zip(speakers.enroll, speakers.test, weights):
        if e == t:
            drawn[e] = w  # a target trial of speaker s: w_s
    for e, t, w in zip(speakers.enroll, speakers.test, weights):
        if e != t and drawn[e] and drawn[t]:
            assert w == drawn[e] * drawn[t]  # a non-target trial of a and b: w_a * w_b
    trial = metrics._trial_weights(np.random.default_rng(0), 2, labels.astype(bool))
    assert (trial[:, labels == 1].sum(axis=1) == (labels == 1).sum()).all()
    assert (trial[:, labels == 0].sum(axis=1) == (labels == 0).sum()).all()


def test_speaker_bootstrap_is_wider_than_the_trial_bootstrap_and_seeded():
    scores, labels, speakers = speaker_list()
    by_speaker = metrics.speaker_bootstrap(scores, labels, speakers, rounds=200, seed=1)
    by_trial = metrics.bootstrap_metrics(scores, labels, rounds=200, seed=1)
    eer = metrics.compute_eer(scores, labels).eer
    assert by_speaker.unit == "speaker" and by_trial.unit == "trial"
    assert by_speaker.eer[0] <= eer <= by_speaker.eer[1]
    assert by_speaker.eer[1] - by_speaker.eer[0] > by_trial.eer[1] - by_trial.eer[0]
    assert metrics.speaker_bootstrap(scores, labels, speakers, rounds=200, seed=1) == by_speaker


@pytest.mark.parametrize("unit", ["speaker", "trial"])
def test_paired_comparison_verdicts(unit):
    scores, labels, speakers = speaker_list(trials=1000)
    noisy = scores + np.random.default_rng(9).normal(0, 1.0, scores.size)
    spk = speakers if unit == "speaker" else None
    same = metrics.paired_comparison(scores, scores.copy(), labels, spk, rounds=100)
    assert same.eer == 0 and same.eer_ci == (0.0, 0.0) and same.verdict == "not resolved" and same.unit == unit
    better = metrics.paired_comparison(scores, noisy, labels, spk, rounds=100)
    assert better.eer < 0 and better.eer_ci[1] < 0 and better.verdict == "A better"
    assert metrics.paired_comparison(noisy, scores, labels, spk, rounds=100).verdict == "B better"
