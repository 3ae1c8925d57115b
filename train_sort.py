"""Rank each speaker's training utterances with a trained model, keep a percentile range, retrain.

    python train_sort.py --from exp/RUN --keep 5 95               # percentiles (0.05 0.95 also accepted)
    python train_sort.py --from exp/RUN --keep 0 90 --rounds 2 --sort-by class_weight

For training on noisy speaker labels: an utterance whose embedding sits far from the rest of its speaker's
is likely mislabelled (or off-speaker). Each round embeds every training utterance with the latest model
(the one feature path of inference.py; under torchrun each rank embeds its share and gets them all), scores
it (--sort-by), keeps each speaker's utterances whose rank lies in the [low, high] percentile range (at least
--min-keep of them), retrains with the source run's config (flags on this command line override it, except
those that define the model and its features, which must stay the source's) on the kept list, and evaluates
through evaluation.py, as train.py and inference.py do.
Scores, kept lists and a report go to exp/<source>-keep<low>-<high>/round<k>/; when the source run injected
label noise, the report gives precision and recall of the removed utterances against the ones that moved.

Percentiles rank a speaker's utterances from the most typical (0: the highest score) to the least typical
(100), so `--keep 0 90` drops only the 10 % least typical, where mislabelled utterances gather, and
`--keep 5 95` also drops the 5 % most typical. The share removed from each speaker is the asked one, rounded
to whole utterances (`removal_counts`); the report logs the removed counts per speaker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import Config, build_config, check_model_keys, make_parser, parse_args
from data.corpus import Utterance
from distributed import current, finish_distributed, init_distributed
from evaluation import checkpoint_embedder, evaluate_checkpoint, read_train_list
from runs import Trained, find_checkpoint, load_trained, run_dir
from train import train
from utils import UserError, atomic_write_text, configure_malloc, run_main

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
    (0 + 1), n = 21 removes 2 (1 + 1)."""
    def round_half_up(x: float) -> int:
        return math.floor(x + 0.5 + 1e-9)  # 1e-9: n * 5 / 100 = 1.5 must round up despite float error

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


@torch.no_grad()
def utterance_scores(trained: Trained, utts: Sequence[Utterance], sort_by: str, embeddings: np.ndarray) -> np.ndarray:
    """Higher = more typical of the labelled speaker."""
    index = {s: i for i, s in enumerate(trained.speakers)}
    labels = np.array([index[u.speaker] for u in utts])
    if sort_by == "centroid":
        return leave_one_out_centroid_scores(embeddings, labels)
    if sort_by == "class_weight":
        centers = trained.head.class_centers().float().cpu().numpy()  # (S, D), normalised
        return np.einsum("nd,nd->n", embeddings, centers[labels])
    # loss: the head's own per-utterance training loss (margin included); low loss = typical, so negate
    emb = torch.from_numpy(embeddings).float()
    losses = []
    for i in range(len(utts)):
        loss, _ = trained.head(emb[i:i + 1], torch.tensor([labels[i]]))
        losses.append(loss.item())
    return -np.array(losses)


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


def read_moved(run: Path) -> set[str]:
    path = run / "label_noise.txt"
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()} if path.is_file() else set()


# --- one round ---------------------------------------------------------------------------------------------

def score_and_trim(trained: Trained, utts: list[Utterance], cfg: Config, out: Path) -> list[Utterance]:
    # the embedder of evaluation.py and its per-checkpoint cache: trimming one model's list with several
    # ranges or scores embeds the training utterances once
    embedder = checkpoint_embedder(cfg, trained.model, trained.path)
    emb = embedder.embed({u.key: u.path for u in utts}, lengths={u.key: u.num_samples for u in utts})
    embeddings = np.stack([emb[u.key] for u in utts])
    trained.head.cpu()
    scores = utterance_scores(trained, utts, cfg.sort_by, embeddings)
    low, high = percent_range(cfg.keep)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        by_speaker[u.speaker].append(i)
    kept = np.zeros(len(utts), dtype=bool)
    for idx in by_speaker.values():
        kept[idx] = keep_typical(scores[idx], low, high, cfg.min_keep)
    if current().main:  # under torchrun every rank holds every score; rank 0 writes them
        lines = [f"{u.key}\t{u.speaker}\t{s:.6f}\t{int(k)}\n" for u, s, k in zip(utts, scores, kept)]
        atomic_write_text(out / "utterance_scores.tsv", "key\tspeaker\tscore\tkept\n" + "".join(lines))
    return [u for u, k in zip(utts, kept) if k]


