"""The EER of a naive baseline on a trial list: how hard the (demo) corpus is without any learning.

    python -m bench.baseline_eer                               # corpora/demo, test split (generated if absent)
    python -m bench.baseline_eer --corpus DIR --split val      # any VoxCeleb-style corpus with <split>/trials.txt
    python -m bench.baseline_eer --corpus corpora/harmonic --generator harmonic   # the second corpus (generated)

Baseline: each utterance is its mean log-mel vector (data.features.fbank with FbankOptions(): 80 mel bins,
25 ms / 10 ms frames), minus the mean of those vectors over every utterance of the trial list; a trial's score
is the cosine of its two vectors. It sees only the long-term average spectrum, which the channel and the
noise of a recording shift as much as the voice does; a trained speaker-embedding network should reach at
most half its EER on the demo corpus.

Prints a one-row Markdown table on stdout (trials, targets, baseline EER in percent); progress goes to the log.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from config import CHOICES, Config
from data.audio import load_audio
from data.features import FbankOptions, fbank
from data.synth_harmonic import ensure_generated
from data.trials import read_trials
from metrics import compute_eer
from utils import UserError, run_main

log = logging.getLogger("voiceprint")


def mean_log_mel(paths: list[Path], opts: FbankOptions) -> np.ndarray:
    """(len(paths), num_mel_bins): each file's log-mel frames averaged over time."""
    vectors = np.empty((len(paths), opts.num_mel_bins))
    with torch.inference_mode():
        for i, path in enumerate(paths):
            wave = torch.from_numpy(load_audio(path, opts.sample_rate))
            vectors[i] = fbank(wave, opts).mean(dim=0).double().numpy()
    return vectors


def cosine_scores(vectors: np.ndarray, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine of rows enroll[i] and test[i] of `vectors`, after removing the mean of all rows."""
    centred = vectors - vectors.mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", unit[enroll], unit[test])


def baseline_eer(wav_dir: Path, trials_path: Path, opts: FbankOptions) -> tuple[int, int, float]:
    """(trials, target trials, EER as a fraction) of the mean-log-mel cosine baseline."""
    trials = read_trials(trials_path)
    keys = sorted({t.enroll for t in trials} | {t.test for t in trials})
    index = {key: i for i, key in enumerate(keys)}
    start = time.monotonic()
    vectors = mean_log_mel([wav_dir / key for key in keys], opts)
    log.info("mean log-mel of %d utterances in %.1f s", len(keys), time.monotonic() - start)
    enroll = np.array([index[t.enroll] for t in trials])
    test = np.array([index[t.test] for t in trials])
    labels = np.array([t.label for t in trials])
    eer = compute_eer(cosine_scores(vectors, enroll, test), labels).eer
    return len(trials), int(labels.sum()), eer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo = Path(Config().demo_corpus)
    parser.add_argument("--corpus", type=Path, default=demo,
                        help="corpus folder with <split>/wav/ and <split>/trials.txt (default: %(default)s, the "
                             "demo corpus, generated with the default spec when absent or incomplete)")
    parser.add_argument("--split", default="test", help="split whose trials to score (default: %(default)s)")
    parser.add_argument("--trials", type=Path, default=None, help="trial list (default: <corpus>/<split>/trials.txt)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--generator", choices=CHOICES["demo_generator"], default=None,
                        help="generate --corpus with this generator (data/synth.py or data/synth_harmonic.py) when "
                             "absent, incomplete or made by another (default: only the demo corpus is generated, "
                             "with the configured demo_generator)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.generator:
        ensure_generated(args.corpus, args.generator)
    elif args.corpus.resolve() == demo.resolve():
        ensure_generated(demo, Config().demo_generator)
    wav_dir = args.corpus / args.split / "wav"
    if not wav_dir.is_dir():
        raise UserError(f"{wav_dir}: no such folder (expected <corpus>/<split>/wav)")
    trials_path = args.trials or args.corpus / args.split / "trials.txt"
    num_trials, num_target, eer = baseline_eer(wav_dir, trials_path, FbankOptions())
    print("| corpus | split | trials | target trials | baseline EER (%) |")
    print("|---|---|---:|---:|---:|")
    print(f"| {args.corpus} | {args.split} | {num_trials} | {num_target} | {100 * eer:.2f} |")


if __name__ == "__main__":
    run_main(main)
