"""Metrics without the full sort, bootstrap intervals, score normalisation and calibration, each against an
independent computation."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

import utils
from scoring import (
    Scorer,
    bayes_threshold,
    cllr,
    cohort_stats,
    fit_calibration,
    l2_normalise,
    make_cohort,
    markdown_table,
    min_cllr,
    plot_det,
    plot_histograms,
)
from tests.test_metrics import brute_force_min_dcf, sklearn_eer
from utils import (
    bootstrap_metrics,
    compute_eer,
    compute_min_dcf,
    eer_from_points,
    min_dcf_from_points,
    operating_points,
    relevant_points,
    verification_metrics,
)

P_TARGETS = (0.01, 0.05)


@pytest.fixture
def always_binned(monkeypatch):
    """Send small lists through relevant_points' binned path (normally taken above 65,536 trials)."""
    monkeypatch.setattr(utils, "SORT_ALL_BELOW", 0)
    monkeypatch.setattr(utils, "TRIALS_PER_BIN", 2)


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
            monkeypatch.setattr(utils, "SORT_ALL_BELOW", 0)
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


# --- normalisation -------------------------------------------------------------------------------------

def unit(rng, *shape):
    return l2_normalise(rng.normal(size=shape))


def test_as_norm_and_s_norm_match_the_formula():
    rng = np.random.default_rng(0)
    enroll, test, cohort = unit(rng, 4, 8), unit(rng, 5, 8), unit(rng, 30, 8)
    e_idx, t_idx = np.array([0, 1, 2, 3, 0, 3]), np.array([0, 1, 2, 3, 4, 4])
    scorer = Scorer(make_cohort(cohort, [f"s{i}" for i in range(30)], subtract=False), top_n=7)
    for norm, top_n in (("asnorm", 7), ("snorm", 30)):
        got = scorer.score(enroll, test, e_idx, t_idx, norm)
        for k, (i, j) in enumerate(zip(e_idx, t_idx)):
            s = enroll[i] @ test[j]
            top_e = np.sort(cohort @ enroll[i])[::-1][:top_n]  # the top_n cohort scores of each side
            top_t = np.sort(cohort @ test[j])[::-1][:top_n]
            direct = ((s - top_e.mean()) / top_e.std() + (s - top_t.mean()) / top_t.std()) / 2
            assert got[k] == pytest.approx(direct, abs=1e-12)
    assert np.allclose(Scorer(scorer.cohort, top_n=30).score(enroll, test, e_idx, t_idx, "asnorm"),
                       scorer.score(enroll, test, e_idx, t_idx, "snorm"))  # top_n = cohort size: S-norm
    assert np.allclose(scorer.score(enroll, test, e_idx, t_idx, "none"),
                       np.einsum("nd,nd->n", enroll[e_idx], test[t_idx]))


def test_cohort_is_per_speaker_means_and_mean_subtraction_applies_everywhere():
    rng = np.random.default_rng(1)
    utts = unit(rng, 6, 5)
    speakers = ["b", "a", "b", "c", "a", "a"]
    plain = make_cohort(utts, speakers, subtract=False)
    assert np.allclose(plain.mean, utts.mean(0)) and plain.num_utts == 6
    expected_a = utts[[1, 4, 5]].mean(0)
    assert np.allclose(plain.speakers[0], expected_a / np.linalg.norm(expected_a))  # speakers sorted: a, b, c
    centred = make_cohort(utts, speakers, subtract=True)
    shifted = l2_normalise(utts - utts.mean(0))
    expected_c = shifted[3]
    assert np.allclose(centred.speakers[2], expected_c)
    scorer = Scorer(centred, subtract=True)
    e, t = unit(rng, 1, 5), unit(rng, 1, 5)
    direct = l2_normalise(e - utts.mean(0))[0] @ l2_normalise(t - utts.mean(0))[0]
    assert scorer.score(e, t, np.array([0]), np.array([0]), "none")[0] == pytest.approx(direct)


def test_cohort_stats_chunking_and_floor():
    rng = np.random.default_rng(2)
    emb, cohort = unit(rng, 10, 4), unit(rng, 12, 4)
    stats = cohort_stats(emb, cohort, top_n=5)
    scores = emb @ cohort.T
    assert np.allclose(stats.mean, np.sort(scores, axis=1)[:, -5:].mean(1))
    flat = cohort_stats(emb, np.repeat(cohort[:1], 3, axis=0))  # identical cohort members: std 0, floored
    assert np.all(flat.std > 0)


# --- calibration ---------------------------------------------------------------------------------------

def gaussian_llr_scores(n, rng):
    """Targets ~ N(1, 1), non-targets ~ N(-1, 1): the true LLR of a score s is 2 s."""
    labels = rng.random(n) < 0.5
    return rng.normal(np.where(labels, 1.0, -1.0), 1.0), labels


@pytest.mark.parametrize("prior", [0.5, 0.01])
def test_calibration_recovers_true_llrs_at_any_prior(prior):
    scores, labels = gaussian_llr_scores(40_000, np.random.default_rng(0))
    calibration = fit_calibration(scores, labels, prior)
    assert calibration.slope == pytest.approx(2.0, abs=0.1) and calibration.offset == pytest.approx(0.0, abs=0.1)
    llrs = calibration.llr(np.linspace(-3, 3, 50))
    assert np.all(np.diff(llrs) > 0)  # monotone: a higher score is never less likely a target


def test_calibration_of_shifted_scaled_scores_is_monotone_and_lowers_cllr():
    scores, labels = gaussian_llr_scores(5000, np.random.default_rng(1))
    raw = 0.1 * scores + 0.7  # cosine-like: uncalibrated
    calibration = fit_calibration(raw, labels, 0.5)
    assert calibration.slope > 0
    calibrated = cllr(calibration.llr(raw), labels)
    assert min_cllr(raw, labels) <= calibrated < cllr(raw, labels)
    assert min_cllr(raw, labels) == pytest.approx(min_cllr(scores, labels))  # invariant to monotone maps


def test_cllr_and_min_cllr_reference_values():
    labels = np.array([1, 1, 0, 0, 0])
    assert cllr(np.zeros(5), labels) == pytest.approx(1.0)  # llr 0 says nothing: 1 bit
    assert cllr(np.array([1.0, 2.0, -1.0, -3.0, 0.0]), labels) == pytest.approx(
        (np.mean(np.log2(1 + np.exp(-np.array([1.0, 2.0])))) + np.mean(np.log2(1 + np.exp([-1.0, -3.0, 0.0])))) / 2)
    assert min_cllr(np.array([5.0, 4.0, 1.0, 0.0, -1.0]), labels) == 0.0  # separable
    assert min_cllr(np.ones(5), labels) == pytest.approx(1.0)  # all equal: the prior, nothing more
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))


# --- report pieces -------------------------------------------------------------------------------------

def test_plots_and_table(tmp_path):
    scores, labels = gaussian_llr_scores(2000, np.random.default_rng(2))
    plot_det([("a", operating_points(scores, labels)), ("b", operating_points(scores / 2, labels))],
             tmp_path / "det.png")
    plot_histograms([("a", scores, labels)], tmp_path / "hist.png")
    for name in ("det.png", "hist.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_table(["x", "y"], [{"x": 1, "y": "b"}]) == "| x | y |\n|---|---|\n| 1 | b |\n"
