"""Score the trial lists of a trained model and report every number a paper reports; or verify test files
against an enrolment (pair mode).

    python inference.py                                  # the newest experiment, its test trial list(s)
    python inference.py --checkpoint exp/NAME --test-data /data/vox1/wav \\
        --test-trials veri_test2.txt list_test_all2.txt list_test_hard2.txt --score-norm none asnorm
    python inference.py --calibrate corpora/demo/val/trials.txt    # also fit score -> LLR on a dev list
    python inference.py --test-durations 1,2,3,5                    # also EER with the test side cut to d s
    python inference.py --eval-crops 10 --eval-crop-frames 300      # mean embedding of 10 crops of 3 s
    python inference.py --save-embeddings                           # also <run>/eval/embeddings.npy + .txt
    python inference.py --runtime onnx                              # embed with onnxruntime (export.py's file)
    python inference.py --enroll a.wav b.wav --test c.wav           # pair mode: score, LLR, decision

The checkpoint describes itself (config, speaker list, weights): the model and its front end are rebuilt from
it alone, and a flag that would change them (--model, --n-mels, --sample-rate, ...) is an error. The saved
config's evaluation settings are the defaults; flags override them. The evaluation is evaluation.py's
`evaluate_checkpoint`, the same call train.py makes for its final test, so `python inference.py --checkpoint RUN`
reproduces RUN/results.json. Outputs (score files, eval/results.json|md, plots, calibration, the embedding
cache) are listed in evaluation.py. Under torchrun (`torchrun --nproc_per_node=N inference.py ...`) every
process embeds its share of the files and gets them all; rank 0 writes the scores and reports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config import Config, build_config, check_model_keys, make_parser, parse_args
from distributed import finish_distributed, init_distributed
from embedding import Embedder, save_embeddings
from evaluation import (
    checkpoint_embedder,
    evaluate_checkpoint,
    matching_calibrations,
    scorer_from_config,
    scoring_signature,
)
from runs import find_checkpoint, load_trained, run_dir
from scoring import CalibrationRecord, bayes_threshold, l2_normalise, load_calibrations
from utils import UserError, configure_malloc, run_main

log = logging.getLogger("voiceprint")


# --- pair mode -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    llr: float | None  # calibrated log-likelihood ratio (natural log), when a calibration applies
    accept: bool | None  # None: no calibration, so no threshold
    rule: str  # the decision and its rule, or why there is none


@dataclass(frozen=True)
class PairResult:
    test: str  # the test file
    score: float  # against the enrolment, under the first score_norm
    decision: Decision


def decide(score: float, record: CalibrationRecord | None, how: str, p_target: float, source: Path) -> Decision:
    """The decision_threshold rule (config.py) on one score, with the development calibration `record`."""
    if record is None:
        return Decision(None, None, f"no decision: no calibration for these scores in {source}; run "
                                    f"inference.py --calibrate DEV_TRIALS with the same settings")
    llr = float(record.calibration.llr(score))
    if how == "bayes":
        value, threshold, name = llr, bayes_threshold(p_target), f"llr, Bayes threshold at p_target {p_target:g}"
    elif how == "eer":
        value, threshold, name = score, record.threshold_eer, "score, development EER threshold"
    elif p_target in record.threshold_min_dcf:
        value, threshold = score, record.threshold_min_dcf[p_target]
        name = f"score, development minDCF threshold at p_target {p_target:g}"
    else:
        return Decision(llr, None, f"no decision: the calibration holds minDCF thresholds for p_target "
                                   f"{', '.join(map(str, record.threshold_min_dcf))}, not {p_target:g}")
    accept = value >= threshold
    verdict = "same speaker" if accept else "different speakers"
    return Decision(llr, accept, f"{verdict} ({value:.4f} {'>=' if accept else '<'} {threshold:.4f}: {name})")


def pair_scores(cfg: Config, run: Path, embedder: Embedder, enroll: Sequence[str],
                tests: Sequence[str]) -> tuple[np.ndarray, str]:
    """Each test file's score (first score_norm) against the enrolment files, as cfg.enroll_mode says: against
    their mean embedding, or the mean of the scores against each; and how, in words."""
    single = dataclasses.replace(embedder, cache_dir=None)
    enroll_emb = np.stack(list(single.embed({f"enroll:{p}": p for p in enroll}).values()))  # (E, D)
    test_emb = np.stack(list(single.embed({f"test:{p}": p for p in tests}).values()))  # (T, D)
    scorer = scorer_from_config(cfg, run, embedder, cfg.score_norm[:1])
    norm, n_enroll, n_test = cfg.score_norm[0], len(enroll), len(tests)
    if cfg.enroll_mode == "score_average":
        scores = scorer.score(enroll_emb, test_emb, np.tile(np.arange(n_enroll), n_test),
                              np.repeat(np.arange(n_test), n_enroll), norm)  # (T * E,), test-major
        return (scores.reshape(n_test, n_enroll).mean(axis=1),
                f"enrolment: {n_enroll} file(s), scores averaged; scoring: {scorer.describe(norm)}")
    enrolment = l2_normalise(enroll_emb.mean(axis=0))[None]  # (1, D)
    return (scorer.score(enrolment, test_emb, np.zeros(n_test, dtype=int), np.arange(n_test), norm),
            f"enrolment: {n_enroll} file(s), embeddings averaged; scoring: {scorer.describe(norm)}")


def pair_results(cfg: Config, ckpt: Path, embedder: Embedder, enroll: Sequence[str],
                 tests: Sequence[str]) -> tuple[list[PairResult], str]:
    """Score, calibrated LLR and decision of each test file against the enrolment (nothing printed; api.py
    calls this), and how the scores were made, in words."""
    run, norm = run_dir(ckpt), cfg.score_norm[0]
    scores, how = pair_scores(cfg, run, embedder, enroll, tests)
    calibration_file = run / "eval" / "calibration.json"
    saved = load_calibrations(calibration_file) if calibration_file.is_file() else {}
    record = matching_calibrations(saved, {norm: scoring_signature(cfg, embedder, norm)}, calibration_file).get(norm)
    decisions = (decide(float(s), record, cfg.decision_threshold, cfg.decision_p_target, calibration_file)
                 for s in scores)
    return [PairResult(path, float(score), d) for path, score, d in zip(tests, scores, decisions)], how


def verify_pairs(cfg: Config, ckpt: Path, embedder: Embedder, enroll: Sequence[str],
                 tests: Sequence[str]) -> list[PairResult]:
    """pair_results, printed: a line on the scoring, then one per test file."""
    results, how = pair_results(cfg, ckpt, embedder, enroll, tests)
    print(how)
    for r in results:
        d = r.decision
        print(f"{r.test}: score {r.score:.4f}" + (f"  llr {d.llr:.3f}" if d.llr is not None else "") + f"  {d.rule}")
    return results


# --- script --------------------------------------------------------------------------------------------

def parse_command_line(argv: list[str] | None) -> tuple[dict[str, object], object]:
    parser = make_parser(__doc__, "inference.py")
    parser.add_argument("--enroll", nargs="+", metavar="AUDIO",
                        help="pair mode: enrolment file(s); several are averaged as embeddings")
    parser.add_argument("--test", nargs="+", metavar="AUDIO", help="pair mode: file(s) to verify")
    parser.add_argument("--save-embeddings", nargs="?", const="", metavar="DIR",
                        help="also write the trial files' embeddings: DIR/embeddings.npy (N, D) and "
                             "DIR/embeddings.txt (row i: key path); default DIR <run>/eval")
    overrides, args = parse_args(argv, __doc__, parser)
    if bool(getattr(args, "enroll", None)) != bool(getattr(args, "test", None)):
        raise UserError("pair mode needs both --enroll AUDIO [AUDIO ...] and --test AUDIO [AUDIO ...]")
    return overrides, args


def main(argv: list[str] | None = None) -> list:
    """Evaluation rows (evaluation.Row), or pair-mode results (PairResult)."""
    configure_malloc()
    overrides, args = parse_command_line(argv)
    defaults = build_config(overrides)
    ckpt = find_checkpoint(defaults.checkpoint, defaults.exp_dir)
    trained = load_trained(ckpt)
    check_model_keys(overrides, trained.cfg, ckpt)
    cfg = build_config(overrides, base={**dataclasses.asdict(trained.cfg), "checkpoint": str(ckpt)})
    d = init_distributed(cfg.device, cfg.dist_timeout_min)  # under torchrun: before the model picks its GPU
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    embedder = checkpoint_embedder(cfg, trained.model, ckpt)
    log.info("checkpoint %s (%s), device %s, precision %s; embedding: %s", ckpt, cfg.model, embedder.device,
             embedder.precision, embedder.extraction.describe())
    if getattr(args, "enroll", None):
        if d.distributed:
            raise UserError("pair mode (--enroll, --test) embeds a handful of files: run it without torchrun")
        return verify_pairs(cfg, ckpt, embedder, args.enroll, args.test)
    evaluation = evaluate_checkpoint(cfg, ckpt, embedder)  # under torchrun: each rank embeds its share
    save = getattr(args, "save_embeddings", None)
    embeddings = embedder.embed(evaluation.files) if save is not None else {}  # from the cache
    if d.main:
        print(evaluation.markdown)
        if save is not None:
            save_embeddings(embeddings, evaluation.files, Path(save) if save else run_dir(ckpt) / "eval")
    finish_distributed(d)
    return [row.result for row in evaluation.rows]


if __name__ == "__main__":
    run_main(main)
