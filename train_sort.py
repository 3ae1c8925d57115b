"""Rank each speaker's training utterances with a trained model, flag those outside a percentile range, drop or
relabel them, retrain.

    python train_sort.py --from exp/RUN --keep 5 95               # percentiles (0.05 0.95 also accepted)
    python train_sort.py --from exp/RUN --keep 0 90 --rounds 2 --sort-by class_weight
    python train_sort.py --from exp/RUN --keep 0 80 --action auto  # relabel the clear cases, drop the rest
    python train_sort.py --from exp/RUN --keep 0 80 --action auto --relabel-from all --rounds 2 --resume
    python train_sort.py --from exp/RUN --keep 0 80 --action relabel --relabel-from all --score-average 3
    python train_sort.py --from exp/RUN --keep 0 80 --action relabel --relabel-from all --relabel-margin 0.2 \
        --drop-unsure --score-average 3                            # the unsure ones dropped, not relabelled
    python train_sort.py --from exp/RUN --keep 0 80 --action relabel --relabel-from all --relabel-margin 0.2 \
        --cross-folds 2 --score-average 3                          # relabel where a held-out model agrees
    python train_sort.py --from exp/SUBCENTER_RUN --keep 0 80 --sort-by subcenter --loss aam
    python train_sort.py --from exp/NOISY_RUN --oracle relabel     # the moved utterances back to their speaker

For training on noisy speaker labels: an utterance whose embedding sits far from the rest of its speaker's
is likely mislabelled (or off-speaker). Each round embeds every training utterance with the latest model
(the one feature path of inference.py; under torchrun each rank embeds its share and gets them all), scores
it (--sort-by), flags each speaker's utterances whose rank lies outside the [low, high] percentile range (at
least --min-keep of them kept), drops or relabels the flagged ones (--action), retrains with the source run's
config (flags on this command line override it, except those that define the model and its features, which
must stay the source's) on the resulting list, and evaluates through evaluation.py, as train.py and
inference.py do. `--rounds N` repeats it, each round re-scoring the source's full list with the newest model;
a round whose list and labels equal the previous round's is not retrained and ends the rounds. `--resume`
runs the same command again after a kill, or with more --rounds: a finished round is reused (its scores are
recomputed and must select the list it trained on), an unfinished one continues from its last checkpoint.

Scores, higher = more typical of the labelled speaker (--sort-by):
  centroid      cos(e, the mean embedding of the speaker's other utterances)
  class_weight  cos(e, the head's class weight)
  loss          minus the head's training loss of the utterance (margin included)
  subcenter     cos(e, the labelled class's dominant sub-centre), for a source trained with --loss subcenter_aam
                (Deng et al. 2020, "Sub-center ArcFace"): the sub-centre that most of the class's training
                utterances are nearest; those nearest another of its sub-centres are the paper's noise suspects,
                counted in the report
The flagged utterances (--action):
  drop     left out of the retraining (the default)
  relabel  one clearly nearer another speaker's centre (cos to it - cos to its own speaker's centre >=
           --relabel-margin) moves to that speaker; the others stay under their label
  auto     those move; the others are dropped
With `--relabel-from all`, relabel and auto move any utterance clearly nearer another speaker's centre, inside
the kept range too (a speaker given more mislabelled utterances than the flagged share keeps the excess
otherwise); the flagged ones that do not move are kept (relabel) or dropped (auto) as before. `--drop-unsure`
drops the candidates that are at least as near another speaker's centre as their own but not clearly nearer
(0 <= gain < --relabel-margin): neither label can be trusted for them, and a wrong label costs more than a
missing utterance (bench/bench_relabel.py counts what it leaves wrong). `--cross-folds K` checks every relabel
with a model that never trained on the utterance: each speaker's utterances are dealt into K folds (seeded), K
models are trained like the source on all folds but one (as many steps as the source; exp/<source>-folds<K>/,
reused by any command asking for the same folds), and a relabel stands only where the source's model and the
held-out one (its own centres, from its embeddings) both name the same speaker past the margin; a relabel
that only one of them makes, or to different speakers, is dropped. A model's confident mistakes on utterances
it was trained on are what it cannot see; the held-out model does not share them. The fold models are trained
once and check every round.
A speaker's centre: its mean embedding (centroid; an utterance left out of its own speaker's), its class weight
(class_weight, loss), its dominant sub-centre (subcenter). The ranking model is the source's best.pt, or with
`--score-average N` the weight average of its last N epoch checkpoints (checkpoints/avg_last_N.pt, written
there if missing; each later round averages the previous round's): a steadier model that, measured by
bench/bench_relabel.py, leaves fewer labels wrong. `--oracle drop|relabel` ignores the scores: it drops
exactly the moved utterances of the source's label_noise.txt, or gives them back their true speaker.

Scores, the retraining labels and a report go to
exp/<source>-keep<low>-<high>-<sort_by>[-avg<N>][-<action>][-all][-m<margin>][-unsure][-cross<K>]/round<k>/
(exp/<source>-oracle-<drop|relabel>/ for the oracle); when the source run injected label noise, the report gives
precision and recall of the removed utterances against the ones that moved, how many moved utterances were
relabelled and how many of those went to their true speaker.

Percentiles rank a speaker's utterances from the most typical (0: the highest score) to the least typical
(100), so `--keep 0 90` flags only the 10 % least typical, where mislabelled utterances gather, and
`--keep 5 95` also flags the 5 % most typical. The share flagged in each speaker is the asked one, rounded
to whole utterances (`removal_counts`); the report logs the removed counts per speaker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from config import RUN_KEYS, SORT_KEYS, Config, build_config, check_model_keys, make_parser, parse_args
from data.corpus import MovedLabel, Utterance, load_utterance_list, speakers_of
from data.crops import speed_speakers
from data.samplers import round_half_up
from distributed import current, finish_distributed, init_distributed
from evaluation import checkpoint_embedder, evaluate_checkpoint, read_train_list
from runs import (
    Trained,
    average_checkpoints,
    epoch_checkpoints,
    find_checkpoint,
    latest_checkpoint,
    load_trained,
    run_dir,
)
from scoring import l2_normalise
from train import train
from utils import UserError, atomic_write_text, configure_malloc, read_text, run_main

log = logging.getLogger("voiceprint")
# --- the method ------------------------------------------------------------------------------------------

def percent_range(keep: Sequence[float]) -> tuple[float, float]:
    """(low, high) in percent; two values both <= 1 are read as fractions. Checked before any work."""
    low, high = keep
    if 0 <= low <= 1 and 0 < high <= 1:
        low, high = 100 * low, 100 * high
    if not 0 <= low < high <= 100:
        raise UserError(f"keep: the range [{keep[0]}, {keep[1]}] keeps nothing; need 0 <= low < high <= 100 "
                        f"(percentiles) or fractions 0 <= low < high <= 1")
    return low, high


def removal_counts(n: int, low: float, high: float) -> tuple[int, int]:
    """(removed from the low end, removed from the high end) of a speaker's n ranked utterances for the
    percentile range [low, high]: R = round(n (low + 100 - high) / 100) utterances in all, so the removed share
    is the asked one to within half an utterance; the high end's round(n (100 - high) / 100) first, the low end
    the rest. Rounding: halves up. Worked example (README): n = 30 at 5-95 removes 3 (1 + 2), n = 10 removes 1
    (0 + 1), n = 21 removes 2 (1 + 1). In-training filtering (data/samplers.leave_out) rounds the same way."""
    total = round_half_up(n * (low + 100.0 - high) / 100.0)
    high_end = round_half_up(n * (100.0 - high) / 100.0)
    return total - high_end, high_end


def keep_range(scores: np.ndarray, low: float, high: float, min_keep: int) -> np.ndarray:
    """Boolean mask of one speaker's kept utterances: ranked by score (rank 0 the lowest; ties in list order),
    the lowest and highest `removal_counts` removed. When fewer than `min_keep` would survive, the `min_keep`
    ranks centred on the range's middle are kept instead (all of them for a tiny speaker)."""
    n = len(scores)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(n)
    drop_low, drop_high = removal_counts(n, low, high)
    first, stop = drop_low, n - drop_high
    keep = min(min_keep, n)
    if stop - first < keep:
        first = min(max(0, round((first + stop - keep) / 2)), n - keep)
        stop = first + keep
    return (ranks >= first) & (ranks < stop)


