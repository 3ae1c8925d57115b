"""Score normalisation, calibration and the report plots, each against an independent computation."""

import math

import numpy as np
import pytest

from metrics import cllr, min_cllr, operating_points
from scoring import (
    Scorer,
    bayes_threshold,
    cohort_stats,
    fit_calibration,
    l2_normalise,
    make_cohort,
    plot_det,
    plot_histograms,
)

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


def test_bayes_threshold():
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))


# --- report pieces -------------------------------------------------------------------------------------

def test_plots(tmp_path):
    scores, labels = gaussian_llr_scores(2000, np.random.default_rng(2))
    plot_det([("a", operating_points(scores, labels)), ("b", operating_points(scores / 2, labels))],
             tmp_path / "det.png")
    plot_histograms([("a", scores, labels)], tmp_path / "hist.png")
    for name in ("det.png", "hist.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
