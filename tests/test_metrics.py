"""EER and minDCF against independent computations."""

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from utils import compute_eer, compute_min_dcf, operating_points


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
