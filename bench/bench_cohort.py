"""Cohort benchmark: S-norm, AS-norm and mean-subtraction EER against the cohort's size, for a trained model.

    python -m bench.bench_cohort --checkpoint exp/RUN --test-data corpora/demo/test/wav \\
        --test-trials corpora/demo/test/trials.txt

For each cohort size (--utts: training utterances per speaker, 0 = all of them) the cohort is built by
`evaluation.build_cohort` from the run's train_list.jsonl (min(N, count) seeded-random utterances of each
speaker; one mean embedding per speaker; the mean of --subtract-mean is the mean of those utterances) and the
trial list is scored by `evaluation.evaluate` with a `scoring.Scorer` of that cohort: the same path as
`python inference.py --cohort-utts-per-speaker N`. Rows: the training mean subtracted (cosine), S-norm, and
AS-norm at each --top-n smaller than the number of cohort speakers (a larger top-N is S-norm exactly). The
first row is plain cosine, which needs no cohort.

Columns: EER with its 95 % speaker-bootstrap interval (evaluation.trial_result, --bootstrap rounds), minDCF
at p_target 0.01, and the wall seconds the cohort's embedding took: from scratch (an embedder without a
cache) unless --cache, which reads and fills the run's embedding cache (fast reruns): the cohorts are nested
(the same seeded draw, cut at N), so, built smallest first on a cache without training utterances, the sum of
the fills up to a size is its from-scratch time (on a cache that has them, the times are the cache's). The
test files' embeddings always go through the run's cache. The train list's relative paths are relative to the
folder the run was trained from: run the bench from there (or give absolute paths).

Prints a Markdown table on stdout; progress goes to the log on stderr. On a shared machine other processes
share the CPU: the times are upper bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("voiceprint")


def load(args: argparse.Namespace):
    """(cfg, embedder, run, trial list) of the checkpoint: its own evaluation settings and cache."""
    from evaluation import checkpoint_embedder, load_trial_lists
    from runs import find_checkpoint, load_trained, run_dir

    path = find_checkpoint(args.checkpoint, args.exp_dir)
    trained = load_trained(path)
    cfg = dataclasses.replace(trained.cfg, device="cpu", precision=args.precision or trained.cfg.precision)
    embedder = checkpoint_embedder(cfg, trained.model.eval(), path)
    trial_list = load_trial_lists([args.test_trials], args.test_data)[0]
    return cfg, embedder, run_dir(path), trial_list, path


@dataclass
class Measured:
    """One line of the table: a cohort size scored one way."""
    size: str
    scoring: str
    result: object  # evaluation.TrialResult
    seconds: float | None  # embedding the cohort; None = no cohort


def cohort_rows(args, embedder, run: Path, trial_list, n: int, earlier: float) -> tuple[list[Measured], float]:
    """The lines of one cohort size, and the seconds its embedding took (`earlier` + this step's, with
    --cache: the cohorts are nested, each smaller one's utterances already in the cache)."""
    from evaluation import EvalPlan, build_cohort, cohort_size_text, evaluate
    from scoring import Scorer

    cohort_embedder = embedder if args.cache else dataclasses.replace(embedder, cache_dir=None)
    started = time.perf_counter()
    cohort = build_cohort(cohort_embedder, run, n, args.seed, subtract=False)
    seconds = time.perf_counter() - started + (earlier if args.cache else 0.0)
    speakers = len(cohort.speakers)
    size = f"{cohort_size_text(n)} ({cohort.num_utts} utts, {speakers} spk)"
    plan = EvalPlan(bootstrap=args.bootstrap, seed=args.seed)
    scorings = [("mean subtracted", Scorer(cohort, subtract=True), "none"), ("S-norm", Scorer(cohort), "snorm")]
    scorings += [(f"AS-norm top {t}", Scorer(cohort, top_n=t), "asnorm") for t in args.top_n if t < speakers]
    lines = []
    for name, scorer, norm in scorings:
        result = evaluate(embedder, [trial_list], scorer, dataclasses.replace(plan, score_norms=(norm,)))[0].result
        lines.append(Measured(size, name, result, seconds))
    return lines, seconds


def row(m: Measured, reference: Measured | None, trial_list, args: argparse.Namespace) -> str:
    """A table row; with `reference` (the same scoring with the largest cohort), the paired EER difference."""
    from metrics import paired_comparison

    low, high = m.result.ci.eer if m.result.ci else (float("nan"), float("nan"))
    paired = "-"
    if reference is not None and reference is not m and args.bootstrap:
        c = paired_comparison(m.result.scores, reference.result.scores, trial_list.labels, trial_list.speakers,
                              rounds=args.bootstrap, seed=args.seed)
        paired = f"{100 * c.eer:+.2f} [{100 * c.eer_ci[0]:+.2f}, {100 * c.eer_ci[1]:+.2f}]"
    time_text = "-" if m.seconds is None else f"{m.seconds:.0f}"
    return (f"| {m.size} | {m.scoring} | {100 * m.result.eer:.2f} [{100 * low:.2f}, {100 * high:.2f}] | {paired} | "
            f"{m.result.min_dcf[0.01]:.4f} | {time_text} |")


def bench(args: argparse.Namespace) -> str:
    from evaluation import EvalPlan, evaluate
    from scoring import Scorer

    cfg, embedder, run, trial_list, path = load(args)
    log.info("%s: %d trials, cohorts of %s utterances per speaker", path, len(trial_list.trials), args.utts)
    plain = evaluate(embedder, [trial_list], Scorer(), EvalPlan(bootstrap=args.bootstrap, seed=args.seed))
    lines, seconds = [Measured("none", "cosine", plain[0].result, None)], 0.0
    for n in sorted(args.utts, key=lambda n: n if n > 0 else float("inf")):  # nested: each adds to the last
        more, seconds = cohort_rows(args, embedder, run, trial_list, n, seconds)
        lines += more
        log.info("cohort %s per speaker done", n or "all")
    largest = {m.scoring: m for m in lines}  # the last line of each scoring: the largest cohort
    rows = [row(m, largest.get(m.scoring) if m.seconds is not None else None, trial_list, args) for m in lines]
    ci = plain[0].result.ci
    how = "the sum of the nested cohorts' cache fills up to it" if args.cache else "no cache"
    return "\n".join([
        f"### EER against the cohort size: {path} ({cfg.model}), {trial_list.path} ({len(trial_list.trials)} "
        f"trials)", "",
        f"EER % [95 % {ci.unit if ci else ''} bootstrap interval, {args.bootstrap} rounds]; vs largest: EER "
        f"difference to the same scoring with the largest cohort, in points, with its paired interval (the same "
        f"resampled speakers for both; metrics.paired_comparison); cohort = min(N, count) seeded-random training "
        f"utterances per speaker (seed {args.seed}); embedding = wall seconds to embed the cohort from scratch "
        f"({how}, {args.threads} CPU threads, {embedder.precision}).", "",
        "| cohort (per speaker) | scoring | EER % | vs largest | minDCF 0.01 | embedding s |",
        "|---|---|---|---|---|---|", *rows, ""])


def main(argv: list[str] | None = None) -> None:
    from utils import configure_malloc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="", help="checkpoint or run folder; '' = the newest under --exp-dir")
    parser.add_argument("--exp-dir", default="exp")
    parser.add_argument("--test-data", default="corpora/demo/test/wav", help="folder of the trial list's files")
    parser.add_argument("--test-trials", default="corpora/demo/test/trials.txt")
    parser.add_argument("--utts", type=int, nargs="+", default=[1, 3, 10, 0],
                        help="cohort sizes: training utterances per speaker (0 = all)")
    parser.add_argument("--top-n", type=int, nargs="+", default=[50, 100, 300], help="AS-norm top-N values")
    parser.add_argument("--bootstrap", type=int, default=1000, help="rounds of the speaker bootstrap")
    parser.add_argument("--seed", type=int, default=0, help="of the cohort choice and of the bootstrap")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="", help="auto | fp32 | bf16; '' = the run's own setting")
    parser.add_argument("--cache", action="store_true",
                        help="embed the cohorts through the run's cache (fast reruns; times are the cache's)")
    args = parser.parse_args(argv)
    configure_malloc()
    torch.set_num_threads(args.threads)
    print(bench(args))


if __name__ == "__main__":
    from utils import run_main

    run_main(main)
