"""train_sort's trimming, scoring and noise-detection figures on hand-made data."""

import numpy as np
import pytest

from bench.bench_sort import table
from train_sort import (
    detection,
    keep_range,
    keep_typical,
    leave_one_out_centroid_scores,
    percent_range,
    removal_counts,
)
from utils import UserError


def test_percent_range_accepts_percent_and_fractions_and_rejects_empty():
    assert percent_range([5, 95]) == (5, 95)
    assert percent_range([0.05, 0.95]) == pytest.approx((5, 95))
    assert percent_range([0, 90]) == (0, 90)
    for bad in ([50, 50], [90, 10], [-1, 50], [10, 101]):
        with pytest.raises(UserError, match="keeps nothing"):
            percent_range(bad)


def test_keep_range_exact_boundaries():
    scores = np.arange(21, dtype=float)  # 0..20
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 5, 95, 0)), np.arange(1, 20))
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 10, 90, 0)), np.arange(2, 19))
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 0, 90, 0)), np.arange(0, 19))
    assert keep_range(scores, 0, 100, 0).all()
    shuffled = np.random.default_rng(0).permutation(scores)  # the input order does not matter
    assert sorted(shuffled[keep_range(shuffled, 5, 95, 0)]) == list(range(1, 20))


@pytest.mark.parametrize("n, low, high, removed", [
    (30, 5, 95, (1, 2)), (10, 5, 95, (0, 1)), (21, 5, 95, (1, 1)), (20, 0, 90, (0, 2)), (20, 10, 100, (2, 0)),
    (15, 10, 90, (1, 2)), (7, 0, 80, (0, 1)), (8, 0, 80, (0, 2)),
])
def test_removal_counts_remove_the_asked_share(n, low, high, removed):
    assert removal_counts(n, low, high) == removed
    assert abs(sum(removed) - n * (low + 100 - high) / 100) <= 0.5  # within half an utterance of the share
    scores = np.random.default_rng(n).normal(size=n)
    assert keep_range(scores, low, high, 0).sum() == n - sum(removed)


def test_a_lower_bound_above_zero_does_not_always_drop_the_most_typical():
    scores = np.linspace(1.0, 0.0, 10)  # utterance 0 the most typical
    assert keep_typical(scores, 5, 95, 0)[0]  # 10 utterances at 5-95: one removed, from the atypical end


def test_keep_range_ties_are_broken_by_list_order():
    scores = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    assert keep_range(scores, 10, 90, 0).tolist() == [False] + [True] * 8 + [False]


def test_keep_range_tiny_speakers_keep_min_keep():
    assert keep_range(np.array([0.3]), 5, 95, 2).tolist() == [True]
    kept = keep_range(np.array([0.1, 0.9]), 40, 60, 2)  # the range alone keeps nothing
    assert kept.tolist() == [True, True]
    kept = keep_range(np.array([0.1, 0.5, 0.52, 0.9]), 45, 55, 2)
    assert kept.tolist() == [False, True, True, False]


def test_keep_typical_counts_percentiles_from_the_most_typical():
    scores = np.linspace(1.0, 0.0, 21)  # utterance i is the i-th most typical
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 0, 90, 0)), np.arange(0, 19))  # low tail out
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 10, 100, 0)), np.arange(2, 21))  # top out
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 5, 95, 0)), np.arange(1, 20))


def test_leave_one_out_centroid_matches_direct_computation():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 0])
    scores = leave_one_out_centroid_scores(emb, labels)
    for i in range(len(emb)):
        others = emb[(labels == labels[i]) & (np.arange(len(emb)) != i)]
        if len(others) == 0:
            assert scores[i] == 0.0
            continue
        mean = others.mean(0)
        assert scores[i] == pytest.approx(emb[i] @ mean / np.linalg.norm(mean))


def test_planted_outlier_scores_lowest_and_detection_figures():
    rng = np.random.default_rng(1)
    center = rng.normal(size=16)
    emb = center + 0.3 * rng.normal(size=(20, 16))
    emb[7] = rng.normal(size=16)  # a mislabelled utterance: another voice
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = leave_one_out_centroid_scores(emb, np.zeros(20, dtype=int))
    assert np.argmin(scores) == 7
    removed = {f"u{i}" for i in np.flatnonzero(~keep_typical(scores, 0, 95, 0))}  # drop the least typical 5%
    found = detection(removed, moved={"u7", "u12"})
    assert removed == {"u7"} and found.precision == 1.0 and found.recall == 0.5


def test_bench_sort_table_means_over_seeds_and_gap_closed():
    def rows(clean, noisy, trimmed):
        return [{"run": "clean", "noise": 0.0, "kept": "all", "eer": clean, "min_dcf": 0.5},
                {"run": "noisy-0.2", "noise": 0.2, "kept": "all", "eer": noisy, "min_dcf": 0.6},
                {"run": "noisy-0.2-keep0-90", "noise": 0.2, "kept": "0-90", "eer": trimmed, "min_dcf": 0.55,
                 "removed": 10, "precision": 0.9, "recall": 0.5, "auc": 0.98, "typical_share": 0.0}]

    text = table([rows(0.04, 0.07, 0.05), rows(0.06, 0.09, 0.07)])  # means 5 %, 8 %, 6 %
    lines = text.splitlines()
    assert "mean of 2 seeds" in lines[0]
    assert "| clean | 0 | all |" in lines[2] and "| 5.00 (4.00-6.00) |" in lines[2]
    trimmed = lines[4]
    assert "| 6.00 (5.00-7.00) |" in trimmed and trimmed.endswith("| 67% |")  # (8 - 6) / (8 - 5)
    assert "| 0.90 | 0.50 | 0.980 | 0.00 |" in trimmed
