"""From embeddings to decisions: score normalisation, calibration, and the evaluation plots (DET curve,
score histogram). The metrics (EER, minDCF, Cllr) are in metrics.py.

Score normalisation (every score starts as the cosine of two L2-normalised embeddings):
  - mean subtraction: the training-set mean embedding is subtracted from every embedding (trial sides and
    cohort alike), which is re-normalised, before the cosine.
  - S-norm (symmetric normalisation; Kenny, "Bayesian speaker verification with heavy-tailed priors", Odyssey
    2010): with mu_e, sigma_e the mean and standard deviation of the enrolment embedding's scores against every
    cohort embedding, and mu_t, sigma_t the same for the test embedding,
        s' = ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) / 2
  - AS-norm (adaptive S-norm; Cumani et al., "Comparison of speaker recognition approaches for real
    applications", Interspeech 2011; Matejka et al., "Analysis of score normalization in multilingual speaker
    recognition", Interspeech 2017): the same, but each side's statistics come from its top-N highest cohort
    scores only (the N cohort speakers most similar to that side).
  The cohort is one embedding per training speaker (the normalised mean of its utterances' embeddings: min(N,
  count) seeded-random ones, --cohort-utts-per-speaker N, default 10, 0 = all; evaluation.build_cohort); the
  standard deviation is the population one (ddof=0).

Calibration (Brummer and du Preez, "Application-independent evaluation of speaker detection", CSL 2006;
BOSARIS toolkit): an affine map llr = a * score + b from scores to log-likelihood ratios, fitted by logistic
regression on a development list with the targets and non-targets weighted to the prior p (total weights p and
1 - p), so that the log posterior odds it learns are llr + logit(p). Cllr and min Cllr (metrics.py) measure
the LLRs. With C_miss = C_fa = 1 the Bayes decision for prior p accepts when llr >= log((1 - p) / p).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metrics import OperatingPoints
from utils import UserError, atomic_path, atomic_write_text

log = logging.getLogger("voiceprint")

SCORE_NORMS = ("none", "snorm", "asnorm")
STD_FLOOR = 1e-6  # lower bound on a cohort score standard deviation (a degenerate cohort)
COHORT_CHUNK = 4096  # embeddings scored against the cohort at once (x cohort size x 8 bytes)
SCORE_CHUNK = 1 << 18  # trials scored at once (their two (chunk, D) embedding matrices in memory)


# --- normalisation --------------------------------------------------------------------------------------

def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, (N, D) -> (N, D); a zero row stays zero."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def subtract_mean(embeddings: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(N, D) embeddings minus the (D,) training-set mean, re-normalised."""
    return l2_normalise(embeddings - mean)


