"""The one evaluation path: trial lists -> embeddings -> scores -> metrics (-> calibration -> report).

    evaluate(embedder, lists, scorer, plan)     the one function that turns trial lists into results; train.py
                                                (validation), evaluate_checkpoint, train_sort.py and the benches
                                                all call it
    evaluate_checkpoint(cfg, checkpoint)        a run's test lists under its evaluation settings, with every
                                                output: score files, calibration, eval/results.json|md, plots.
                                                train.py's final test and `python inference.py` are this call;
                                                with out=DIR, its scores/ and eval/ go to DIR (bench_sort's
                                                held-out list), the run's own left as they are

Outputs of `evaluate_checkpoint`, in the checkpoint's run folder <run>:
  scores/<list>[.<norm>][.<d>s].txt   `enroll test score label` per trial (no suffix: cosine, full length)
  eval/results.json, results.md       every number, with what it depends on: checkpoint (sha1), trial list
                                      (sha1), p_target, normalisation, cohort, crop policy, bootstrap
  eval/det.png, eval/hist_<list>.png  DET curves (probit axes), target / non-target score histograms
  eval/calibration.json               with a calibration list: score -> LLR per normalisation, development
                                      thresholds; pair mode reads it
  embeddings/<ckpt>-<hash>/           the embedding cache (embedding.EmbeddingStore)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from config import CHOICES, Config
from data.audio import audio_info
from data.corpus import cap_per_speaker, load_utterance_list
from data.features import FbankOptions, frontend_from_config, num_frames_for_samples, num_samples_for_frames
from data.trials import Trial, load_trials
from deploy import onnx_embedder
from distributed import current
from embedding import Embedder, extraction_from_config, file_sha1
from metrics import (
    CONFIDENCE,
    P_TARGETS,
    BootstrapCI,
    TrialSpeakers,
    bootstrap_metrics,
    cllr,
    min_cllr,
    operating_points,
    speaker_bootstrap,
    trial_speakers,
    verification_metrics,
)
from runs import load_trained, run_dir
from scoring import (
    CalibrationRecord,
    Cohort,
    Scorer,
    fit_calibration,
    l2_normalise,
    load_calibrations,
    make_cohort,
    plot_det,
    plot_histograms,
    save_calibrations,
    score_sides,
)
from utils import UserError, atomic_write_text, markdown_table, resolve_device, resolve_precision

log = logging.getLogger("voiceprint")


# --- trial lists -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialList:
    path: str
    name: str  # file stem, made unique among the lists of one call
    sha1: str
    trials: list[Trial]
    files: dict[str, str]  # utterance key -> file, both sides (an enrolment model's files included)
    labels: np.ndarray
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)  # enrolment model id -> its utterance
    # keys (CN-Celeb's enroll.map); {} = every trial's enroll key is one file
    enroll_map: str = ""  # the file `models` came from
    speakers: TrialSpeakers | None = None  # each trial's two speakers (speaker bootstrap); None = unknown


def trial_list_speakers(trials: Sequence[Trial], data_root: str, cnceleb: bool) -> TrialSpeakers | None:
    """The speaker of each side of each trial: from the folder's utt2spk (Kaldi layout), the first folder of
    the key (VoxCeleb layout: id10270/x6uYqmx31kE/00001.wav), or, for CN-Celeb lists, the file name up to its
    first '-' (id00800-enroll, test/id00800-singing-01-001.wav). None when a key fits none of these."""
    utt2spk_path = Path(data_root) / "utt2spk"
    utt2spk = dict(line.split(maxsplit=1) for line in utt2spk_path.read_text().splitlines() if line.strip()) \
        if utt2spk_path.is_file() and not cnceleb else {}

    def speaker(key: str) -> str | None:
        if cnceleb:
            return Path(key).name.split("-", 1)[0]
        if key in utt2spk:
            return utt2spk[key].strip()
        return key.split("/", 1)[0] if "/" in key else None

    enroll, test = [speaker(t.enroll) for t in trials], [speaker(t.test) for t in trials]
    if None in enroll or None in test:
        return None
    return trial_speakers(enroll, test)


def load_trial_lists(paths: Sequence[str], data_root: str) -> list[TrialList]:
    """Every list read and every file checked before any embedding: an error names the first missing file."""
    lists, names = [], set()
    for path in paths:
        listing = load_trials(path, data_root)
        name = Path(path).stem
        while name in names:
            name += "_"
        names.add(name)
        lists.append(TrialList(path, name, file_sha1(path), listing.trials, listing.files,
                               np.array([t.label for t in listing.trials]), listing.models, listing.enroll_map,
                               trial_list_speakers(listing.trials, data_root, bool(listing.models))))
    return lists


def score_list(scorer: Scorer, tl: TrialList, enroll: dict[str, np.ndarray], test: dict[str, np.ndarray],
               norm: str, enroll_mode: str = "mean_embedding") -> np.ndarray:
    """The scores of a list's trials, from embeddings by utterance key. An enrolment model of several files
    (tl.models) is scored by `enroll_mode`: mean_embedding = against the L2-normalised mean of its files'
    embeddings (as wespeaker's CN-Celeb "Avg" trials and pair mode); score_average = the mean of its files'
    scores (each normalised by `norm` first)."""
    if not tl.models:
        return scorer.score_trials(tl.trials, enroll, test, norm)
    if enroll_mode == "mean_embedding":
        used = {t.enroll for t in tl.trials}
        means = {m: l2_normalise(np.mean([enroll[k] for k in tl.models[m]], axis=0)) for m in used}
        return scorer.score_trials(tl.trials, means, test, norm)
    if enroll_mode == "score_average":
        return _score_average(scorer, tl, enroll, test, norm)
    raise ValueError(f"unknown enroll_mode '{enroll_mode}'; choose one of: {', '.join(CHOICES['enroll_mode'])}")


def _score_average(scorer: Scorer, tl: TrialList, enroll: dict[str, np.ndarray], test: dict[str, np.ndarray],
                   norm: str) -> np.ndarray:
    """Each trial's mean score over its model's files: every (file, test) pair scored, chunk by chunk."""
    model_ids = sorted({t.enroll for t in tl.trials})
    utts = sorted({k for m in model_ids for k in tl.models[m]})
    tests = sorted({t.test for t in tl.trials})
    u_index, t_index, m_index = ({k: i for i, k in enumerate(keys)} for keys in (utts, tests, model_ids))
    width = max(len(tl.models[m]) for m in model_ids)
    table = np.full((len(model_ids), width), -1)  # (M, U): each model's file indices, -1 padded
    for i, m in enumerate(model_ids):
        table[i, :len(tl.models[m])] = [u_index[k] for k in tl.models[m]]
    models = np.array([m_index[t.enroll] for t in tl.trials])  # (N,)
    test_of = np.array([t_index[t.test] for t in tl.trials])  # (N,)
    e_side = scorer.side(np.stack([enroll[k] for k in utts]), norm)
    t_side = scorer.side(np.stack([test[k] for k in tests]), norm)
    counts = (table >= 0).sum(axis=1)[models]  # (N,) files per trial's model
    chunk = max(1, (1 << 20) // width)
    scores = np.empty(len(tl.trials))
    for s in range(0, len(models), chunk):
        rows = table[models[s:s + chunk]]  # (n, U)
        pairs = score_sides(e_side, t_side, rows[rows >= 0], np.repeat(test_of[s:s + chunk], counts[s:s + chunk]))
        owner = np.repeat(np.arange(len(rows)), counts[s:s + chunk])  # the trial of each pair
        scores[s:s + chunk] = np.bincount(owner, weights=pairs, minlength=len(rows)) / counts[s:s + chunk]
    return scores


# --- the evaluation --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalPlan:
    """How the trials of a list are scored and measured, besides the embedding (the Embedder's Extraction)."""
    score_norms: tuple[str, ...] = ("none",)  # one result row per entry
    test_durations: tuple[float, ...] = ()  # extra rows with the test side cut to its first d seconds
    bootstrap: int = 0  # rounds of the bootstrap intervals; 0 = none
    seed: int = 0  # of the bootstrap
    enroll_mode: str = "mean_embedding"  # how an enrolment model of several files is scored (score_list)
    bootstrap_unit: str = "speaker"  # speaker: resample speakers (trial lists whose speakers are known); trial


def plan_from_config(cfg: Config) -> EvalPlan:
    return EvalPlan(tuple(cfg.score_norm), tuple(cfg.test_durations), cfg.bootstrap, cfg.seed, cfg.enroll_mode,
                    cfg.bootstrap_unit)


@dataclass(frozen=True)
class TrialResult:
    trials: str
    num_trials: int
    eer: float  # fraction
    min_dcf: dict[float, float]  # p_target -> normalised minDCF
    scores: np.ndarray
    labels: np.ndarray
    score_norm: str = "none"
    test_duration: float = 0.0  # seconds the test side was cut to; 0 = full length
    eer_threshold: float = math.nan  # score at the EER point
    min_dcf_threshold: dict[float, float] = field(default_factory=dict)  # p_target -> score at the minimum
    ci: BootstrapCI | None = None  # bootstrap intervals, when asked for


def trial_result(name: str, scores: np.ndarray, labels: np.ndarray, *, bootstrap: int = 0, seed: int = 0,
                 score_norm: str = "none", test_duration: float = 0.0,
                 speakers: TrialSpeakers | None = None) -> TrialResult:
    """Metrics of one scored list; with `bootstrap` rounds, intervals that resample the trials' `speakers`
    (metrics.speaker_bootstrap) or, with speakers None, the trials (metrics.bootstrap_metrics)."""
    m = verification_metrics(scores, labels, P_TARGETS)
    ci = None
    if bootstrap and speakers is not None:
        ci = speaker_bootstrap(scores, labels, speakers, P_TARGETS, rounds=bootstrap, confidence=CONFIDENCE,
                               seed=seed)
    elif bootstrap:
        ci = bootstrap_metrics(scores, labels, P_TARGETS, rounds=bootstrap, confidence=CONFIDENCE, seed=seed)
    return TrialResult(name, len(scores), m.eer.eer, {p: d.min_dcf for p, d in m.min_dcf.items()}, scores, labels,
                       score_norm, test_duration, m.eer.threshold, {p: d.threshold for p, d in m.min_dcf.items()},
                       ci)


@dataclass
class Row:
    """One line of the results: a trial list scored one way."""
    trial_list: TrialList
    result: TrialResult
    score_file: Path | None
    short_fraction: float = 0.0  # test files shorter than the test duration (kept whole)
    cllr: float | None = None
    min_cllr: float | None = None


def evaluate(embedder: Embedder, lists: Sequence[TrialList], scorer: Scorer, plan: EvalPlan,
             scores_dir: Path | None = None) -> list[Row]:
    """Every list scored under every normalisation of the plan, at full length and each test duration: one
    Row each, in that order. Each file is embedded once (and read from the embedder's cache, if it has one);
    with `scores_dir`, each row's scores are written there."""
    embeddings = embedder.embed({k: p for tl in lists for k, p in tl.files.items()})
    rows = []
    for tl in lists:
        for duration in (0.0, *plan.test_durations):
            test, short = _test_side(embedder, tl, duration) if duration else (embeddings, 0.0)
            for norm in plan.score_norms:
                rows.append(_score(tl, scorer, embeddings, test, norm, plan, duration, short, scores_dir))
    return rows


def _test_side(embedder: Embedder, tl: TrialList, seconds: float) -> tuple[dict[str, np.ndarray], float]:
    """The test files' embeddings from their first `seconds`, and the fraction of them that are shorter."""
    test_files = {t.test: tl.files[t.test] for t in tl.trials}
    frames = duration_frames(seconds, embedder.opts, embedder.extraction.max_frames)
    limit = num_samples_for_frames(frames, embedder.opts)
    short = float(np.mean([audio_info(p, embedder.sample_rate) < limit for p in test_files.values()]))
    return embedder.with_max_frames(frames).embed(test_files), short


def duration_frames(seconds: float, opts: FbankOptions, max_frames: int) -> int:
    frames = num_frames_for_samples(round(seconds * opts.sample_rate), opts)
    if frames < 1:
        raise UserError(f"test_durations: {seconds} s is shorter than one {opts.frame_length_ms} ms frame")
    return min(frames, max_frames) if max_frames else frames


def _score(tl: TrialList, scorer: Scorer, enroll: dict[str, np.ndarray], test: dict[str, np.ndarray], norm: str,
           plan: EvalPlan, duration: float, short: float, scores_dir: Path | None) -> Row:
    started = time.perf_counter()
    scores = score_list(scorer, tl, enroll, test, norm, plan.enroll_mode)
    if not np.isfinite(scores).all():  # e.g. a cohort whose scores do not vary: S-norm divides by 0
        i = int(np.argmin(np.isfinite(scores)))
        raise UserError(f"{tl.path}: {norm} score of trial {i + 1} ({tl.trials[i].enroll} {tl.trials[i].test}) is "
                        f"{scores[i]}")
    speakers = tl.speakers if plan.bootstrap_unit == "speaker" else None
    if plan.bootstrap and plan.bootstrap_unit == "speaker" and speakers is None:
        log.warning("%s: the speakers of its keys are unknown (no utt2spk, no <speaker>/ folder): its intervals "
                    "resample trials, and are too narrow", tl.path)
    result = trial_result(tl.path, scores, tl.labels, bootstrap=plan.bootstrap, seed=plan.seed, score_norm=norm,
                          test_duration=duration, speakers=speakers)
    path = None
    if scores_dir is not None:
        suffix = ("" if norm == "none" else f".{norm}") + (f".{duration:g}s" if duration else "")
        path = scores_dir / f"{tl.name}{suffix}.txt"
        write_scores(result, tl.trials, path)
    log.info("%s %s%s: EER %.2f%% (%.1f s)", tl.name, norm, f" {duration:g} s" if duration else "",
             100 * result.eer, time.perf_counter() - started)
    return Row(tl, result, path, short, min_cllr=min_cllr(scores, tl.labels))


def write_scores(result: TrialResult, trials: Sequence[Trial], path: Path) -> None:
    lines = (f"{t.enroll} {t.test} {s:.6f} {t.label}\n" for t, s in zip(trials, result.scores))
    atomic_write_text(path, "".join(lines))


# --- building the embedder and the scorer of a run -------------------------------------------------------

def checkpoint_embedder(cfg: Config, model: torch.nn.Module, checkpoint: Path) -> Embedder:
    """The embedder of a trained checkpoint under cfg's device, precision and extraction, with the run's cache
    (with --runtime onnx, deploy.OnnxEmbedder on its ONNX export). cfg's model keys are the checkpoint's
    (config.check_model_keys), so the front end is the one it trained on."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    embedder = Embedder(model.to(device), frontend_from_config(cfg).to(device), device, precision,
                        extraction_from_config(cfg), run_dir(checkpoint) / "embeddings", checkpoint.stem,
                        file_sha1(checkpoint), compile=cfg.compile)
    if cfg.runtime == "onnx":  # the same embedder, its forward run by onnxruntime on the checkpoint's export
        return onnx_embedder(cfg, embedder, checkpoint)
    return embedder


def read_train_list(run: Path) -> list:
    path = run / "train_list.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; S-norm, AS-norm and --subtract-mean take their cohort and mean from "
                        f"the training list the experiment wrote")
    return load_utterance_list(path)


def build_cohort(embedder: Embedder, run: Path, utts_per_speaker: int, seed: int, subtract: bool) -> Cohort:
    """The cohort (one mean embedding per training speaker) and the mean of --subtract-mean, from the run's
    training list: min(utts_per_speaker, its count) seeded-random utterances of each speaker (0 = all of them),
    embedded or read from the cache. The mean is that of these utterances: with a cap, every speaker weighs
    about alike; with all, each utterance does."""
    utts = cap_per_speaker(read_train_list(run), utts_per_speaker, seed)
    log.info("cohort: %d utterances of %d training speakers (%s per speaker)", len(utts),
             len({u.speaker for u in utts}), cohort_size_text(utts_per_speaker))
    emb = embedder.embed({u.key: u.path for u in utts}, {u.key: u.num_samples for u in utts})
    return make_cohort(np.stack([emb[u.key] for u in utts]), [u.speaker for u in utts], subtract,
                       str(run / "train_list.jsonl"))


def cohort_size_text(utts_per_speaker: int) -> str:
    return "all" if utts_per_speaker <= 0 else f"at most {utts_per_speaker}"


def scorer_from_config(cfg: Config, run: Path, embedder: Embedder, norms: Sequence[str]) -> Scorer:
    needs_cohort = cfg.subtract_mean or any(n != "none" for n in norms)
    cohort = (build_cohort(embedder, run, cfg.cohort_utts_per_speaker, cfg.seed, cfg.subtract_mean)
              if needs_cohort else None)
    return Scorer(cohort, cfg.subtract_mean, cfg.cohort_top_n)


def scoring_signature(cfg: Config, embedder: Embedder, norm: str) -> dict[str, object]:
    """What a score of normalisation `norm` depends on besides the trial: a calibration applies only to scores
    with the same signature."""
    uses_cohort = cfg.subtract_mean or norm != "none"
    cohort = ({"utts_per_speaker": cfg.cohort_utts_per_speaker, "seed": cfg.seed,
               "top_n": cfg.cohort_top_n if norm == "asnorm" else None} if uses_cohort else None)
    return {"checkpoint_sha1": embedder.checkpoint_sha1, "embedding_settings": embedder.settings_hash(),
            "subtract_mean": cfg.subtract_mean, "score_norm": norm, "cohort": cohort, "enroll_mode": cfg.enroll_mode}


# --- a checkpoint's full evaluation -----------------------------------------------------------------------

@dataclass
class Evaluation:
    rows: list[Row]
    markdown: str  # the report (eval/results.md)
    files: dict[str, str]  # key -> file of every test (and calibration) file


def evaluate_checkpoint(cfg: Config, checkpoint: Path, embedder: Embedder | None = None,
                        out: Path | None = None) -> Evaluation:
    """The test lists of cfg under its evaluation settings, scored, calibrated (cfg.calibrate) and reported in
    the run folder, or with `out` in out/scores and out/eval (module docstring; the embedding cache stays the
    run's). `embedder` defaults to the checkpoint's own (checkpoint_embedder).
    Under torchrun every rank calls it: each embeds its share of the files (Embedder.embed) and gets every
    result; rank 0 alone writes."""
    run, main = run_dir(checkpoint), current().main
    folder = out or run
    if not cfg.test_trials:
        raise UserError("nothing to evaluate: no --test-trials (pair mode: --enroll AUDIO --test AUDIO)")
    embedder = embedder or checkpoint_embedder(cfg, load_trained(checkpoint).model, checkpoint)
    lists = load_trial_lists(cfg.test_trials, cfg.test_data)
    dev = load_trial_lists([cfg.calibrate], cfg.calibrate_data or cfg.val_data)[0] if cfg.calibrate else None
    scorer = scorer_from_config(cfg, run, embedder, cfg.score_norm)
    rows = evaluate(embedder, lists, scorer, plan_from_config(cfg), folder / "scores" if main else None)
    signatures = {norm: scoring_signature(cfg, embedder, norm) for norm in cfg.score_norm}
    calibration_file = folder / "eval" / "calibration.json"
    records = _calibrations(cfg, dev, embedder, scorer, signatures, calibration_file, main)
    for row in rows:
        record = records.get(row.result.score_norm)
        if record:
            row.cllr = cllr(record.calibration.llr(row.result.scores), row.result.labels)
    header = report_header(cfg, checkpoint, embedder, scorer, records, calibration_file)
    markdown = write_report(folder / "eval", header, rows) if main else report_markdown(header, rows)
    log.info("scores in %s, results and plots in %s", folder / "scores", folder / "eval")
    files = {k: p for tl in [*lists, *([dev] if dev else [])] for k, p in tl.files.items()}
    return Evaluation(rows, markdown, files)


def _calibrations(cfg: Config, dev: TrialList | None, embedder: Embedder, scorer: Scorer,
                  signatures: dict[str, dict], calibration_file: Path, write: bool) -> dict[str, CalibrationRecord]:
    """With a development list: fit and save (`write`; the file keeps other normalisations' calibrations);
    without: the saved calibrations that were fitted to scores like these."""
    try:
        saved = load_calibrations(calibration_file) if calibration_file.is_file() else {}
    except UserError as err:  # a stale or foreign file: an evaluation does not need it
        log.warning("%s; ignored%s", err, " and replaced" if dev else "")
        saved = {}
    if dev is None:
        return matching_calibrations(saved, signatures, calibration_file)
    records = calibrate(cfg, dev, embedder.embed(dev.files), scorer, signatures)
    if write:
        save_calibrations(calibration_file, {**saved, **records})
    return records


def calibrate(cfg: Config, dev: TrialList, embeddings: dict[str, np.ndarray], scorer: Scorer,
              signatures: dict[str, dict]) -> dict[str, CalibrationRecord]:
    """One calibration per score normalisation, fitted on the development list at decision_p_target."""
    records = {}
    for norm in cfg.score_norm:
        scores = score_list(scorer, dev, embeddings, embeddings, norm, cfg.enroll_mode)
        calibration = fit_calibration(scores, dev.labels, cfg.decision_p_target)
        m = verification_metrics(scores, dev.labels, P_TARGETS)
        if calibration.slope <= 0:
            log.warning("calibration %s: slope %.3g <= 0 on %s: higher scores mean *less* likely the same "
                        "speaker there; the decisions will be wrong", norm, calibration.slope, dev.path)
        context = {"dev_trials": dev.path, "dev_trials_sha1": dev.sha1, "num_trials": len(dev.trials),
                   "signature": signatures[norm]}
        r = records[norm] = CalibrationRecord(calibration, cllr(calibration.llr(scores), dev.labels),
                                              min_cllr(scores, dev.labels), m.eer.eer, m.eer.threshold,
                                              {p: d.threshold for p, d in m.min_dcf.items()}, context)
        log.info("calibration %s on %s (%d trials): llr = %.4g * score %+.4g; Cllr %.4f bits (min %.4f); "
                 "thresholds: EER %.4f, %s", norm, dev.path, len(scores), calibration.slope, calibration.offset,
                 r.cllr, r.min_cllr, r.threshold_eer,
                 ", ".join(f"minDCF({p}) {t:.4f}" for p, t in r.threshold_min_dcf.items()))
    return records


def matching_calibrations(records: dict[str, CalibrationRecord], signatures: dict[str, dict],
                          source: Path) -> dict[str, CalibrationRecord]:
    """The calibrations fitted to scores like these (the same signature per normalisation)."""
    usable = {n: r for n, r in records.items() if n in signatures and r.context.get("signature") == signatures[n]}
    stale = [n for n in records if n in signatures and n not in usable]
    if stale:
        log.warning("%s: the calibration of %s was fitted to other scores (checkpoint, embedding, mean or cohort "
                    "settings differ): not used; run --calibrate again", source, ", ".join(stale))
    return usable


# --- report --------------------------------------------------------------------------------------------

def _interval(ci: tuple[float, float] | None, scale: float = 1.0, digits: int = 4) -> str:
    return f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]" if ci else ""


def row_record(row: Row) -> dict[str, object]:
    r = row.result
    tl = row.trial_list
    return {"trials": tl.path, "trials_sha1": tl.sha1, "num_trials": r.num_trials,
            "enroll_map": tl.enroll_map or None, "enroll_map_sha1": file_sha1(tl.enroll_map) if tl.enroll_map else None,
            "enrolment_models": len({t.enroll for t in tl.trials}) if tl.models else None,
            "num_target": int(r.labels.sum()), "test_duration_s": r.test_duration or None,
            "test_files_shorter": row.short_fraction if r.test_duration else None, "score_norm": r.score_norm,
            "eer": r.eer, "eer_ci": list(r.ci.eer) if r.ci else None, "ci_unit": r.ci.unit if r.ci else None,
            "eer_threshold": r.eer_threshold,
            "min_dcf": {str(p): v for p, v in r.min_dcf.items()},
            "min_dcf_ci": {str(p): list(v) for p, v in r.ci.min_dcf.items()} if r.ci else None,
            "min_dcf_threshold": {str(p): v for p, v in r.min_dcf_threshold.items()},
            "min_cllr": row.min_cllr, "cllr": row.cllr, "scores": str(row.score_file)}


def table_row(row: Row) -> dict[str, str]:
    r, ci = row.result, row.result.ci
    test_side = f"first {r.test_duration:g} s" if r.test_duration else "full"
    if row.short_fraction:
        test_side += f" ({100 * row.short_fraction:.0f}% of files shorter)"
    cells = {"trial list": row.trial_list.name, "sha1": row.trial_list.sha1[:10], "trials": str(r.num_trials),
             "test side": test_side, "norm": r.score_norm,
             "EER %": f"{100 * r.eer:.2f}" + _interval(ci and ci.eer, 100, 2),
             "min Cllr": f"{row.min_cllr:.3f}" if row.min_cllr is not None else "",
             "Cllr": f"{row.cllr:.3f}" if row.cllr is not None else ""}
    for p in P_TARGETS:
        cells[f"minDCF {p}"] = f"{r.min_dcf[p]:.4f}" + _interval(ci and ci.min_dcf[p])
    return cells


RESAMPLING = {"speaker": "speakers resampled with replacement, each trial weighted by its speakers' draws "
                           "(metrics.speaker_bootstrap)",
              "trial": "trials resampled with replacement within each class (metrics.bootstrap_metrics)"}

TABLE_COLUMNS = ["trial list", "sha1", "trials", "test side", "norm", "EER %",
                 *[f"minDCF {p}" for p in P_TARGETS], "min Cllr", "Cllr"]


def write_report(out: Path, header: dict[str, object], rows: Sequence[Row]) -> str:
    """results.json (every number and what it depends on), results.md (the same as a table), det.png and one
    histogram per list. Returns the Markdown."""
    atomic_write_text(out / "results.json", json.dumps({**header, "results": [row_record(r) for r in rows]},
                                                       indent=2) + "\n")
    markdown = report_markdown(header, rows)
    atomic_write_text(out / "results.md", markdown)
    curves = [(f"{r.trial_list.name} {r.result.score_norm}" + (f" {r.result.test_duration:g}s"
                                                               if r.result.test_duration else ""),
               operating_points(r.result.scores, r.result.labels)) for r in rows]
    plot_det(curves, out / "det.png", title=f"DET: {header['checkpoint']}")
    for tl in {id(r.trial_list): r.trial_list for r in rows}.values():
        panels = [(f"{tl.name}: {r.result.score_norm}", r.result.scores, r.result.labels)
                  for r in rows if r.trial_list is tl and not r.result.test_duration]
        plot_histograms(panels, out / f"hist_{tl.name}.png")
    return markdown


def report_markdown(header: dict[str, object], rows: Sequence[Row]) -> str:
    lines = [f"# Evaluation of {header['checkpoint']}", ""]
    lines += [f"- {key}: {value}" for key, value in header["summary"].items()]
    return "\n".join(lines) + "\n\n" + markdown_table(TABLE_COLUMNS, [table_row(r) for r in rows])


def report_header(cfg: Config, ckpt: Path, embedder: Embedder, scorer: Scorer,
                  calibrations: dict[str, CalibrationRecord], calibration_file: Path) -> dict[str, object]:
    cohort = scorer.cohort
    cohort_record = ({"train_list": cohort.train_list, "speakers": len(cohort.speakers), "utterances": cohort.num_utts,
                      "utts_per_speaker": cfg.cohort_utts_per_speaker, "top_n": cfg.cohort_top_n, "seed": cfg.seed}
                     if cohort else None)
    bootstrap = ({"rounds": cfg.bootstrap, "confidence": CONFIDENCE, "seed": cfg.seed,
                  "resampling": RESAMPLING[cfg.bootstrap_unit]} if cfg.bootstrap else None)
    return {"checkpoint": str(ckpt), "checkpoint_sha1": embedder.checkpoint_sha1, "model": cfg.model,
            "device": str(embedder.device), "precision": embedder.precision,
            "embedding": {"describe": embedder.extraction.describe(), **embedder.extraction.settings(),
                          "cache": str(embedder.cache_path), "settings_hash": embedder.settings_hash()},
            "subtract_mean": cfg.subtract_mean, "cohort": cohort_record, "enroll_mode": cfg.enroll_mode,
            "metrics": {"eer": "fraction; P_miss = P_fa on the linearly interpolated ROC",
                        "min_dcf": "normalised by min(C_miss p, C_fa (1 - p)) (NIST SRE)", "c_miss": 1.0,
                        "c_fa": 1.0, "p_targets": list(P_TARGETS), "bootstrap": bootstrap},
            "calibration": ({"file": str(calibration_file), **{n: {**dataclasses.asdict(r.calibration), **r.context}
                                                                for n, r in calibrations.items()}}
                            if calibrations else None),
            "summary": report_summary(cfg, ckpt, embedder, scorer, calibrations, calibration_file)}


ENROLL_DESCRIPTIONS = {
    "mean_embedding": "one file, or for a list with an enroll.map the L2-normalised mean of the enrolment "
                      "files' embeddings (enroll_mode mean_embedding)",
    "score_average": "one file, or for a list with an enroll.map the mean of the enrolment files' scores "
                     "(enroll_mode score_average)",
}


def report_summary(cfg: Config, ckpt: Path, embedder: Embedder, scorer: Scorer,
                   calibrations: dict[str, CalibrationRecord], calibration_file: Path) -> dict[str, str]:
    """The header's lines in words, for results.md."""
    cohort = scorer.cohort
    return {
        "checkpoint": f"`{ckpt}` (sha1 {embedder.checkpoint_sha1[:12]}), {cfg.model}, {embedder.device} "
                      f"{embedder.precision}",
        "embedding": embedder.extraction.describe(),
        "scoring": "; ".join(f"{n}: {scorer.describe(n)}" for n in cfg.score_norm),
        "enrolment": ENROLL_DESCRIPTIONS[cfg.enroll_mode],
        "cohort": (f"{len(cohort.speakers)} training speakers, {cohort.num_utts} utterances "
                   f"({cohort_size_text(cfg.cohort_utts_per_speaker)} per speaker, seed {cfg.seed})"
                   if cohort else "none"),
        "metrics": "EER in % (P_miss = P_fa on the linearly interpolated ROC); minDCF normalised as in the "
                   f"NIST SRE plans, C_miss = C_fa = 1, p_target {', '.join(map(str, P_TARGETS))}",
        "intervals": (f"{100 * CONFIDENCE:g}% bootstrap percentile intervals, {cfg.bootstrap} replicates, "
                      f"{RESAMPLING[cfg.bootstrap_unit]} (each row's `ci_unit` in results.json says which it got), "
                      f"seed {cfg.seed}" if cfg.bootstrap else "none"),
        "Cllr": ("; ".join(f"{n}: calibrated on {r.context['dev_trials']} (prior {r.calibration.prior:g})"
                           for n, r in calibrations.items()) + f" ({calibration_file})"
                 if calibrations else "no calibration (run with --calibrate DEV_TRIALS)"),
    }