def removal_summary(before: Sequence[Utterance], after: Sequence[Utterance], asked_percent: float) -> str:
    removed = Counter(u.speaker for u in before) - Counter(u.speaker for u in after)
    per_speaker = np.array([removed.get(s, 0) for s in {u.speaker for u in before}])
    share = 100 * (len(before) - len(after)) / len(before)
    return (f"kept {len(after)} of {len(before)} utterances ({share:.1f} % removed, {asked_percent:g} % asked); "
            f"removed per speaker: min {per_speaker.min()}, median {np.median(per_speaker):.0f}, "
            f"max {per_speaker.max()}")


def test_eer(cfg: Config, trained: Trained) -> float:
    """The first test list's EER of a run: the one train.py recorded, else evaluated now (the same path)."""
    path = run_dir(trained.path) / "results.json"
    if path.is_file():
        return json.loads(path.read_text())["results"][0]["eer"]
    return evaluate_checkpoint(cfg, trained.path).rows[0].result.eer


@dataclass(frozen=True)
class Round:
    number: int
    root: Path  # exp_dir/<source>-keep<low>-<high>-<sort_by>
    label: str  # the kept range "<low>-<high>", as the research log shows it


def run_round(cfg: Config, r: Round, trained: Trained, utts: list[Utterance], moved: set[str],
              eer_before: float) -> tuple[dict, Trained]:
    """Score and trim the full list with `trained`, retrain on what is kept, report; returns the report and
    the retrained model."""
    out = r.root / f"round{r.number}"
    kept = score_and_trim(trained, utts, cfg, out)
    found = detection({u.key for u in utts} - {u.key for u in kept}, moved)
    low, high = percent_range(cfg.keep)
    summary = removal_summary(utts, kept, low + 100 - high)
    log.info("round %d: %s", r.number, summary)
    run_cfg = build_config({"name": f"{r.root.name}/round{r.number}"}, base=dataclasses.asdict(cfg))
    run = train(run_cfg, utterances=kept, run=out, kept=f"{r.label} ({cfg.sort_by}, round {r.number})")
    retrained = load_trained(find_checkpoint(str(run), cfg.exp_dir))
    eer_after = test_eer(cfg, retrained)
    report = {"round": r.number, "summary": summary, "kept": len(kept), "total": len(utts),
              "eer_before": eer_before, "eer_after": eer_after, "removed": found.removed,
              "moved": found.moved, "precision": found.precision, "recall": found.recall}
    if current().main:
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        noise = f"; removed-vs-moved precision {found.precision:.3f} recall {found.recall:.3f}" if found.moved else ""
        print(f"round {r.number}: {summary}; test EER {100 * eer_before:.2f}% -> {100 * eer_after:.2f}%{noise}")
    return report, retrained


def main(argv: list[str] | None = None) -> list[dict]:
    configure_malloc()
    parser = make_parser(__doc__, "train_sort.py")
    parser.add_argument("--from", dest="source", metavar="RUN", help="the experiment folder to start from")
    overrides, _ = parse_args(argv, __doc__, parser)
    cli = build_config(overrides)
    if not cli.source:
        raise UserError("--from RUN is required: the experiment folder whose model ranks the utterances")
    low, high = percent_range(cli.keep)  # a range that keeps nothing fails before any work
    source = Path(cli.source)
    trained = load_trained(find_checkpoint(str(source), cli.exp_dir))
    check_model_keys(overrides, trained.cfg, source)
    utts, moved = read_train_list(source), read_moved(source)
    # the source's config (label noise, if any, is in its list already), this command line on top
    cfg = build_config(overrides, base={**dataclasses.asdict(trained.cfg), "resume": False})
    d = init_distributed(cfg.device, cfg.dist_timeout_min)  # under torchrun: every rank embeds its share
    root = Path(cfg.exp_dir) / (overrides.get("name") or f"{source.name}-keep{low:g}-{high:g}-{cfg.sort_by}")
    eer_before = test_eer(cfg, trained)
    reports = []
    for k in range(1, cfg.rounds + 1):  # each round re-scores the full source list with the newest model
        report, trained = run_round(cfg, Round(k, root, f"{low:g}-{high:g}"), trained, utts, moved,
                                    eer_before)
        reports.append(report)
        eer_before = report["eer_after"]
    finish_distributed(d)
    return reports


if __name__ == "__main__":
    run_main(main)