def cosine_pairs(enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of two (N, D) L2-normalised matrices -> (N,)."""
    return np.einsum("nd,nd->n", enroll, test)


@dataclass(frozen=True)
class CohortStats:
    mean: np.ndarray  # (N,) mean of each embedding's (top-N) cohort scores
    std: np.ndarray  # (N,) their population standard deviation, floored at STD_FLOOR


def cohort_stats(embeddings: np.ndarray, cohort: np.ndarray, top_n: int = 0) -> CohortStats:
    """Statistics of the cosine scores of each of (N, D) embeddings against a (S, D) cohort: over the top_n
    highest scores (AS-norm), or over all S (top_n 0 or >= S: S-norm)."""
    if len(cohort) == 0:
        raise ValueError("the score-normalisation cohort is empty")
    top_n = len(cohort) if top_n <= 0 else min(top_n, len(cohort))
    means, stds = [], []
    for start in range(0, len(embeddings), COHORT_CHUNK):
        scores = embeddings[start:start + COHORT_CHUNK].astype(np.float64) @ cohort.T.astype(np.float64)
        if top_n < len(cohort):
            scores = np.partition(scores, len(cohort) - top_n, axis=1)[:, len(cohort) - top_n:]  # the top_n
        means.append(scores.mean(axis=1))
        stds.append(scores.std(axis=1))
    return CohortStats(np.concatenate(means), np.maximum(np.concatenate(stds), STD_FLOOR))


def symmetric_norm(scores: np.ndarray, enroll: CohortStats, test: CohortStats) -> np.ndarray:
    """S-norm / AS-norm of (N,) trial scores, given each trial's enrolment and test side statistics."""
    return 0.5 * ((scores - enroll.mean) / enroll.std + (scores - test.mean) / test.std)


@dataclass(frozen=True)
class Cohort:
    """The training-set mean and one embedding per training speaker."""
    mean: np.ndarray  # (D,) training-set mean embedding: the mean of the cohort utterances' embeddings
    speakers: np.ndarray  # (S, D) one L2-normalised embedding per training speaker (mean subtracted if asked)
    num_utts: int
    train_list: str


def make_cohort(embeddings: np.ndarray, speakers: Sequence[str], subtract: bool, source: str = "") -> Cohort:
    """From (U, D) L2-normalised training utterance embeddings and their speakers: the mean of all of them,
    and per speaker the normalised mean of its utterances (taken after the mean subtraction, if `subtract`)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    mean = embeddings.mean(axis=0)
    if subtract:
        embeddings = subtract_mean(embeddings, mean)
    names = sorted(set(speakers))
    index = {s: i for i, s in enumerate(names)}
    sums = np.zeros((len(names), embeddings.shape[1]))
    np.add.at(sums, [index[s] for s in speakers], embeddings)
    return Cohort(mean, l2_normalise(sums), len(embeddings), source)


@dataclass(frozen=True)
class Scorer:
    """Cosine scores, after the training-mean subtraction if asked, then S-norm or AS-norm."""
    cohort: Cohort | None = None
    subtract: bool = False
    top_n: int = 300

    def prepare(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float64)
        return subtract_mean(embeddings, self.cohort.mean) if self.subtract else embeddings

    def score(self, enroll: np.ndarray, test: np.ndarray, enroll_index: np.ndarray, test_index: np.ndarray,
              norm: str) -> np.ndarray:
        """Scores of the trials (enroll[enroll_index[i]], test[test_index[i]]); enroll (E, D), test (T, D)."""
        return score_sides(self.side(enroll, norm), self.side(test, norm), enroll_index, test_index)

    def side(self, embeddings: np.ndarray, norm: str) -> Side:
        """(N, D) embeddings of one trial side made ready to score under `norm`: computed once per side, however
        many trials index it."""
        embeddings = self.prepare(embeddings)
        if norm == "none":
            return Side(embeddings, None)
        if self.cohort is None:
            raise ValueError(f"score norm {norm} needs a cohort")
        return Side(embeddings, cohort_stats(embeddings, self.cohort.speakers, self.top_n if norm == "asnorm" else 0))

    def score_trials(self, trials: Sequence, enroll: dict[str, np.ndarray], test: dict[str, np.ndarray],
                     norm: str) -> np.ndarray:
        """Scores of trials (each with .enroll and .test keys), embeddings looked up per side."""
        enroll_keys = sorted({t.enroll for t in trials})
        test_keys = sorted({t.test for t in trials})
        e_index, t_index = {k: i for i, k in enumerate(enroll_keys)}, {k: i for i, k in enumerate(test_keys)}
        return self.score(np.stack([enroll[k] for k in enroll_keys]), np.stack([test[k] for k in test_keys]),
                          np.array([e_index[t.enroll] for t in trials]), np.array([t_index[t.test] for t in trials]),
                          norm)

    def describe(self, norm: str) -> str:
        text = "cosine" + (", training mean subtracted" if self.subtract else "")
        if norm == "snorm":
            text += f", S-norm ({len(self.cohort.speakers)} cohort speakers)"
        if norm == "asnorm":
            text += f", AS-norm (top {min(self.top_n, len(self.cohort.speakers))} of {len(self.cohort.speakers)})"
        return text


def _take(stats: CohortStats, index: np.ndarray) -> CohortStats:
    return CohortStats(stats.mean[index], stats.std[index])


@dataclass(frozen=True)
class Side:
    """One side of a set of trials (Scorer.side): its prepared embeddings and, under S-norm or AS-norm, their
    cohort statistics."""
    embeddings: np.ndarray  # (N, D)
    stats: CohortStats | None  # None: no score normalisation


def score_sides(enroll: Side, test: Side, enroll_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
    """Scores of the trials (enroll[enroll_index[i]], test[test_index[i]]): cosine, then the sides' S-norm or
    AS-norm when they carry statistics."""
    scores = np.concatenate([cosine_pairs(enroll.embeddings[enroll_index[i:i + SCORE_CHUNK]],
                                          test.embeddings[test_index[i:i + SCORE_CHUNK]])
                             for i in range(0, len(enroll_index), SCORE_CHUNK)])
    if enroll.stats is None or test.stats is None:
        return scores
    return symmetric_norm(scores, _take(enroll.stats, enroll_index), _take(test.stats, test_index))


# --- calibration ----------------------------------------------------------------------------------------

def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def bayes_threshold(p_target: float) -> float:
    """The LLR above which accepting costs less (C_miss = C_fa = 1): log((1 - p) / p)."""
    return -logit(p_target)


@dataclass(frozen=True)
class Calibration:
    """llr = slope * score + offset, fitted at a target prior."""
    slope: float
    offset: float
    prior: float  # the p_target the fit weighted the classes to

    def llr(self, scores: np.ndarray | float) -> np.ndarray | float:
        return self.slope * scores + self.offset


def fit_calibration(scores: np.ndarray, labels: np.ndarray, prior: float) -> Calibration:
    """Prior-weighted logistic regression (unregularised) of the labels on the scores (see the header)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    num_target, num_nontarget = int(labels.sum()), int((~labels).sum())
    if num_target == 0 or num_nontarget == 0:
        raise ValueError(f"calibration needs target and non-target trials, got {num_target} and {num_nontarget}")
    # class weights p / N_tar and (1 - p) / N_non, rescaled to sum to N (the solver's tolerances assume that)
    weights = np.where(labels, prior / num_target, (1.0 - prior) / num_nontarget) * len(labels)
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)  # C = inf: no penalty
    with warnings.catch_warnings(record=True) as caught:  # this fit's warnings only, re-issued as one line
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scores[:, None], labels, sample_weight=weights)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("calibration: the logistic regression did not converge; separable development scores "
                    "(%d targets, %d non-targets) give an over-confident slope", num_target, num_nontarget)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return Calibration(slope, intercept - logit(prior), prior)


