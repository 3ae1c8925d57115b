"""How well train_sort's relabelling rule repairs the labels, before any retraining: labels left wrong per margin.

    python -m bench.bench_relabel --corpus demo harmonic --seeds 0 1 2       # after bench_sort's noisy-0.2 runs
    python -m bench.bench_relabel --corpus harmonic --noise 0.1 --margins 0.05 0.1 0.2
    python -m bench.bench_relabel --sort-by centroid class_weight --margins 0.1 --score-average 3

For each noisy run of bench/bench_sort.py (<root>/<corpus>/seed<s>/noisy-<n>, its moved utterances known from
label_noise.txt), the training utterances are embedded with its best checkpoint, and with the weight average of
its last N epoch checkpoints for each --score-average N (train_sort.scoring_checkpoint), exactly as train_sort.py
does (train_sort.embed, through the run's embedding cache: the bench retrains nothing and takes seconds once
bench_sort has run), and train_sort's own rule (train_sort.relabel_choice on the scores and centres of each
--sort-by: centroid, train_sort's default, and/or class_weight, the head's class weights) is applied at each
--margins value, to the flagged utterances (--relabel-from flagged: outside the --keep range, 0-80 as in
bench_sort) and to all of them (--relabel-from all), and, above margin 0, to all of them with --drop-unsure (the
utterances at least as near another speaker's centre as their own, but by less than the margin, dropped: the
"dropped" column). With `--cross-folds K`, rows "cross-checked by K folds" apply train_sort --cross-folds K's rule
(from all, centroid): a relabel stands where the source's model and the fold model that never trained on the
utterance agree, the disputed ones dropped; the fold models are the ones train_sort trained
(<root>/<corpus>/seed<s>/noisy-<n>-folds<K>/fold<k>, e.g. by bench_sort --methods relabel-all-cross), ranked by
the same --score-average. A last row per source applies the centroid all-rule at the
default margin three times, each pass to the previous one's labels (centres recomputed, no retraining): whether
iterating the rule repairs more.

Columns (mean over the seeds, min-max in brackets): utterances relabelled, those relabelled to their true speaker,
the labels still wrong after relabelling among the utterances kept (moved ones missed or sent to a third speaker,
plus clean ones moved away), and the utterances dropped; "noisy" is the wrong labels before. The moved list is used
only to count, never to decide: this bench says whether the default margin (config relabel_margin) is near the best
a rule of this form can do on a corpus, not a margin to pick per corpus from the answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from config import Config
from data.corpus import Utterance
from evaluation import read_train_list
from runs import Trained, load_trained
from train_sort import (
    class_rows,
    cross_check,
    held_out_targets,
    kept_mask,
    read_label_noise,
    relabel_choice,
    scoring_checkpoint,
    utterance_scores,
)
from train_sort import embed as embed_training_list
from utils import UserError, run_main

DEFAULT_MARGIN = Config().relabel_margin  # config relabel_margin: the margin of the rule applied 3 times
MIN_KEEP = Config().min_keep  # train_sort's default: each speaker's most typical ones are never flagged

def relabel_once(embeddings: np.ndarray, labels: np.ndarray, margin: float, keep: tuple[float, float] | None,
                 trained: Trained, rows: np.ndarray, sort_by: str = "centroid",
                 drop_unsure: bool = False) -> np.ndarray:
    """train_sort's relabelling (--sort-by `sort_by`) of `labels` (N,) at `margin`, of the utterances outside
    the `keep` range (--relabel-from flagged) or of all (keep None): the new labels (N,), -1 for an utterance
    --drop-unsure drops."""
    scores = utterance_scores(trained, sort_by, embeddings, labels, rows)
    candidates = (np.flatnonzero(~kept_mask(scores.score, labels, keep, MIN_KEEP)) if keep is not None
                  else np.arange(len(labels)))
    targets, doubtful = relabel_choice(embeddings, labels, scores.own, scores.centres, candidates, margin)
    out = labels.copy()
    for i, speaker in targets.items():
        out[i] = speaker
    if drop_unsure:
        out[sorted(doubtful)] = -1
    return out


def fold_embeddings(run: Path, utts: list[Utterance], cross_folds: int,
                    score_average: int) -> tuple[list[np.ndarray], np.ndarray]:
    """train_sort --cross-folds' fold models of a noisy run: each one's embeddings of the run's list (N, D), and
    each utterance's fold (N,): the model whose training list lacks it."""
    embeddings, fold = [], np.full(len(utts), -1)
    for k in range(cross_folds):
        out = run.parent / f"{run.name}-folds{cross_folds}" / f"fold{k}"
        if not (out / "results.json").is_file():
            raise UserError(f"{out}: no finished fold model; train_sort --cross-folds {cross_folds} trains it "
                            f"(python -m bench.bench_sort --methods relabel-all-cross ...)")
        model = load_trained(scoring_checkpoint(out, Config(exp_dir=str(run.parent), score_average=score_average)))
        embeddings.append(embed_training_list(model, utts, model.cfg))
        seen = {u.key for u in read_train_list(out)}
        fold[[i for i, u in enumerate(utts) if u.key not in seen]] = k
    return embeddings, fold


