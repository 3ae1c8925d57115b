"""Every verification metric the toolkit reports, defined here, and the operating points it reports them at.

  - EER (`compute_eer`, `eer_from_points`): the error rate where P_miss = P_fa, on the ROC interpolated
    linearly between operating points; a fraction, not a percent.
  - minDCF (`compute_min_dcf`, `min_dcf_from_points`), normalised as the NIST SRE 2008-2019 evaluation plans
    do: min over thresholds of C_miss P_miss P_target + C_fa P_fa (1 - P_target), divided by
    C_default = min(C_miss P_target, C_fa (1 - P_target)).
  - `verification_metrics`: the same EER and minDCFs (values and thresholds) without sorting every score.
  - Cllr and min Cllr (`cllr`, `min_cllr`; Brummer and du Preez, "Application-independent evaluation of
    speaker detection", CSL 2006), in bits, of log-likelihood ratios:
        Cllr = ( mean_targets log2(1 + e^-llr) + mean_nontargets log2(1 + e^llr) ) / 2
    min Cllr is the Cllr after the best monotone calibration of the scores (pool-adjacent-violators), i.e.
    the discrimination loss alone; Cllr - min Cllr is the calibration loss.
  - bootstrap intervals (`bootstrap_metrics`): percentile confidence intervals of the EER and the minDCFs
    over replicates of the trial list resampled by class.
  - P_TARGETS and CONFIDENCE: the minDCF operating points reported, and the confidence of the intervals.
Ties, thresholds and interpolation are defined in the comment block under "--- metrics" below.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

P_TARGETS = (0.01, 0.05)  # minDCF operating points reported
CONFIDENCE = 0.95  # of the bootstrap intervals


# --- metrics --------------------------------------------------------------------------------------------
#
# A trial is accepted when its score >= threshold. For every distinct score taken as the threshold (plus
# +inf, accepting nothing) one sorted pass gives the miss rate P_miss (targets rejected) and the false-alarm
# rate P_fa (non-targets accepted); ties are one operating point, never split.
#
# EER: the point where P_miss = P_fa on the ROC drawn by straight lines between those operating points
# (the same curve as scikit-learn's roc_curve with linear interpolation). A fraction, not a percent.
#
# minDCF (NIST SRE 2008-2019 evaluation plans): C_det(t) = C_miss P_miss(t) P_target + C_fa P_fa(t) (1 - P_target),
# normalised by C_default = min(C_miss P_target, C_fa (1 - P_target)), minimised over the thresholds.
#
# `verification_metrics` gives the same EER and minDCFs (same values, same thresholds) without sorting every
# score: see `relevant_points`. `bootstrap_metrics` gives their confidence intervals.

@dataclass(frozen=True)
class OperatingPoints:
    thresholds: np.ndarray  # (K,), decreasing, thresholds[0] = +inf
    p_miss: np.ndarray  # (K,), non-increasing
    p_fa: np.ndarray  # (K,), non-decreasing


def _trials(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Scores as float64 (N,), labels as bool (N,), and the target and non-target counts (both > 0)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    num_target = int(labels.sum())
    num_nontarget = labels.size - num_target
    if num_target == 0 or num_nontarget == 0:
        raise ValueError(f"need target and non-target trials, got {num_target} and {num_nontarget}")
    return scores, labels, num_target, num_nontarget


def operating_points(scores: np.ndarray, labels: np.ndarray) -> OperatingPoints:
    scores, labels, num_target, num_nontarget = _trials(scores, labels)
    groups = tie_groups(scores, labels)
    return OperatingPoints(
        thresholds=np.r_[np.inf, groups.scores],
        p_miss=1.0 - np.r_[0, np.cumsum(groups.targets)] / num_target,
        p_fa=np.r_[0, np.cumsum(groups.nontargets)] / num_nontarget,
    )


@dataclass(frozen=True)
class TieGroups:
    scores: np.ndarray  # (G,) distinct scores, decreasing
    targets: np.ndarray  # (G,) target trials with that score
    nontargets: np.ndarray  # (G,)


def tie_groups(scores: np.ndarray, labels: np.ndarray) -> TieGroups:
    """The trials grouped by distinct score, highest first: one operating point per group. One sort."""
    order = np.argsort(-scores)  # not stable: a tie is one group whatever its order
    sorted_scores = scores[order]
    hits = np.cumsum(labels[order])
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    targets = np.diff(np.r_[0, hits[last_of_tie]])
    return TieGroups(sorted_scores[last_of_tie], targets, np.diff(np.r_[0, last_of_tie + 1]) - targets)


@dataclass(frozen=True)
class EER:
    eer: float  # fraction in [0, 1]
    threshold: float  # the score at which P_miss = P_fa, interpolated between operating points


def eer_from_points(points: OperatingPoints) -> EER:
    gap = points.p_miss - points.p_fa  # decreasing from 1 to -1 over the points
    i = int(np.argmax(gap <= 0))  # first point at or past the crossing (i >= 1: gap[0] = 1)
    a = gap[i - 1] / (gap[i - 1] - gap[i])  # fraction of the segment (i-1, i) where the gap is zero
    eer = points.p_fa[i - 1] + a * (points.p_fa[i] - points.p_fa[i - 1])
    lo, hi = points.thresholds[i], points.thresholds[i - 1]
    threshold = lo if not np.isfinite(hi) else hi + a * (lo - hi)
    return EER(float(eer), float(threshold))


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> EER:
    return eer_from_points(operating_points(scores, labels))


@dataclass(frozen=True)
class MinDCF:
    min_dcf: float  # normalised, in [0, 1]
    threshold: float
    p_target: float


def min_dcf_from_points(points: OperatingPoints, p_target: float, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> MinDCF:
    dcf = c_miss * points.p_miss * p_target + c_fa * points.p_fa * (1.0 - p_target)
    i = int(np.argmin(dcf))
    return MinDCF(float(dcf[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))),
                  float(points.thresholds[i]), p_target)


def compute_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0,
                    c_fa: float = 1.0) -> MinDCF:
    return min_dcf_from_points(operating_points(scores, labels), p_target, c_miss, c_fa)


# --- metrics without the full sort, and their confidence intervals -------------------------------------

@dataclass(frozen=True)
class Metrics:
    eer: EER
    min_dcf: dict[float, MinDCF]  # p_target -> minDCF


def verification_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: tuple[float, ...] = (0.01, 0.05),
                         c_miss: float = 1.0, c_fa: float = 1.0) -> Metrics:
    """EER and the minDCF at each p_target: the values and thresholds of `eer_from_points` and
    `min_dcf_from_points` on `operating_points`, computed from `relevant_points` (no full sort)."""
    points = relevant_points(scores, labels, p_targets, c_miss, c_fa)
    eer = eer_from_points(points)
    min_dcf = {p: min_dcf_from_points(points, p, c_miss, c_fa) for p in p_targets}
    if np.isnan(eer.threshold) or any(np.isnan(d.threshold) for d in min_dcf.values()):  # cannot happen
        raise AssertionError("relevant_points dropped a threshold the metrics need")
    return Metrics(eer, min_dcf)


SORT_ALL_BELOW = 1 << 16  # relevant_points sorts smaller lists whole: binning gains nothing there
TRIALS_PER_BIN = 8  # relevant_points: bins = trials / 8, so a bin to refine holds a few dozen trials


def relevant_points(scores: np.ndarray, labels: np.ndarray, p_targets: tuple[float, ...] = (0.01, 0.05),
                    c_miss: float = 1.0, c_fa: float = 1.0) -> OperatingPoints:
    """The operating points the EER and the minDCFs at `p_targets` use, with their exact thresholds, found
    with a few linear passes over the scores instead of a sort of all of them (10 M trials: 0.4 s, against
    3.3 s for `operating_points` and 6 s for scikit-learn's roc_curve; bench/bench_eval.py).

    The result is a subsequence of `operating_points(scores, labels)` (same P_miss, P_fa, thresholds; a
    threshold the metrics never read is NaN), so `eer_from_points` and `min_dcf_from_points` return the same
    values and thresholds on both. How: the scores go into equal-width bins between their minimum and
    maximum (monotone in the score, so tied scores share a bin), and a histogram per class gives the exact
    operating point after each whole bin. Only these bins are then sorted and expanded into their own tie
    groups: the bin where P_miss - P_fa changes sign, and the one before it (the EER interpolates between
    two neighbouring points); for each p_target, the bin ending at the best whole-bin DCF (for its
    threshold) and every bin whose points could do at least as well -- a point inside a bin has P_miss no
    lower than after the bin and P_fa no lower than before it, which bounds its DCF from below. Every other
    bin stays one point (its last one). Small lists, non-finite scores, and lists where the bins to expand
    hold more than a quarter of the trials (scores piled on a few values) take `operating_points` instead.
    """
    scores, labels, num_target, num_nontarget = _trials(scores, labels)
    low, high = scores.min(), scores.max()
    num_bins = max(1, scores.size // TRIALS_PER_BIN)
    if scores.size < SORT_ALL_BELOW or not (np.isfinite(low) and np.isfinite(high)) or low == high:
        return operating_points(scores, labels)
    scale = num_bins / (high - low)
    if not np.isfinite(scale):
        return operating_points(scores, labels)
    bins = ((scores - low) * scale).astype(np.int64)  # monotone non-decreasing in the score
    np.minimum(bins, num_bins - 1, out=bins)
    rank = num_bins - 1 - bins  # 0 = the bin of the highest scores: points go from high to low thresholds
    counts = np.bincount(2 * rank + labels, minlength=2 * num_bins).reshape(num_bins, 2)  # (bins, [non, tar])
    filled = np.flatnonzero(counts.sum(axis=1))  # non-empty bins, by rank
    nontargets, targets = counts[filled, 0], counts[filled, 1]
    p_miss = 1.0 - np.r_[0, np.cumsum(targets)] / num_target  # (len(filled) + 1,): after each whole bin
    p_fa = np.r_[0, np.cumsum(nontargets)] / num_nontarget

    expand = _bins_to_expand(p_miss, p_fa, p_targets, c_miss, c_fa)
    if counts[filled[expand]].sum() > scores.size // 4:
        return operating_points(scores, labels)

    flag = np.zeros(num_bins, dtype=bool)
    flag[filled[expand]] = True
    inside = flag[rank]
    sub = tie_groups(scores[inside], labels[inside])  # tie groups of the expanded bins
    group_rank = num_bins - 1 - np.minimum(((sub.scores - low) * scale).astype(np.int64), num_bins - 1)
    rank_of_point = np.r_[group_rank, filled[~expand]]  # expanded groups (by rank, then score) + whole bins
    order = np.argsort(rank_of_point, kind="stable")  # two sorted runs: a linear merge
    accepted_targets = np.r_[0, np.cumsum(np.r_[sub.targets, targets[~expand]][order])]
    accepted_nontargets = np.r_[0, np.cumsum(np.r_[sub.nontargets, nontargets[~expand]][order])]
    thresholds = np.r_[sub.scores, np.full((~expand).sum(), np.nan)][order]
    return OperatingPoints(np.r_[np.inf, thresholds], 1.0 - accepted_targets / num_target,
                           accepted_nontargets / num_nontarget)


def _bins_to_expand(p_miss: np.ndarray, p_fa: np.ndarray, p_targets: tuple[float, ...], c_miss: float,
                    c_fa: float) -> np.ndarray:
    """(bins,) bool: the bins `relevant_points` expands into their tie groups, from the whole-bin operating
    points (p_miss, p_fa: (bins + 1,), the point after each bin)."""
    expand = np.zeros(len(p_miss) - 1, dtype=bool)
    crossing = int(np.argmax(p_miss - p_fa <= 0))  # the first whole-bin point at or past P_miss = P_fa
    expand[max(crossing - 2, 0):crossing] = True
    for p in p_targets:
        dcf = c_miss * p_miss * p + c_fa * p_fa * (1.0 - p)  # as min_dcf_from_points computes it
        best = int(np.argmin(dcf))
        if best > 0:
            expand[best - 1] = True
        lower_bound = c_miss * p_miss[1:] * p + c_fa * p_fa[:-1] * (1.0 - p)  # of the points inside each bin
        expand |= lower_bound <= dcf[best]
    return expand


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap confidence intervals, (low, high) each."""
    eer: tuple[float, float]  # fraction
    min_dcf: dict[float, tuple[float, float]]  # p_target -> normalised minDCF interval
    rounds: int
    confidence: float  # e.g. 0.95
    seed: int
    unit: str = "trial"  # what was resampled: "trial" (bootstrap_metrics) or "speaker" (speaker_bootstrap)


BOOTSTRAP_CHUNK = 1 << 22  # resampled trial counts held in memory at once (x 8 bytes, a few arrays)


def bootstrap_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: tuple[float, ...] = (0.01, 0.05), *,
                      rounds: int = 1000, confidence: float = 0.95, seed: int = 0, c_miss: float = 1.0,
                      c_fa: float = 1.0) -> BootstrapCI:
    """Confidence intervals of the EER and the minDCFs: the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of each metric over `rounds` bootstrap replicates of the trial list.

    A replicate draws, with replacement, as many target trials from the targets and as many non-target
    trials from the non-targets as the list holds (resampling stratified by class, so every replicate has
    both and the same class balance). Trials are resampled independently, although one utterance appears
    in many trials: the interval reflects the finite number of trials, not of speakers or recordings, and is
    narrower than a speaker-level interval would be (`speaker_bootstrap`; bench/bench_intervals.py measures
    the coverage of both).

    Vectorised, with one sort: a replicate is a count per trial (how often it was drawn; a multinomial,
    drawn as uniform indices and counted), and because the draw is uniform, index i can stand for the i-th
    target (or non-target) in decreasing score order. The count of targets accepted at each operating
    point of the sorted list is then a cumulative sum of the counts, read at the end of each tie group;
    P_miss, P_fa, EER and DCF follow for many replicates at once (BOOTSTRAP_CHUNK counts per block): the EER
    by a binary search per replicate for its crossing (float64), the minDCF as a minimum over all points of
    each replicate (float32 arithmetic, relative error ~1e-7, halving the memory traffic). Seeded: the same
    seed, scores and rounds give the same interval. VoxCeleb1-O size (37,720 trials), 1000 replicates: ~1 s.
    """
    scores, labels, num_target, num_nontarget = _trials(scores, labels)
    if rounds < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need rounds >= 1 and 0 < confidence < 1, got {rounds} and {confidence}")
    groups = tie_groups(scores, labels)
    targets_through = np.cumsum(groups.targets)  # (G,): targets in the groups down to this one
    nontargets_through = np.cumsum(groups.nontargets)
    rng = np.random.default_rng(seed)
    per_block = max(1, BOOTSTRAP_CHUNK // scores.size)
    eers, dcfs = [], {p: [] for p in p_targets}
    for start in range(0, rounds, per_block):
        block = min(per_block, rounds - start)
        accepted_targets = _resampled_accepted(rng, block, num_target, targets_through)  # (block, G + 1)
        accepted_nontargets = _resampled_accepted(rng, block, num_nontarget, nontargets_through)
        eers.append(_eer_of_rows(accepted_targets, accepted_nontargets, num_target, num_nontarget))
        for p in p_targets:  # C_det = C_miss p (1 - T / N_tar) + C_fa (1 - p) N / N_non, minimised per row
            a, b = c_miss * p, c_fa * (1.0 - p)
            lowest = (accepted_nontargets * np.float32(b / num_nontarget)
                      - accepted_targets * np.float32(a / num_target)).min(axis=1)
            dcfs[p].append((a + lowest.astype(np.float64)) / min(a, b))
    quantiles = [(1.0 - confidence) / 2, (1.0 + confidence) / 2]

    def interval(values: list[np.ndarray]) -> tuple[float, float]:
        low, high = np.quantile(np.concatenate(values), quantiles)
        return float(low), float(high)

    return BootstrapCI(interval(eers), {p: interval(v) for p, v in dcfs.items()}, rounds, confidence, seed)


def _resampled_accepted(rng: np.random.Generator, block: int, count: int, through: np.ndarray) -> np.ndarray:
    """(block, G + 1) float32 (exact integers): for each replicate, the resampled trials of one class accepted
    at each operating point (0 at the first, which accepts nothing); `through[g]` = the class's trials in tie
    groups 0..g."""
    draws = rng.integers(0, count, size=(block, count))
    draws += np.arange(block)[:, None] * count  # one bincount for the block: row r counts in [r * count, ...)
    drawn = np.bincount(draws.ravel(), minlength=block * count).reshape(block, count)  # (block, count)
    cumulative = np.zeros((block, count + 1), dtype=np.float32 if count < 1 << 24 else np.float64)
    np.cumsum(drawn, axis=1, out=cumulative[:, 1:])  # cumulative[:, k] = draws among the first k trials
    return np.take(cumulative, np.r_[0, through], axis=1)  # np.take: several times faster than [:, index]


def _eer_of_rows(targets: np.ndarray, nontargets: np.ndarray, num_target: int | np.ndarray,
                 num_nontarget: int | np.ndarray) -> np.ndarray:
    """`eer_from_points` for each row of (rows, points) counts of accepted targets and non-targets (of one
    total for every row, or (rows,) totals): a binary search per row for the first point where
    P_miss <= P_fa, i.e. T / N_tar + N / N_non >= 1 (rising along a row), then the interpolation between it
    and the point before, in float64."""
    rows = np.arange(len(targets))

    def gap(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # P_miss - P_fa and P_fa at points i of each row
        p_fa = nontargets[rows, i].astype(np.float64) / num_nontarget
        return 1.0 - targets[rows, i].astype(np.float64) / num_target - p_fa, p_fa

    low, high = np.zeros(len(rows), dtype=np.int64), np.full(len(rows), targets.shape[1] - 1)
    while np.any(high - low > 1):  # invariant: gap(low) > 0 >= gap(high); gap(0) = 1, gap(last) = -1
        middle = (low + high) // 2
        crossed = gap(middle)[0] <= 0
        low, high = np.where(crossed, low, middle), np.where(crossed, middle, high)
    (before, fa_before), (after, fa_after) = gap(low), gap(high)
    return fa_before + before / (before - after) * (fa_after - fa_before)


# --- speaker-level bootstrap and paired comparisons ---------------------------------------------------
#
# Trials share speakers: an EER measured on S speakers varies with the draw of those S speakers far more than
# the trial bootstrap says (speaker effects: some voices are easy, some are hard). The speaker bootstrap
# resamples speakers: a replicate draws S speakers with replacement (multiplicity w_s of speaker s, a
# multinomial with S draws) and weighs each trial by how often it would occur among the drawn speakers'
# trials: a target trial of speaker s by w_s, a non-target trial of speakers a and b by w_a * w_b (each copy
# of a speaker keeps its own target trials; every pair of drawn copies of two speakers meets in their
# non-target trials). The metrics of a replicate are those of the weighted list. The same replicate weights
# applied to two score lists of the same trials give the paired difference of two systems.

@dataclass(frozen=True)
class TrialSpeakers:
    """The speaker index of each trial's enrolment and test side, (N,) each, in [0, num_speakers)."""
    enroll: np.ndarray
    test: np.ndarray
    num_speakers: int


def trial_speakers(enroll: Sequence[str], test: Sequence[str]) -> TrialSpeakers:
    names = sorted(set(enroll) | set(test))
    index = {name: i for i, name in enumerate(names)}
    return TrialSpeakers(np.array([index[s] for s in enroll]), np.array([index[s] for s in test]), len(names))


def _speaker_weights(rng: np.random.Generator, block: int, speakers: TrialSpeakers) -> np.ndarray:
    """(block, N) trial weights of `block` speaker-bootstrap replicates (see the section header)."""
    s = speakers.num_speakers
    w = rng.multinomial(s, np.full(s, 1.0 / s), size=block).astype(np.float64)  # (block, S)
    we, wt = w[:, speakers.enroll], w[:, speakers.test]  # (block, N)
    return np.where(speakers.enroll == speakers.test, we, we * wt)


def _weighted_metrics(order: np.ndarray, last_of_tie: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                      p_targets: tuple[float, ...], c_miss: float, c_fa: float) -> tuple[np.ndarray, dict]:
    """EER (block,) and minDCF {p: (block,)} of each row of trial weights (block, N), the trials sorted by
    decreasing score in `order` with tie groups ending at `last_of_tie`. A row without targets or
    non-targets gives NaN."""
    w = weights[:, order]  # (block, N), sorted
    tar = np.cumsum(w * labels[order], axis=1)[:, last_of_tie]  # (block, G): accepted at each group
    non = np.cumsum(w * ~labels[order], axis=1)[:, last_of_tie]
    tar, non = np.pad(tar, ((0, 0), (1, 0))), np.pad(non, ((0, 0), (1, 0)))  # + the point accepting nothing
    num_t, num_n = tar[:, -1], non[:, -1]
    ok = (num_t > 0) & (num_n > 0)
    num_t, num_n = np.where(ok, num_t, 1.0), np.where(ok, num_n, 1.0)
    eer = np.where(ok, _eer_of_rows(tar, non, num_t, num_n), np.nan)
    dcfs = {}
    for p in p_targets:
        a, b = c_miss * p, c_fa * (1.0 - p)
        lowest = (non * (b / num_n)[:, None] - tar * (a / num_t)[:, None]).min(axis=1)
        dcfs[p] = np.where(ok, (a + lowest) / min(a, b), np.nan)
    return eer, dcfs


def _trial_weights(rng: np.random.Generator, block: int, labels: np.ndarray) -> np.ndarray:
    """(block, N) trial weights of `block` trial-bootstrap replicates: how often each trial is drawn when each
    class is resampled on its own (as bootstrap_metrics does)."""
    weights = np.zeros((block, labels.size))
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=block)
    return weights


Draw = Callable[[np.random.Generator, int], np.ndarray]  # (rng, block) -> (block, N) trial weights


def _replicates(scores: np.ndarray, labels: np.ndarray, draw: Draw, p_targets: tuple[float, ...],
                rounds: int, seed: int, c_miss: float, c_fa: float) -> tuple[np.ndarray, dict]:
    """EER (rounds,) and minDCF {p: (rounds,)} of `rounds` bootstrap replicates of one score list, each a row
    of trial weights from `draw`."""
    order = np.argsort(-scores, kind="stable")
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores[order])), scores.size - 1]
    rng = np.random.default_rng(seed)
    per_block = max(1, BOOTSTRAP_CHUNK // (4 * scores.size))
    eers, dcfs = [], {p: [] for p in p_targets}
    for start in range(0, rounds, per_block):
        weights = draw(rng, min(per_block, rounds - start))
        eer, dcf = _weighted_metrics(order, last_of_tie, labels, weights, p_targets, c_miss, c_fa)
        eers.append(eer)
        for p in p_targets:
            dcfs[p].append(dcf[p])
    return np.concatenate(eers), {p: np.concatenate(v) for p, v in dcfs.items()}


def _check_speakers(scores: np.ndarray, speakers: TrialSpeakers) -> None:
    if speakers.enroll.shape != scores.shape or speakers.test.shape != scores.shape:
        raise ValueError(f"{scores.size} scores but {speakers.enroll.size} / {speakers.test.size} trial speakers")
    if speakers.num_speakers < 2:
        raise ValueError("the speaker bootstrap needs trials of at least two speakers")


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.nanquantile(values, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    return float(low), float(high)


def speaker_bootstrap(scores: np.ndarray, labels: np.ndarray, speakers: TrialSpeakers,
                      p_targets: tuple[float, ...] = (0.01, 0.05), *, rounds: int = 1000, confidence: float = 0.95,
                      seed: int = 0, c_miss: float = 1.0, c_fa: float = 1.0) -> BootstrapCI:
    """Percentile intervals of the EER and the minDCFs over `rounds` speaker-bootstrap replicates (see the
    section header). Seeded. VoxCeleb1-O size (37,720 trials), 1000 replicates: a few seconds."""
    scores, labels, _, _ = _trials(scores, labels)
    _check_speakers(scores, speakers)
    draw = functools.partial(_speaker_weights, speakers=speakers)
    eer, dcf = _replicates(scores, labels, draw, p_targets, rounds, seed, c_miss, c_fa)
    return BootstrapCI(_percentile_interval(eer, confidence),
                       {p: _percentile_interval(v, confidence) for p, v in dcf.items()}, rounds, confidence, seed,
                       "speaker")


@dataclass(frozen=True)
class PairedComparison:
    """System A against system B on the same trials: differences A - B (fractions; negative = A better)."""
    eer: float  # EER(A) - EER(B)
    eer_ci: tuple[float, float]
    min_dcf: dict[float, float]  # p_target -> minDCF(A) - minDCF(B)
    min_dcf_ci: dict[float, tuple[float, float]]
    rounds: int
    confidence: float
    unit: str  # "speaker" or "trial"

    @property
    def verdict(self) -> str:
        """On the EER: 'A better' / 'B better' when the interval of the difference excludes 0."""
        return verdict(self.eer_ci)


def verdict(interval: tuple[float, float]) -> str:
    low, high = interval
    return "A better" if high < 0 else "B better" if low > 0 else "not resolved"


def paired_replicates(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray,
                      speakers: TrialSpeakers | None, p_targets: tuple[float, ...] = (0.01, 0.05), *,
                      rounds: int = 1000, seed: int = 0) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """EER(A) - EER(B) (rounds,) and minDCF differences {p: (rounds,)} over `rounds` bootstrap replicates that
    resample the same speakers (or, with `speakers` None, the same trials) for both systems. The replicates
    depend only on the seed and the trials: another pair of score lists of the same trials, with the same
    seed, is resampled with the same draws (sweep.py pools seeds this way)."""
    scores_a, labels, _, _ = _trials(scores_a, labels)
    scores_b, _, _, _ = _trials(scores_b, labels)
    if speakers is not None:
        _check_speakers(scores_a, speakers)
        draw: Draw = functools.partial(_speaker_weights, speakers=speakers)
    else:
        draw = functools.partial(_trial_weights, labels=labels)
    a = _replicates(scores_a, labels, draw, p_targets, rounds, seed, 1.0, 1.0)  # the same seed: the same
    b = _replicates(scores_b, labels, draw, p_targets, rounds, seed, 1.0, 1.0)  # replicates for both systems
    return a[0] - b[0], {p: a[1][p] - b[1][p] for p in p_targets}


def paired_comparison(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray,
                      speakers: TrialSpeakers | None, p_targets: tuple[float, ...] = (0.01, 0.05), *,
                      rounds: int = 1000, confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """The difference of two systems' EER and minDCFs on the same trials, with its percentile interval from
    replicates that resample the same speakers (or, with `speakers` None, the same trials) for both."""
    eer, dcf = paired_replicates(scores_a, scores_b, labels, speakers, p_targets, rounds=rounds, seed=seed)
    scores_a, labels, _, _ = _trials(scores_a, labels)
    ma, mb = verification_metrics(scores_a, labels, p_targets), verification_metrics(scores_b, labels, p_targets)
    return PairedComparison(ma.eer.eer - mb.eer.eer, _percentile_interval(eer, confidence),
                            {p: ma.min_dcf[p].min_dcf - mb.min_dcf[p].min_dcf for p in p_targets},
                            {p: _percentile_interval(dcf[p], confidence) for p in p_targets}, rounds,
                            confidence, "trial" if speakers is None else "speaker")


# --- log-likelihood-ratio cost --------------------------------------------------------------------------

def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Cllr in bits (see the header); 0 is perfect, 1 is what the constant llr = 0 gets."""
    llrs = np.asarray(llrs, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    miss = np.logaddexp(0.0, -llrs[labels]).mean()  # -ln P(target | x) at prior 0.5
    false_alarm = np.logaddexp(0.0, llrs[~labels]).mean()
    return float((miss + false_alarm) / (2.0 * math.log(2.0)))


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr of the optimal monotone calibration of the scores: pool-adjacent-violators (isotonic regression,
    tied scores pooled) gives posteriors at the list's own prior, turned into LLRs by removing that prior."""
    from sklearn.isotonic import IsotonicRegression

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    posterior = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(scores, labels)
    prior_odds = labels.sum() / (~labels).sum()
    with np.errstate(divide="ignore"):
        llrs = np.log(posterior) - np.log1p(-posterior) - math.log(prior_odds)  # +-inf where pure
    # a target never sits in a pooled block of posterior 0, a non-target never in one of 1: no inf reaches
    # a term that counts it, and logaddexp(0, -inf) = 0 for the others
    return cllr(llrs, labels)