# --- the saved calibration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationRecord:
    """What `--calibrate` learns for one kind of score on the development list."""
    calibration: Calibration
    cllr: float  # of the calibrated development scores, bits
    min_cllr: float  # bits
    eer: float  # development EER, fraction
    threshold_eer: float  # score at the development EER point
    threshold_min_dcf: dict[float, float]  # p_target -> score at the development minDCF point
    context: dict = field(default_factory=dict)  # the development list, and what the scores depended on


def save_calibrations(path: Path, records: dict[str, CalibrationRecord]) -> None:
    """JSON, one entry per name (a score normalisation)."""
    entries = {name: {**asdict(r), "threshold_min_dcf": {str(p): t for p, t in r.threshold_min_dcf.items()}}
               for name, r in records.items()}
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")


def load_calibrations(path: Path) -> dict[str, CalibrationRecord]:
    """The records `save_calibrations` wrote; a one-line UserError when the file is not such a file."""
    try:
        entries = json.loads(Path(path).read_text())
        return {name: CalibrationRecord(
            calibration=Calibration(**e["calibration"]), cllr=e["cllr"], min_cllr=e["min_cllr"], eer=e["eer"],
            threshold_eer=e["threshold_eer"],
            threshold_min_dcf={float(p): t for p, t in e["threshold_min_dcf"].items()}, context=e["context"])
            for name, e in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: not a calibration file of this toolkit ({type(err).__name__}: {err})") from None


# --- report: plots --------------------------------------------------------------------------------------

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # probabilities marked on DET axes
DET_LIMITS = (0.0005, 0.5)
MAX_CURVE_POINTS = 20000  # a DET curve is drawn through at most this many operating points


def _curve(points: OperatingPoints) -> tuple[np.ndarray, np.ndarray]:
    """Probit coordinates (P_fa, P_miss) of the operating points, thinned to MAX_CURVE_POINTS."""
    from scipy.stats import norm

    step = max(1, len(points.p_fa) // MAX_CURVE_POINTS)
    keep = np.r_[np.arange(0, len(points.p_fa), step), len(points.p_fa) - 1]
    low, high = DET_LIMITS[0] / 10, 1 - DET_LIMITS[0] / 10  # off-axis, but finite
    return (norm.ppf(np.clip(points.p_fa[keep], low, high)), norm.ppf(np.clip(points.p_miss[keep], low, high)))


def plot_det(curves: Sequence[tuple[str, OperatingPoints]], path: Path, title: str = "") -> None:
    """DET curves (Martin et al., Eurospeech 1997): P_miss against P_fa, both on probit (normal deviate) axes,
    written as PNG (matplotlib's Agg canvas; no display, no pyplot state)."""
    from matplotlib.figure import Figure
    from scipy.stats import norm

    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    for label, points in curves:
        x, y = _curve(points)
        ax.plot(x, y, label=label, linewidth=1.2)
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * p:g}" for p in DET_TICKS]
    lim = norm.ppf(DET_LIMITS)
    ax.plot(lim, lim, color="0.7", linestyle=":", linewidth=0.8)  # the EER line P_miss = P_fa
    ax.set(xticks=ticks, xticklabels=labels, yticks=ticks, yticklabels=labels, xlim=lim, ylim=lim,
           xlabel="false-alarm rate (%)", ylabel="miss rate (%)", title=title or "DET")
    ax.grid(True, color="0.9")
    ax.legend(fontsize="small", loc="upper right")
    _save(fig, path)


def plot_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """One panel per (title, scores, labels): target and non-target score densities, as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6 * len(panels)))
    for i, (title, scores, labels) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        labels = np.asarray(labels).astype(bool)
        edges = np.histogram_bin_edges(scores, bins=60)
        ax.hist(scores[~labels], bins=edges, density=True, alpha=0.6, label=f"non-target ({(~labels).sum()})")
        ax.hist(scores[labels], bins=edges, density=True, alpha=0.6, label=f"target ({labels.sum()})")
        ax.set(title=title, xlabel="score", ylabel="density")
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: object, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