def source_rows(run: Path, margins: list[float], keep: tuple[float, float], score_average: int,
                sort_by: str = "centroid", cross_folds: int = 0) -> list[tuple[str, int, int, int, int]]:
    """(rule, relabelled, relabelled to the true speaker, labels wrong after, dropped) per rule, for one noisy run
    ranked by the model train_sort --score-average `score_average` would use, scored and relabelled --sort-by
    `sort_by`. The rule applied 3 times (centres recomputed) only for centroid: class weights do not move."""
    trained = load_trained(scoring_checkpoint(run, Config(exp_dir=str(run.parent), score_average=score_average)))
    utts = read_train_list(run)
    rows = class_rows(trained, utts, run)
    noise = read_label_noise(run, utts)
    if not noise:
        raise UserError(f"{run}: no label_noise.txt; this bench needs a run trained with --label-noise")
    speakers = sorted({u.speaker for u in utts})
    index = {s: i for i, s in enumerate(speakers)}
    noisy = np.array([index[u.speaker] for u in utts])
    true = np.array([index[noise[u.key].true_speaker] if u.key in noise else index[u.speaker] for u in utts])
    embeddings = embed_training_list(trained, utts, trained.cfg)  # from the run's cache

    def counts(rule: str, labels: np.ndarray) -> tuple[str, int, int, int, int]:
        dropped = labels == -1
        moved = (labels != noisy) & ~dropped
        return (rule, int(moved.sum()), int((moved & (labels == true)).sum()), int(((labels != true) & ~dropped).sum()),
                int(dropped.sum()))

    out = [counts("noisy", noisy)]
    for margin in margins:
        for flagged in (keep, None):
            rule = f"margin {margin:g}, from {'flagged' if flagged else 'all'}"
            out.append(counts(rule, relabel_once(embeddings, noisy, margin, flagged, trained, rows, sort_by)))
        if margin > 0:  # --drop-unsure: [0, margin) dropped; at margin 0 it drops nothing
            out.append(counts(f"margin {margin:g}, from all, unsure dropped",
                              relabel_once(embeddings, noisy, margin, None, trained, rows, sort_by, drop_unsure=True)))
    if sort_by != "centroid":
        return out
    if cross_folds:
        held, fold = fold_embeddings(run, utts, cross_folds, score_average)
        scores = utterance_scores(trained, sort_by, embeddings, noisy, rows)
        every = np.arange(len(utts))
        for margin in margins:
            targets = relabel_choice(embeddings, noisy, scores.own, scores.centres, every, margin)[0]
            agreed, disputed = cross_check(targets, held_out_targets(held, fold, noisy, every, margin))
            labels = noisy.copy()
            labels[list(agreed)] = list(agreed.values())
            labels[sorted(disputed)] = -1
            out.append(counts(f"margin {margin:g}, from all, cross-checked by {cross_folds} folds", labels))
    labels = noisy
    for _ in range(3):  # centres recomputed from the previous pass's labels, no retraining
        labels = relabel_once(embeddings, labels, DEFAULT_MARGIN, None, trained, rows)
    out.append(counts(f"margin {DEFAULT_MARGIN:g}, from all, applied 3 times", labels))
    return out


def cell(values: list[int]) -> str:
    return f"{np.mean(values):.0f} ({min(values)}-{max(values)})" if len(values) > 1 else str(values[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", default=["demo", "harmonic"], choices=["demo", "harmonic"])
    parser.add_argument("--noise", type=float, default=0.2, help="the noisy-<n> runs' label noise")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    parser.add_argument("--keep", type=float, nargs=2, default=[0.0, 80.0],
                        help="the range whose outside is flagged (bench_sort's relabel rows: 0 80)")
    parser.add_argument("--score-average", type=int, nargs="+", default=[0, 3],
                        help="train_sort's --score-average values compared (0 = best.pt)")
    parser.add_argument("--sort-by", nargs="+", default=["centroid"], choices=["centroid", "class_weight"],
                        help="train_sort's --sort-by values compared: the scores and the centres relabelled to")
    parser.add_argument("--cross-folds", type=int, default=0, help="also train_sort --cross-folds K's rule, with "
                        "the fold models train_sort made for each noisy run (0 = not)")
    parser.add_argument("--root", default="exp/bench_sort", help="bench_sort's --root")
    args = parser.parse_args(argv)
    if args.cross_folds == 1 or args.cross_folds < 0:
        raise UserError(f"--cross-folds: 0 (off) or the number of folds, at least 2; got {args.cross_folds}")
    runs = {c: [Path(args.root) / c / f"seed{s}" / f"noisy-{args.noise:g}" for s in args.seeds] for c in args.corpus}
    for run in (r for rs in runs.values() for r in rs):
        if not (run / "train_list.jsonl").is_file():
            raise UserError(f"{run}: no such run; bench_sort makes it (python -m bench.bench_sort --corpus ... "
                            f"--noise ... --seeds ...)")
    print("| corpus | seeds | ranking model | sort by | rule | relabelled | to the true speaker | labels still wrong | "
          "dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for corpus, sources in runs.items():
        for average in args.score_average:
            model = f"average of the last {average}" if average else "best.pt"
            for sort_by in args.sort_by:
                per_seed = [source_rows(run, args.margins, tuple(args.keep), average, sort_by, args.cross_folds)
                            for run in sources]
                for i, (rule, *_) in enumerate(per_seed[0]):
                    columns = [cell([rows[i][k] for rows in per_seed]) for k in (1, 2, 3, 4)]
                    print(f"| {corpus} | {' '.join(map(str, args.seeds))} | {model} | {sort_by} | {rule} | "
                          + " | ".join(columns) + " |")
                sys.stdout.flush()

if __name__ == "__main__":
    run_main(main)
