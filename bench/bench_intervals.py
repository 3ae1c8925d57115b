"""Coverage of the EER confidence intervals: trial bootstrap against speaker bootstrap, on simulated trial lists
whose scores carry speaker and utterance effects, as real ones do.

    python -m bench.bench_intervals                       # 200 simulated evaluations, 500 replicates each
    python -m bench.bench_intervals --experiments 400 --speakers 40 --utts 15 --trials 5000

The population: speaker s has a target-score effect a_s ~ N(0, sd_target_speaker) (some voices verify easily,
some do not) and a non-target effect b_s ~ N(0, sd_nontarget_speaker) (some voices resemble many others);
utterance u has an effect c_u ~ N(0, sd_utterance) (its length, channel, noise). A target trial (u, v of
speaker s) scores mu_target + a_s + c_u + c_v + e, a non-target trial (u of a, v of b) mu_nontarget + b_a + b_b
+ c_u + c_v + e, with e ~ N(0, sd_trial). The true EER is that of the population (infinitely many speakers
and utterances): the crossing of the two normal score distributions those effects add up to, computed
exactly. Each simulated evaluation draws --speakers speakers with --utts utterances each, builds --trials
trials (half targets: random utterance pairs of one speaker; half non-targets: random pairs of two
speakers), measures the EER and its 95 % intervals by both methods. Printed: how often each interval holds
the true EER (nominal 95 %), its mean width, and the spread of the measured EER over the evaluations (what
an interval should reflect). Seeded: the same flags print the same table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from metrics import bootstrap_metrics, compute_eer, speaker_bootstrap, trial_speakers
from utils import markdown_table


@dataclass(frozen=True)
class Population:
    mu_target: float = 0.6
    mu_nontarget: float = 0.0
    sd_target_speaker: float = 0.10
    sd_nontarget_speaker: float = 0.06
    sd_utterance: float = 0.06
    sd_trial: float = 0.12

    def true_eer(self) -> float:
        """The EER of the two marginal score distributions (normal: sums of independent normal effects)."""
        sd_t = np.sqrt(self.sd_target_speaker ** 2 + 2 * self.sd_utterance ** 2 + self.sd_trial ** 2)
        sd_n = np.sqrt(2 * self.sd_nontarget_speaker ** 2 + 2 * self.sd_utterance ** 2 + self.sd_trial ** 2)
        gap = lambda t: norm.cdf(t, self.mu_target, sd_t) - norm.sf(t, self.mu_nontarget, sd_n)  # noqa: E731
        threshold = brentq(gap, self.mu_nontarget - 10, self.mu_target + 10)
        return float(norm.cdf(threshold, self.mu_target, sd_t))


@dataclass(frozen=True)
class Evaluation:
    scores: np.ndarray
    labels: np.ndarray
    enroll_speaker: list[str]
    test_speaker: list[str]


def simulate(pop: Population, speakers: int, utts: int, trials: int, rng: np.random.Generator) -> Evaluation:
    a = rng.normal(0, pop.sd_target_speaker, speakers)
    b = rng.normal(0, pop.sd_nontarget_speaker, speakers)
    c = rng.normal(0, pop.sd_utterance, (speakers, utts))
    half = trials // 2
    s = rng.integers(0, speakers, half)  # targets: two distinct utterances of one speaker
    u = rng.integers(0, utts, half)
    v = (u + rng.integers(1, utts, half)) % utts
    target = pop.mu_target + a[s] + c[s, u] + c[s, v] + rng.normal(0, pop.sd_trial, half)
    sa = rng.integers(0, speakers, trials - half)  # non-targets: utterances of two distinct speakers
    sb = (sa + rng.integers(1, speakers, trials - half)) % speakers
    ua, ub = rng.integers(0, utts, trials - half), rng.integers(0, utts, trials - half)
    nontarget = (pop.mu_nontarget + b[sa] + b[sb] + c[sa, ua] + c[sb, ub]
                 + rng.normal(0, pop.sd_trial, trials - half))
    names = [f"s{i}" for i in range(speakers)]
    return Evaluation(np.r_[target, nontarget], np.r_[np.ones(half), np.zeros(trials - half)].astype(int),
                      [names[i] for i in np.r_[s, sa]], [names[i] for i in np.r_[s, sb]])


def run(args: argparse.Namespace) -> list[dict[str, str]]:
    pop = Population()
    truth = pop.true_eer()
    rng = np.random.default_rng(args.seed)
    eers, held, width = [], {"trial": [], "speaker": []}, {"trial": [], "speaker": []}
    for k in range(args.experiments):
        ev = simulate(pop, args.speakers, args.utts, args.trials, rng)
        eers.append(compute_eer(ev.scores, ev.labels).eer)
        intervals = {
            "trial": bootstrap_metrics(ev.scores, ev.labels, rounds=args.rounds, seed=k).eer,
            "speaker": speaker_bootstrap(ev.scores, ev.labels, trial_speakers(ev.enroll_speaker, ev.test_speaker),
                                         rounds=args.rounds, seed=k).eer,
        }
        for method, (low, high) in intervals.items():
            held[method].append(low <= truth <= high)
            width[method].append(high - low)
    spread = np.std(eers)
    rows = []
    for method in ("trial", "speaker"):
        rows.append({"interval": f"{method} bootstrap",
                     "coverage of the true EER": f"{100 * np.mean(held[method]):.1f} %",
                     "mean width (points)": f"{100 * np.mean(width[method]):.2f}",
                     "implied sd (points)": f"{100 * np.mean(width[method]) / (2 * 1.96):.2f}",
                     "sd of the measured EER over evaluations (points)": f"{100 * spread:.2f}"})
    print(f"true EER {100 * truth:.2f} %; mean measured {100 * np.mean(eers):.2f} %; {args.experiments} "
          f"evaluations of {args.speakers} speakers x {args.utts} utterances, {args.trials} trials; "
          f"{args.rounds} replicates per interval; nominal 95 %")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--utts", type=int, default=15)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args)
    print(markdown_table(list(rows[0]), rows))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
