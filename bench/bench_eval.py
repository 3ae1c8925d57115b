"""Evaluation benchmark: metric speed on 10 M trials, bootstrap speed, and embedding extraction speed (real-time
factor) with and without length bucketing, with the EER each extraction gives.

    python -m bench.bench_eval                        # both parts (the demo corpus is generated if absent)
    python -m bench.bench_eval --skip-extraction      # metrics only (~1 min)
    python -m bench.bench_eval --checkpoint exp/RUN   # the EER columns with this trained model

Metrics: --trials random trials (10% targets; float32 scores, as cosine scoring gives), best of --repeats runs
of (a) the scikit-learn recipe of tests/test_metrics.py: roc_curve, then the root of 1 - tpr - fpr on its
linear interpolation -- the EER only; (b) the full sort, `operating_points` + `eer_from_points` +
`min_dcf_from_points` at p_target 0.01 and 0.05; (c) `verification_metrics`, the same three numbers from the
binned pass. The results of (b) and (c) must be identical, and the EER within 1e-9 of (a). Then
`bootstrap_metrics` (1000 replicates) on lists of VoxCeleb1-O size (37,720 trials) and VoxCeleb1-E/H size.

Extraction: the demo test set (corpora/demo/test/wav, trials.txt) through `embedding.Embedder.extract`,
from reading the file to the L2-normalised embedding (header reads, audio decoding, fbank, network), with:
one file at a time; batches of equal frame counts (the default, exact); batches that cut files by up to
eval_bucket_crop of their frames (--crops). Speed table: --model at its standard size (ECAPA-TDNN C=512;
random weights, the speed does not depend on them) on --threads CPU threads, over all files or every k-th
(--speed-files): the real-time factor (audio seconds per wall second), how much audio the cuts dropped, and
how far the embeddings move from one-file-at-a-time. EER table: a trained model (--checkpoint, else the newest
run under --exp-dir; any architecture) over all files, scored by `evaluation.evaluate`: the EER of each policy
and its difference to exact.

Prints Markdown tables on stdout; progress goes to the log on stderr. The page cache is warm (files are read
once before timing). On a shared machine other processes share the CPU: the numbers are upper bounds on time.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metrics import bootstrap_metrics, eer_from_points, min_dcf_from_points, operating_points, verification_metrics
from utils import configure_malloc, resolve_precision

log = logging.getLogger("voiceprint")

P_TARGETS = (0.01, 0.05)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# --- metrics ----------------------------------------------------------------------------------------------

def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def full_sort(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[float, float]]:
    points = operating_points(scores, labels)
    return eer_from_points(points).eer, {p: min_dcf_from_points(points, p).min_dcf for p in P_TARGETS}


def binned(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[float, float]]:
    m = verification_metrics(scores, labels, P_TARGETS)
    return m.eer.eer, {p: d.min_dcf for p, d in m.min_dcf.items()}


def bench_metrics(num_trials: int, repeats: int) -> str:
    rng = np.random.default_rng(0)
    labels = rng.random(num_trials) < 0.1
    scores = rng.normal(labels * 2.0, 1.0).astype(np.float32)
    log.info("metrics: %d trials, best of %d", num_trials, repeats)
    t_sk, eer_sk = best_time(lambda: sklearn_eer(scores, labels), repeats)
    t_full, full = best_time(lambda: full_sort(scores, labels), repeats)
    t_bin, fast = best_time(lambda: binned(scores, labels), repeats)
    if fast != full or abs(fast[0] - eer_sk) > 1e-9:
        raise AssertionError(f"metrics disagree: sklearn {eer_sk}, full sort {full}, binned {fast}")
    rows = [("scikit-learn roc_curve + brentq (EER only)", t_sk), ("full sort: operating_points", t_full),
            ("verification_metrics (binned)", t_bin)]
    lines = [f"### EER + minDCF(0.01) + minDCF(0.05) on {num_trials:,} random trials", "",
             "| method | seconds | vs scikit-learn EER |", "|---|---|---|"]
    lines += [f"| {name} | {t:.2f} | {t_sk / t:.1f}x |" for name, t in rows]
    lines += ["", f"EER {100 * fast[0]:.4f}%, minDCF {fast[1][0.01]:.4f} / {fast[1][0.05]:.4f}; full sort and binned "
                  f"identical, scikit-learn EER within {abs(fast[0] - eer_sk):.1e}.", ""]
    lines += ["| bootstrap, 1000 replicates | seconds |", "|---|---|"]
    for n in (37_720, 579_818):  # VoxCeleb1-O (cleaned), VoxCeleb1-E (cleaned)
        labels = rng.random(n) < 0.5
        scores = rng.normal(labels * 2.0, 1.0)
        started = time.perf_counter()
        bootstrap_metrics(scores, labels, P_TARGETS, rounds=1000, seed=0)
        lines.append(f"| {n:,} trials (EER + 2 minDCF) | {time.perf_counter() - started:.1f} |")
    return "\n".join(lines) + "\n"


# --- extraction -------------------------------------------------------------------------------------------

def demo_test_set(root: Path) -> tuple[Path, Path]:
    """corpora/demo/test/{wav, trials.txt}, generated (or refreshed) with data.synth when needed."""
    from data.synth import ensure_demo_corpus

    ensure_demo_corpus(root)
    return root / "test" / "wav", root / "test" / "trials.txt"


def speed_model(model_name: str):
    """(model, cfg) of the speed measurement: the architecture at its standard size, random weights (the speed
    does not depend on them)."""
    from config import build_config
    from models import build_model

    torch.manual_seed(0)
    cfg = build_config({"model": model_name})
    return build_model(model_name, n_mels=cfg.n_mels).eval(), cfg


def accuracy_model(checkpoint: str, exp_dir: str):
    """(model, cfg, path) of the EER columns: --checkpoint, else the newest best.pt under exp_dir, else None."""
    from runs import find_checkpoint, load_trained

    if checkpoint:
        path = find_checkpoint(checkpoint, exp_dir)
    else:
        runs = sorted(Path(exp_dir).glob("*/checkpoints/best.pt"), key=lambda p: p.stat().st_mtime)
        if not runs:
            return None
        path = runs[-1]
    trained = load_trained(path)
    return trained.model, trained.cfg, path


@dataclass
class ExtractionSetup:
    """What both extraction tables use: the demo test set, its lengths, the policies, the device."""
    args: argparse.Namespace
    trial_list: object  # evaluation.TrialList
    lengths: dict[str, int]
    configs: list[tuple[str, int, float]]  # (name, batch size, bucket crop)
    device: torch.device
    precision: str

    def embedder(self, net: torch.nn.Module, net_cfg: object, batch_size: int, crop: float) -> object:
        from data.features import frontend_from_config
        from embedding import Embedder, Extraction

        return Embedder(net, frontend_from_config(net_cfg), self.device, self.precision,  # no cache: extracts
                        Extraction(batch_size=batch_size, bucket_crop=crop))


def bench_extraction(args: argparse.Namespace) -> str:
    try:
        from data.audio import audio_info, load_audio
        from evaluation import load_trial_lists
    except ImportError as err:
        log.warning("extraction part skipped: %s", err)
        return ""
    wav, trials_path = demo_test_set(Path(args.corpus))
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    trial_list = load_trial_lists([str(trials_path)], str(wav))[0]
    model, cfg = speed_model(args.model)
    lengths = {k: audio_info(p, cfg.sample_rate) for k, p in trial_list.files.items()}
    for p in trial_list.files.values():  # warm the page cache: the timing is of decoding, not of the disk
        load_audio(p, cfg.sample_rate)
    configs = [("one file at a time", 1, 0.0), (f"batches of {args.batch_size}, equal frame counts (exact)",
                                                args.batch_size, 0.0)]
    configs += [(f"batches of {args.batch_size}, cut up to {100 * c:g}%", args.batch_size, c) for c in args.crops]
    setup = ExtractionSetup(args, trial_list, lengths, configs, device, resolve_precision(args.precision, device))
    lines = extraction_speed(setup, model, cfg)
    trained = accuracy_model(args.checkpoint, args.exp_dir)
    if trained is None:
        lines.append("No trained checkpoint (--checkpoint, or a run under --exp-dir): no EER table.")
        return "\n".join(lines) + "\n"
    return "\n".join(lines + extraction_accuracy(setup, trained)) + "\n"


def extraction_speed(setup: ExtractionSetup, model: torch.nn.Module, cfg: object) -> list[str]:
    args, paths = setup.args, setup.trial_list.files
    step = max(1, len(paths) // args.speed_files) if args.speed_files else 1
    timed = {k: paths[k] for k in sorted(paths)[::step]}  # every step-th file
    seconds = sum(setup.lengths[k] for k in timed) / cfg.sample_rate
    log.info("speed: %d of %d files, %.0f s of audio, %s, %s, %d threads", len(timed), len(paths), seconds,
             args.model, setup.precision, args.threads)
    speed, alone = [], None
    for name, batch_size, crop in setup.configs:
        embedder = setup.embedder(model, cfg, batch_size, crop)
        started, cpu_started = time.perf_counter(), time.process_time()
        emb = embedder.extract(timed)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        alone = emb if alone is None else alone
        drift = max(float(np.abs(emb[k] - alone[k]).max()) for k in timed)
        speed.append(f"| {name} | {seconds / wall:.1f} | {wall:.0f} | {seconds / cpu:.1f} | "
                     f"{dropped_audio(embedder, {k: setup.lengths[k] for k in timed})} | {drift:.1e} |")
        log.info("%s: RTF %.1f", name, seconds / wall)
    return [f"### Embedding extraction speed: demo test set ({len(timed)} of {len(paths)} files, "
            f"{seconds / 60:.1f} min of audio)", "",
            f"{args.model} at its standard size (random weights: the speed does not depend on them), {args.threads} "
            f"CPU threads, {setup.precision}. RTF = audio seconds per wall second, header and file reading, fbank "
            "and network included; audio s per CPU s: the same over the process's CPU time (all threads), less "
            "sensitive to other load on a shared machine. Max diff: largest difference of an embedding component "
            "to one file at a time.", "",
            "| extraction | RTF | seconds | audio s per CPU s | audio cut | max diff |", "|---|---|---|---|---|---|",
            *speed, ""]


def extraction_accuracy(setup: ExtractionSetup, trained: tuple) -> list[str]:
    from evaluation import EvalPlan, evaluate
    from scoring import Scorer

    accuracy, exact, paths = [], None, setup.trial_list.files
    for name, batch_size, crop in setup.configs[1:]:  # exact batches are one-at-a-time (max diff above)
        embedder = setup.embedder(trained[0], trained[1], batch_size, crop)
        eer = evaluate(embedder, [setup.trial_list], Scorer(), EvalPlan())[0].result.eer
        exact = exact if exact is not None else eer
        accuracy.append(f"| {name} | {100 * eer:.2f} | {100 * (eer - exact):+.2f} | "
                        f"{dropped_audio(embedder, setup.lengths)} |")
        log.info("%s: EER %.2f%%", name, 100 * eer)
    return [f"### EER of the extraction policies: {trained[2]} ({trained[1].model}, C={trained[1].channels or 512}),"
            f" all {len(paths)} test files, {len(setup.trial_list.trials)} trials", "",
            "| extraction | EER % | vs exact (points) | audio cut |", "|---|---|---|---|", *accuracy]


def dropped_audio(run, lengths: dict[str, int]) -> str:
    """How many files an extraction's batches cut, and the fraction of their frames dropped."""
    frames = {k: run.frames(n) for k, n in lengths.items()}
    cuts = [1 - min(frames[k] for k in batch) / frames[key] for batch in run.full_length_batches(lengths)
            for key in batch]
    cuts = [c for c in cuts if c > 0]
    if not cuts:
        return "none"
    return f"{len(cuts)} files, {100 * np.mean(cuts):.1f}% of their frames on average (max {100 * max(cuts):.1f}%)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000_000, help="random trials for the metric timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per metric method (best taken)")
    parser.add_argument("--skip-metrics", action="store_true")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--corpus", default="corpora/demo", help="demo corpus folder (generated when absent)")
    parser.add_argument("--checkpoint", default="", help="trained checkpoint or run folder for the extraction part")
    parser.add_argument("--exp-dir", default="exp")
    parser.add_argument("--model", default="ecapa_tdnn", help="architecture when no checkpoint is found")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crops", type=float, nargs="*", default=[0.02, 0.05, 0.1],
                        help="eval_bucket_crop values to measure")
    parser.add_argument("--speed-files", type=int, default=0,
                        help="time on every k-th test file, about this many (0 = all); the EERs use all")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    configure_malloc()
    if not args.skip_metrics:
        print(bench_metrics(args.trials, args.repeats))
    if not args.skip_extraction:
        print(bench_extraction(args))


if __name__ == "__main__":
    main()