def keep_typical(scores: np.ndarray, low: float, high: float, min_keep: int) -> np.ndarray:
    """Boolean mask of one speaker's kept utterances, `scores` higher = more typical, the percentiles counted
    from the most typical utterance (0) to the least typical (100): keep_range on the negated scores."""
    return keep_range(-scores, low, high, min_keep)


def leave_one_out_centroid_scores(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cos(e_i, mean of the other utterances of i's speaker), embeddings L2-normalised (N, D). A speaker
    with a single utterance scores 0 (nothing to compare with)."""
    num_classes = labels.max() + 1
    sums = np.zeros((num_classes, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    counts = np.bincount(labels, minlength=num_classes)
    others = sums[labels] - embeddings  # (N, D)
    norms = np.linalg.norm(others, axis=1)
    scores = np.einsum("nd,nd->n", embeddings, others) / np.maximum(norms, 1e-12)
    return np.where(counts[labels] > 1, scores, 0.0)


def chunks(n: int, size: int = 4096) -> Iterator[slice]:
    """Slices of `size` rows covering range(n): bounds the (rows, S) and (rows, K, D) temporaries."""
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def subcenter_scores(embeddings: np.ndarray, labels: np.ndarray,
                     subcentres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-center ArcFace's view of a training list (Deng et al. 2020, sec. 3.1): embeddings (N, D) and
    sub-centres (S, K, D) L2-normalised, labels (N,). A class's dominant sub-centre is the one most of its
    utterances are nearest (ties: the lowest index). Returns each utterance's cosine to its labelled class's
    dominant sub-centre (N,), the dominant sub-centres (S, D), and which utterances are nearest another of
    their class's sub-centres (N,) bool: the paper's noise suspects."""
    num_classes, k, _ = subcentres.shape
    cos = np.concatenate([np.einsum("nd,nkd->nk", embeddings[s], subcentres[labels[s]])
                          for s in chunks(len(labels))])  # (N, K): to the labelled class's sub-centres
    nearest = cos.argmax(axis=1)  # (N,)
    counts = np.zeros((num_classes, k), dtype=np.int64)
    np.add.at(counts, (labels, nearest), 1)
    dominant = counts.argmax(axis=1)  # (S,)
    scores = cos[np.arange(len(labels)), dominant[labels]]
    return scores, subcentres[np.arange(num_classes), dominant], nearest != dominant[labels]


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # (N,) higher = more typical of the labelled speaker (--sort-by)
    own: np.ndarray  # (N,) cos(e, the labelled speaker's centre), the reference of a relabelling
    centres: np.ndarray  # (S, D) each speaker's centre, L2-normalised
    suspects: np.ndarray | None = None  # subcenter: (N,) nearest a non-dominant sub-centre of the class


def centroid_scores(embeddings: np.ndarray, labels: np.ndarray, num_speakers: int) -> Scores:
    """Each utterance's leave-one-out centroid score, and each speaker's centroid (its mean embedding,
    L2-normalised), of L2-normalised embeddings (N, D) whose labels (N,) index num_speakers speakers."""
    sums = np.zeros((num_speakers, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    score = leave_one_out_centroid_scores(embeddings, labels)
    return Scores(score, score, l2_normalise(sums))


@torch.no_grad()
def utterance_scores(trained: Trained, sort_by: str, embeddings: np.ndarray, labels: np.ndarray,
                     rows: np.ndarray) -> Scores:
    """Scores and speaker centres (module docstring) of L2-normalised embeddings (N, D); `labels` (N,) index
    the list's sorted speakers, `rows` (S,) are those speakers' classes in the head."""
    if sort_by == "centroid":
        return centroid_scores(embeddings, labels, len(rows))
    if sort_by == "subcenter":
        weights = trained.head.subcenter_weights().detach().float().cpu().numpy()[rows]  # (S, K, D)
        score, centres, suspects = subcenter_scores(embeddings, labels, weights)
        return Scores(score, score, centres, suspects)
    centres = trained.head.class_centers().detach().float().cpu().numpy()[rows]  # (S, D), normalised
    own = np.einsum("nd,nd->n", embeddings, centres[labels])
    if sort_by == "class_weight":
        return Scores(own, own, centres)
    # loss: the head's own per-utterance training loss (margin included); low loss = typical, so negate
    emb = torch.from_numpy(embeddings).float()
    classes = rows[labels]
    losses = [trained.head(emb[i:i + 1], torch.tensor([classes[i]]))[0].item() for i in range(len(labels))]
    return Scores(-np.array(losses), own, centres)


def kept_mask(scores: np.ndarray, labels: np.ndarray, keep: Sequence[float], min_keep: int) -> np.ndarray:
    """(N,) bool: each speaker's utterances inside the percentile range (keep_typical; ties in list order)."""
    low, high = percent_range(keep)
    order = np.argsort(labels, kind="stable")  # each speaker's utterances together, in list order
    kept = np.zeros(len(scores), dtype=bool)
    for idx in np.split(order, np.cumsum(np.bincount(labels))[:-1]):
        kept[idx] = keep_typical(scores[idx], low, high, min_keep)
    return kept


def relabel_choice(embeddings: np.ndarray, labels: np.ndarray, own: np.ndarray, centres: np.ndarray,
                   candidates: np.ndarray, margin: float) -> tuple[dict[int, int], set[int]]:
    """For the `candidates` (indices; the flagged ones, or all), with gain = cos(e, the nearest other speaker's
    centre) - own (its cosine to its labelled speaker's centre): {utterance: that speaker} for those clearly
    nearer it (gain >= margin), and the unsure ones, at least as near it as their own but not clearly nearer
    (0 <= gain < margin), whose label and nearer speaker are both in doubt (--drop-unsure)."""
    targets: dict[int, int] = {}
    doubtful: set[int] = set()
    for s in chunks(len(candidates)):
        idx = candidates[s]
        cos = embeddings[idx] @ centres.T  # (F, S)
        cos[np.arange(len(idx)), labels[idx]] = -np.inf  # another speaker's
        best = cos.argmax(axis=1)  # (F,)
        gain = cos[np.arange(len(idx)), best] - own[idx]  # (F,)
        targets.update({int(i): int(b) for i, b, g in zip(idx, best, gain) if g >= margin})
        doubtful.update(int(i) for i, g in zip(idx, gain) if 0 <= g < margin)
    return targets, doubtful


def relabel_targets(embeddings: np.ndarray, labels: np.ndarray, own: np.ndarray, centres: np.ndarray,
                    candidates: np.ndarray, margin: float) -> dict[int, int]:
    """relabel_choice's targets: the candidates clearly nearer another speaker's centre, and that speaker."""
    return relabel_choice(embeddings, labels, own, centres, candidates, margin)[0]


def unsure(embeddings: np.ndarray, labels: np.ndarray, own: np.ndarray, centres: np.ndarray,
           candidates: np.ndarray, margin: float) -> set[int]:
    """relabel_choice's unsure candidates (0 <= gain < margin), what --drop-unsure drops."""
    return relabel_choice(embeddings, labels, own, centres, candidates, margin)[1]


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) each utterance's fold in 0..folds-1: every speaker's utterances shuffled (seeded) and dealt out in turn
    from a random fold, so that each fold holds about 1/folds of every speaker, and of the list."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for speaker in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == speaker))
        fold[idx] = (np.arange(len(idx)) + rng.integers(folds)) % folds
    return fold


def held_out_targets(fold_embeddings: Sequence[np.ndarray], fold: np.ndarray, labels: np.ndarray,
                     candidates: np.ndarray, margin: float) -> dict[int, int]:
    """relabel_choice's targets, each candidate judged by the fold model that never trained on it
    (fold_embeddings[k]: (N, D), model k's embeddings of every utterance), in that model's space: the centres
    are its mean embeddings of each speaker's utterances, an utterance left out of its own speaker's."""
    targets: dict[int, int] = {}
    for k, emb in enumerate(fold_embeddings):
        scores = centroid_scores(emb, labels, labels.max() + 1)
        mine = candidates[fold[candidates] == k]
        targets.update(relabel_choice(emb, labels, scores.own, scores.centres, mine, margin)[0])
    return targets


def cross_check(targets: dict[int, int], held_out: dict[int, int]) -> tuple[dict[int, int], set[int]]:
    """(the relabels both models make, to the same speaker; the disputed: moved by one model only, or to
    different speakers), what --cross-folds relabels and drops."""
    agreed = {i: t for i, t in targets.items() if held_out.get(i) == t}
    return agreed, (set(targets) | set(held_out)) - set(agreed)


def new_labels(utts: Sequence[Utterance], speakers: Sequence[str], kept: np.ndarray, targets: dict[int, int],
               action: str, dropped: Collection[int] = ()) -> list[str | None]:
    """Each utterance's label in the retraining list, None = dropped: one with a target moves to it (relabel,
    auto; the targets are flagged ones unless --relabel-from all); a kept one keeps its label; a flagged one
    without a target stays (relabel) or is dropped (auto); drop drops every flagged one. The `dropped` ones
    (--drop-unsure) are dropped whatever else holds."""
    labels: list[str | None] = []
    for i, (u, k) in enumerate(zip(utts, kept)):
        if action != "drop" and i in targets:
            labels.append(speakers[targets[i]])
        elif i in dropped:
            labels.append(None)
        elif k:
            labels.append(u.speaker)
        else:
            labels.append(u.speaker if action == "relabel" else None)
    return labels


def oracle_labels(utts: Sequence[Utterance], noise: dict[str, MovedLabel], mode: str) -> list[str | None]:
    """--oracle: every moved utterance dropped (drop) or given back its true speaker (relabel); the rest kept."""
    return [u.speaker if u.key not in noise else noise[u.key].true_speaker if mode == "relabel" else None
            for u in utts]


def retraining_list(utts: Sequence[Utterance], labels: Sequence[str | None]) -> list[Utterance]:
    return [u if label == u.speaker else dataclasses.replace(u, speaker=label)
            for u, label in zip(utts, labels) if label is not None]


@dataclass(frozen=True)
class Detection:
    removed: int
    moved: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.removed if self.removed else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.moved if self.moved else float("nan")


def detection(removed: set[str], moved: set[str]) -> Detection:
    return Detection(len(removed), len(moved), len(removed & moved))


def outcome(utts: Sequence[Utterance], labels: Sequence[str | None], noise: dict[str, MovedLabel]) -> dict:
    """The report's figures: utterances removed and relabelled; against the moved ones (label noise), the
    precision and recall of the removed, the moved ones relabelled, and those relabelled to their true speaker."""
    removed = {u.key for u, label in zip(utts, labels) if label is None}
    moves = [(noise.get(u.key), label) for u, label in zip(utts, labels) if label not in (None, u.speaker)]
    found = detection(removed, set(noise))
    return {"removed": found.removed, "relabelled": len(moves), "moved": found.moved,
            "precision": found.precision, "recall": found.recall,
            "relabelled_moved": sum(m is not None for m, _ in moves),
            "relabelled_to_true": sum(m is not None and m.true_speaker == label for m, label in moves),
            "still_wrong": len(wrong_labels(utts, labels, noise)) if noise else None}


def wrong_labels(utts: Sequence[Utterance], labels: Sequence[str | None], noise: dict[str, MovedLabel]) -> set[str]:
    """The kept utterances whose retraining label is not their true speaker: moved ones left or relabelled
    to a third speaker, clean ones relabelled away (what in-training filtering of the retraining is scored
    against)."""
    return {u.key for u, label in zip(utts, labels)
            if label is not None and label != (noise[u.key].true_speaker if u.key in noise else u.speaker)}


# --- the source run ----------------------------------------------------------------------------------------

def read_label_noise(run: Path, utts: Sequence[Utterance]) -> dict[str, MovedLabel]:
    """The run's label_noise.txt, `key true_speaker assigned_speaker` per line (data.corpus.write_moved_labels;
    {} when the run injected none), checked against its training list: every key in it, under the assigned
    speaker."""
    path = run / "label_noise.txt"
    if not path.is_file():
        return {}
    speaker_of = {u.key: u.speaker for u in utts}
    noise = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if len(line.split()) != 3:
            raise UserError(f"{path}:{n}: expected 'key true_speaker assigned_speaker', got {line!r}")
        m = MovedLabel(*line.split())
        if speaker_of.get(m.key) != m.assigned_speaker:
            where = (f"is labelled '{speaker_of[m.key]}' there, not '{m.assigned_speaker}'" if m.key in speaker_of
                     else "is not in it")
            raise UserError(f"{path}:{n}: does not match the run: '{m.key}' {where} ({run / 'train_list.jsonl'})")
        noise[m.key] = m
    return noise


def source_checkpoint(source: Path, exp_dir: str) -> Path:
    if not source.is_dir():
        raise UserError(f"--from {source}: no such experiment folder")
    if latest_checkpoint(source) is None and not (source / "checkpoints" / "best.pt").is_file():
        raise UserError(f"{source}: no checkpoint in {source / 'checkpoints'} to score its training utterances "
                        f"with; train_sort needs the source's trained model (and its config and speaker list)")
    return find_checkpoint(str(source), exp_dir)


def scoring_checkpoint(run: Path, cfg: Config) -> Path:
    """The checkpoint that ranks a run's training list: its best.pt, or with score_average N the weight average
    of its last N epoch checkpoints, checkpoints/avg_last_N.pt (runs.average_checkpoints; one already there, of
    the same epochs, is reused)."""
    if not cfg.score_average:
        return find_checkpoint(str(run), cfg.exp_dir)
    last = epoch_checkpoints(run)[-cfg.score_average:]
    if len(last) < cfg.score_average:
        raise UserError(f"--score-average {cfg.score_average}: {run / 'checkpoints'} holds {len(last)} epoch "
                        f"checkpoint(s); the run needs --keep-checkpoints {cfg.score_average} or more (or 0 = all)")
    path = run / "checkpoints" / f"avg_last_{cfg.score_average}.pt"
    epochs = [int(p.stem.split("_")[1]) for p in last]
    # mmap: the check reads the epochs, not every weight (load_trained reads them next)
    if path.is_file() and torch.load(path, weights_only=True, mmap=True).get("averaged_epochs") == epochs:
        return path
    return average_checkpoints(run, cfg.score_average)


def class_rows(trained: Trained, utts: Sequence[Utterance], source: Path) -> np.ndarray:
    """(S,) the head's class of each of the list's sorted speakers; the checkpoint's classes must be the
    list's (with --speed-perturb, each speaker's three speeds)."""
    speakers = speakers_of(utts)
    classes = speed_speakers(speakers) if trained.cfg.speed_perturb else speakers
    if trained.speakers != classes:
        diff = next(((a, b) for a, b in zip(trained.speakers, classes) if a != b), None)
        first = f"; first difference: '{diff[0]}' in the checkpoint, '{diff[1]}' in the list" if diff else ""
        raise UserError(f"{trained.path}: its speaker list ({len(trained.speakers)} classes) differs from "
                        f"{source / 'train_list.jsonl'}'s ({len(classes)}{first}); the checkpoint was not "
                        f"trained on this list")
    index = {s: i for i, s in enumerate(trained.speakers)}
    return np.array([index[s] for s in speakers])


# what the oracle ignores
SCORE_KEYS = ("keep", "sort_by", "min_keep", "action", "relabel_margin", "relabel_from", "drop_unsure",
              "cross_folds", "score_average")


def check_command_line(cli: Config, overrides: dict[str, object]) -> None:
    """Before any work: the range, and no flag the run would ignore."""
    if not cli.source:
        raise UserError("--from RUN is required: the experiment folder whose model ranks the utterances")
    percent_range(cli.keep)  # a range that keeps nothing
    given = [k for k in SCORE_KEYS if k in overrides]
    if cli.oracle and given:
        raise UserError(f"--{given[0].replace('_', '-')}: --oracle ignores the scores; give one or the other")
    for key in ("relabel_margin", "relabel_from", "drop_unsure", "cross_folds"):
        if key in overrides and cli.action == "drop":
            raise UserError(f"--{key.replace('_', '-')}: --action drop relabels nothing; use --action relabel or auto")


def check_source(cfg: Config, trained: Trained, noise: dict[str, MovedLabel], source: Path) -> None:
    """What the oracle and the sub-centre scores need of the source run."""
    path = source / "label_noise.txt"
    if cfg.oracle and not noise:
        why = "records no moved utterance" if path.is_file() else "missing"
        raise UserError(f"--oracle {cfg.oracle}: {path}: {why}; the oracle needs the moved utterances that a run "
                        f"trained with --label-noise records")
    if cfg.sort_by != "subcenter" or cfg.oracle:
        return
    if trained.cfg.loss != "subcenter_aam":
        raise UserError(f"--sort-by subcenter: {source} was trained with --loss {trained.cfg.loss}; sub-centres "
                        f"need a run trained with --loss subcenter_aam")
    if cfg.rounds > 1 and cfg.loss != "subcenter_aam":
        raise UserError(f"--sort-by subcenter --rounds {cfg.rounds}: round 2 ranks with the retrained model, "
                        f"which needs --loss subcenter_aam (this command retrains with {cfg.loss})")


# --- the held-out folds (--cross-folds) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Folds:
    fold: np.ndarray  # (N,) each source utterance's fold
    models: list[Trained]  # model k: trained on every fold but k, so it never saw the utterances of fold k


def fold_state(cfg: Config, out: Path, part: Sequence[Utterance]) -> str:
    """"new", "finished" (reused by any command asking for the same folds) or "unfinished" (continued with
    --resume) of a fold model's folder; one trained on another list is an error."""
    if latest_checkpoint(out) is None and not (out / "results.json").is_file():
        return "new"
    if not trained_on(out, part):
        raise UserError(f"{out}: trained on another list than this command's fold (another source list or --seed); "
                        f"move it away or use another --exp-dir")
    if (out / "results.json").is_file():
        return "finished"
    if not cfg.resume:
        raise UserError(f"{out}: holds an unfinished fold model; pass --resume to continue it")
    return "unfinished"


def fold_models(cfg: Config, source: Path, saved: dict, utts: list[Utterance],
                noise: dict[str, MovedLabel]) -> Folds | None:
    """--cross-folds K: K models trained like the source (its config, this command's device, precision, threads
    and seed) for as many steps as the source's (its epochs x K/(K-1) on (K-1)/K of the list), model k on every
    fold but k, in exp_dir/<source>-folds<K>/fold<k>/. Ranked like the source (--score-average)."""
    if not cfg.cross_folds:
        return None
    k_folds = cfg.cross_folds
    index = {s: i for i, s in enumerate(speakers_of(utts))}
    fold = fold_of(np.array([index[u.speaker] for u in utts]), k_folds, cfg.seed)
    keep = saved["keep_checkpoints"]
    base = {**saved, **{key: getattr(cfg, key) for key in RUN_KEYS}, "resume": False,
            "epochs": -(-saved["epochs"] * k_folds // (k_folds - 1)),
            "keep_checkpoints": max(keep, cfg.score_average) if keep else 0}
    models = []
    for k in range(k_folds):
        out = Path(cfg.exp_dir) / f"{source.name}-folds{k_folds}" / f"fold{k}"
        part = [u for u, f in zip(utts, fold) if f != k]
        state = fold_state(cfg, out, part)
        if state != "finished":
            log.info("--cross-folds %d: training fold model %d on %d of %d utterances (%s)", k_folds, k, len(part),
                     len(utts), out)
            run_cfg = build_config({"name": f"{out.parent.name}/{out.name}", "resume": state == "unfinished"},
                                   base=base)
            train(run_cfg, utterances=part, run=out, kept=f"fold {k} of {k_folds} held out",
                  moved=[u.key for u in part if u.key in noise])
        models.append(load_trained(scoring_checkpoint(out, cfg)))
    return Folds(fold, models)


# --- one round ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    labels: list[str | None]  # each source utterance's label in the retraining list; None = dropped
    flagged: int  # utterances outside the kept range (the oracle: the moved ones)
    extra: dict[str, int] = field(default_factory=dict)  # subcenter: the suspects, and the moved among them
    scores: np.ndarray | None = None  # (N,) each source utterance's score; NaN under the oracle


def embed(trained: Trained, utts: Sequence[Utterance], cfg: Config) -> np.ndarray:
    """(N, D) L2-normalised. The embedder of evaluation.py and its per-checkpoint cache: ranking one model's
    list with several ranges, scores or actions embeds the training utterances once."""
    embedder = checkpoint_embedder(cfg, trained.model, trained.path)
    emb = embedder.embed({u.key: u.path for u in utts}, lengths={u.key: u.num_samples for u in utts})
    trained.head.cpu()
    return np.stack([emb[u.key] for u in utts])


def select(trained: Trained, utts: list[Utterance], rows: np.ndarray, cfg: Config,
           noise: dict[str, MovedLabel], folds: Folds | None = None) -> Selection:
    """This round's labels and scores (module docstring)."""
    if cfg.oracle:
        return Selection(oracle_labels(utts, noise, cfg.oracle), len(noise), scores=np.full(len(utts), np.nan))
    speakers = speakers_of(utts)
    index = {s: i for i, s in enumerate(speakers)}
    ids = np.array([index[u.speaker] for u in utts])  # (N,)
    embeddings = embed(trained, utts, cfg)
    scores = utterance_scores(trained, cfg.sort_by, embeddings, ids, rows)
    kept = kept_mask(scores.score, ids, cfg.keep, cfg.min_keep)
    flagged = np.flatnonzero(~kept)
    candidates = np.arange(len(utts)) if cfg.relabel_from == "all" else flagged
    targets, doubtful = (({}, set()) if cfg.action == "drop" else
                         relabel_choice(embeddings, ids, scores.own, scores.centres, candidates, cfg.relabel_margin))
    disputed: set[int] = set()
    if folds is not None:
        held_out = held_out_targets([embed(m, utts, cfg) for m in folds.models], folds.fold, ids, candidates,
                                    cfg.relabel_margin)
        targets, disputed = cross_check(targets, held_out)
    labels = new_labels(utts, speakers, kept, targets, cfg.action, (doubtful if cfg.drop_unsure else set()) | disputed)
    extra: dict[str, int] = {}
    if folds is not None:
        extra |= {"disputed": len(disputed), "disputed_moved": sum(utts[i].key in noise for i in disputed)}
    if scores.suspects is not None:
        extra |= {"non_dominant": int(scores.suspects.sum()),
                  "non_dominant_moved": sum(u.key in noise for u, s in zip(utts, scores.suspects) if s)}
    return Selection(labels, len(flagged), extra, scores.score)


def write_scores(out: Path, utts: Sequence[Utterance], chosen: Selection) -> None:
    """utterance_scores.tsv: key, labelled speaker, score, kept (1 = in the retraining list), and the label it
    is retrained under ('-' when dropped). Under torchrun every rank holds every score; rank 0 writes them."""
    if current().main:
        lines = [f"{u.key}\t{u.speaker}\t{s:.6f}\t{int(label is not None)}\t{label or '-'}\n"
                 for u, s, label in zip(utts, chosen.scores, chosen.labels)]
        atomic_write_text(out / "utterance_scores.tsv", "key\tspeaker\tscore\tkept\tlabel\n" + "".join(lines))


def selection_summary(utts: Sequence[Utterance], chosen: Selection, asked_percent: float | None) -> str:
    removed = Counter(u.speaker for u, label in zip(utts, chosen.labels) if label is None)
    per_speaker = np.array([removed.get(s, 0) for s in {u.speaker for u in utts}])
    kept = sum(label is not None for label in chosen.labels)
    asked = "the moved ones" if asked_percent is None else f"{asked_percent:g} % asked"
    relabelled = sum(label not in (None, u.speaker) for u, label in zip(utts, chosen.labels))
    return (f"flagged {chosen.flagged} of {len(utts)} utterances ({100 * chosen.flagged / len(utts):.1f} %, {asked}); "
            f"kept {kept} ({100 * (len(utts) - kept) / len(utts):.1f} % removed), relabelled {relabelled}; "
            f"removed per speaker: min {per_speaker.min()}, median {np.median(per_speaker):.0f}, "
            f"max {per_speaker.max()}")


def result_line(report: dict) -> str:
    """The printed line of a retrained round."""
    line = (f"round {report['round']}: {report['summary']}; test EER {100 * report['eer_before']:.2f}% -> "
            f"{100 * report['eer_after']:.2f}%")
    if report["moved"] and report["removed"]:
        line += f"; removed-vs-moved precision {report['precision']:.3f} recall {report['recall']:.3f}"
    if report["moved"] and report["relabelled"]:
        line += (f"; relabelled {report['relabelled_moved']} of the {report['moved']} moved, "
                 f"{report['relabelled_to_true']} to their true speaker")
    if report.get("still_wrong") is not None:
        line += f"; {report['still_wrong']} labels left wrong in the retraining list"
    if "disputed" in report:
        line += (f"; {report['disputed']} relabels disputed by the held-out folds, dropped"
                 + (f" ({report['disputed_moved']} of them moved)" if report["moved"] else ""))
    if "non_dominant" in report:
        line += (f"; {report['non_dominant']} utterances nearest a non-dominant sub-centre"
                 + (f" ({report['non_dominant_moved']} of them moved)" if report["moved"] else ""))
    return line


def test_eer(cfg: Config, trained: Trained) -> float:
    """The first test list's EER of a run: the one train.py recorded, else evaluated now (the same path)."""
    path = run_dir(trained.path) / "results.json"
    if path.is_file():
        return json.loads(path.read_text())["results"][0]["eer"]
    return evaluate_checkpoint(cfg, trained.path).rows[0].result.eer


@dataclass(frozen=True)
class Round:
    number: int
    root: Path  # exp_dir/<source>-keep<low>-<high>-<sort_by>[-<action>] or exp_dir/<source>-oracle-<mode>
    method: str  # how the list is chosen, as the research log's `kept` column shows it: "0-90 (centroid"

    @property
    def out(self) -> Path:
        return self.root / f"round{self.number}"

    @property
    def kept(self) -> str:
        return f"{self.method}, round {self.number})"


def method_choices(cfg: Config) -> list[tuple[str, str]]:
    """The scoring choices that tell one train_sort run from another (the range and --sort-by aside), in order:
    (its token in the folder name, its words in the research log) each."""
    choices = [(f"avg{cfg.score_average}", f"average of {cfg.score_average}")] if cfg.score_average else []
    if cfg.action != "drop":
        choices.append((cfg.action, cfg.action))
        if cfg.relabel_from == "all":
            choices.append(("all", "from all"))
        if cfg.relabel_margin != Config.relabel_margin:
            choices.append((f"m{cfg.relabel_margin:g}", f"margin {cfg.relabel_margin:g}"))
        if cfg.drop_unsure:
            choices.append(("unsure", "unsure dropped"))
        if cfg.cross_folds:
            choices.append((f"cross{cfg.cross_folds}", f"cross-checked by {cfg.cross_folds} folds"))
    return choices


def method_text(cfg: Config) -> str:
    if cfg.oracle:
        return f"oracle ({cfg.oracle}"
    low, high = percent_range(cfg.keep)
    return f"{low:g}-{high:g} ({cfg.sort_by}" + "".join(f", {words}" for _, words in method_choices(cfg))


def method_name(cfg: Config) -> str:
    """The folder name's method part: oracle-<mode>, or keep<low>-<high>-<sort_by>[-<choice>...]."""
    if cfg.oracle:
        return f"oracle-{cfg.oracle}"
    low, high = percent_range(cfg.keep)
    return f"keep{low:g}-{high:g}-{cfg.sort_by}" + "".join(f"-{token}" for token, _ in method_choices(cfg))


def round_figures(r: Round, chosen: Selection, utts: Sequence[Utterance], noise: dict[str, MovedLabel],
                  cfg: Config) -> dict:
    kept = sum(label is not None for label in chosen.labels)
    return {"round": r.number, "rounds_max": cfg.rounds, "method": r.kept, "flagged": chosen.flagged,
            "kept": kept, "total": len(utts), **outcome(utts, chosen.labels, noise), **chosen.extra}


def trained_on(run: Path, utts: Sequence[Utterance]) -> bool:
    """Whether the run folder's train_list.jsonl is `utts`, keys and labels."""
    saved = run / "train_list.jsonl"
    return saved.is_file() and ([(u.key, u.speaker) for u in load_utterance_list(saved)] ==
                                [(u.key, u.speaker) for u in utts])


def earlier_round(cfg: Config, r: Round, retraining: Sequence[Utterance]) -> str:
    """"new", or what an earlier run left in the round's folder: "finished" (its report and results) or
    "unfinished" (checkpoints); both only with --resume, and only when it trained on this round's list."""
    if latest_checkpoint(r.out) is None and not (r.out / "results.json").is_file():
        return "new"
    if not cfg.resume:
        raise UserError(f"{r.out}: holds an earlier round; pass --resume to continue it, or another --name")
    if not trained_on(r.out, retraining):
        raise UserError(f"{r.out}: trained on another list than round {r.number} of this command selects (another "
                        f"source, range, action or flag); --resume continues the same command only, or use another "
                        f"--name")
    done = (r.out / "report.json").is_file() and (r.out / "results.json").is_file()
    return "finished" if done else "unfinished"


def retrain(cfg: Config, r: Round, chosen: Selection, utts: list[Utterance], noise: dict[str, MovedLabel],
            eer_before: float) -> dict:
    """Retrain on the round's list and labels (or take the round an earlier run finished) in r.out; returns
    the round's report."""
    low, high = percent_range(cfg.keep)
    summary = selection_summary(utts, chosen, None if cfg.oracle else low + 100 - high)
    log.info("round %d: %s", r.number, summary)
    retraining = retraining_list(utts, chosen.labels)
    state = earlier_round(cfg, r, retraining)  # before anything is written into the round's folder
    write_scores(r.out, utts, chosen)
    if state == "finished":
        log.info("round %d: finished by an earlier run of this command, reused (%s)", r.number, r.out)
        return json.loads(read_text(r.out / "report.json"))
    run_cfg = build_config({"name": f"{r.root.name}/round{r.number}", "resume": state == "unfinished"},
                           base=dataclasses.asdict(cfg))
    run = train(run_cfg, utterances=retraining, run=r.out, kept=r.kept,
                moved=wrong_labels(utts, chosen.labels, noise) if noise else ())
    retrained = load_trained(find_checkpoint(str(run), cfg.exp_dir))
    report = {**round_figures(r, chosen, utts, noise, cfg), "summary": summary, "retrained": True,
              "eer_before": eer_before, "eer_after": test_eer(cfg, retrained)}
    if current().main:
        atomic_write_text(r.out / "report.json", json.dumps(report, indent=2))
        print(result_line(report))
    return report


def run_rounds(cfg: Config, root: Path, trained: Trained, utts: list[Utterance], rows: np.ndarray,
               noise: dict[str, MovedLabel], eer_before: float, folds: Folds | None = None) -> list[dict]:
    """Up to cfg.rounds rounds, each re-scoring the full source list with the newest model; a round whose
    list and labels equal the previous round's is not retrained (it would train the same model again) and
    ends them: its report.json says so ("retrained": false, "stopped")."""
    reports: list[dict] = []
    previous = None
    for k in range(1, cfg.rounds + 1):
        r = Round(k, root, method_text(cfg))
        chosen = select(trained, utts, rows, cfg, noise, folds)
        if chosen.labels == previous:
            log.info("round %d: kept list unchanged, stopping", k)
            report = {**round_figures(r, chosen, utts, noise, cfg), "retrained": False,
                      "stopped": f"the list and labels of round {k - 1} again: not retrained, rounds ended"}
            write_scores(r.out, utts, chosen)
            if current().main:
                atomic_write_text(r.out / "report.json", json.dumps(report, indent=2))
            reports.append(report)
            break
        report = retrain(cfg, r, chosen, utts, noise, eer_before)
        if k < cfg.rounds:
            trained = load_trained(scoring_checkpoint(r.out, cfg))  # the next round's ranking model
        reports.append(report)
        previous, eer_before = chosen.labels, report["eer_after"]
    return reports


def main(argv: list[str] | None = None) -> list[dict]:
    configure_malloc()
    parser = make_parser(__doc__, "train_sort.py")
    parser.add_argument("--from", dest="source", metavar="RUN", help="the experiment folder to start from")
    overrides, _ = parse_args(argv, __doc__, parser)
    cli = build_config(overrides)
    check_command_line(cli, overrides)
    source = Path(cli.source)
    source_checkpoint(source, cli.exp_dir)  # a run folder with a checkpoint, else a one-line error
    trained = load_trained(scoring_checkpoint(source, cli))
    check_model_keys(overrides, trained.cfg, source)
    utts = read_train_list(source)
    rows = class_rows(trained, utts, source)
    noise = read_label_noise(source, utts)
    # the source's config (label noise, if any, is in its list already; its own train_sort keys, if it was a
    # train_sort round, are not carried over), this command line on top
    saved = {k: v for k, v in dataclasses.asdict(trained.cfg).items() if k not in SORT_KEYS}
    cfg = build_config(overrides, base={**saved, "resume": False})
    check_source(cfg, trained, noise, source)
    d = init_distributed(cfg.device, cfg.dist_timeout_min)  # under torchrun: every rank embeds its share
    root = Path(cfg.exp_dir) / (overrides.get("name") or f"{source.name}-{method_name(cfg)}")
    folds = fold_models(cfg, source, saved, utts, noise)  # --cross-folds
    reports = run_rounds(cfg, root, trained, utts, rows, noise, test_eer(cfg, trained), folds)
    finish_distributed(d)
    return reports


if __name__ == "__main__":
    run_main(main)
