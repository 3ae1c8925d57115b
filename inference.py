"""Embed the files of trial lists with a trained model, score the trials, report every number a paper reports;
or verify test files against an enrolment (pair mode).

    python inference.py                                  # the newest experiment, its test trial list(s)
    python inference.py --checkpoint exp/NAME --test-data /data/vox1/wav \\
        --test-trials veri_test2.txt list_test_all2.txt list_test_hard2.txt --score-norm none asnorm
    python inference.py --calibrate corpora/demo/val/trials.txt    # also fit score -> LLR on a dev list
    python inference.py --test-durations 1,2,3,5                    # also EER with the test side cut to d s
    python inference.py --eval-crops 10 --eval-crop-frames 300      # mean embedding of 10 crops of 3 s
    python inference.py --save-embeddings                           # also <run>/eval/embeddings.npy + .txt
    python inference.py --enroll a.wav b.wav --test c.wav           # pair mode: score, LLR, decision

The checkpoint describes itself (config, speaker list, weights): the model and front end are rebuilt from it
alone; flags on this command line override the saved config's evaluation settings. Outputs go to the
checkpoint's experiment folder <run>:
  scores/<list>[.<norm>][.<d>s].txt   `enroll test score label` per trial (no suffix: cosine, full length)
  eval/results.json, results.md       every number, with what it depends on: checkpoint (sha1), trial list
                                      (sha1), p_target, normalisation, cohort, crop policy, bootstrap
  eval/det.png, eval/hist_<list>.png  DET curves (probit axes), target / non-target score histograms
  eval/calibration.json               --calibrate: score -> LLR per normalisation, development thresholds;
                                      pair mode reads it
  embeddings/<ckpt>-<hash>.npz        the cache: a file is embedded once per checkpoint and extraction
                                      settings (the hash), however many lists, normalisations or runs use it

Embedding (`extract_embeddings`). Full length by default: each file whole (at least MIN_EVAL_FRAMES, short
files wrap-padded), batched with files of the same frame count -- longest first, so a batch is a run of
equal lengths. Cutting a wave to the samples its frames cover changes nothing (the fbank frames and their
CMN are those of the whole file), so these batches give each file's embedding exactly as if it were alone
(up to float rounding in batched kernels). With eval_bucket_crop c > 0 a batch also takes files up to a
fraction c longer than its shortest, each cut to the shortest one's frames (a centred window): faster on
corpora of varied lengths, but no longer full length -- the results record it; bench/bench_eval.py measures
the speed and the EER difference. With eval_crops K > 0: the mean of the L2-normalised embeddings of K crops
of eval_crop_frames frames, evenly spaced from the file's start to its end (K = 1: the centred crop; a file
shorter than a crop: one crop, wrap-padded), re-normalised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from config import Config, build_config, make_parser, parse_args
from data.audio import audio_info, load_audio
from data.dataset import Trial, Utterance, cap_per_speaker, read_trials, trial_paths, wrap_pad
from data.features import FbankOptions, FrontEnd, SpecAugment, num_frames_for_samples, num_samples_for_frames
from loss import build_head
from models import build_model
from scoring import (
    CalibrationRecord,
    Cohort,
    Scorer,
    bayes_threshold,
    cllr,
    fit_calibration,
    l2_normalise,
    load_calibrations,
    make_cohort,
    markdown_table,
    min_cllr,
    plot_det,
    plot_histograms,
    save_calibrations,
)
from utils import (
    BootstrapCI,
    UserError,
    atomic_path,
    atomic_write_text,
    autocast,
    bootstrap_metrics,
    configure_malloc,
    load_checkpoint,
    operating_points,
    resolve_device,
    resolve_precision,
    run_main,
    verification_metrics,
)

log = logging.getLogger("voiceprint")

MIN_EVAL_FRAMES = 50  # shorter files are wrap-padded to 0.5 s so every network sees a usable input
P_TARGETS = (0.01, 0.05)  # minDCF operating points reported
CONFIDENCE = 0.95  # of the bootstrap intervals
CACHE_VERSION = 1  # bump when what an embedding means changes without a settings change


# --- building from a config ----------------------------------------------------------------------------

def fbank_options(cfg: Config) -> FbankOptions:
    return FbankOptions(sample_rate=cfg.sample_rate, frame_length_ms=cfg.frame_length_ms,
                        frame_shift_ms=cfg.frame_shift_ms, num_mel_bins=cfg.n_mels, window_type=cfg.window_type)


def build_frontend(cfg: Config) -> FrontEnd:
    """The one feature path: training, inference and train_sort all call this."""
    spec_augment = (SpecAugment(cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks, cfg.time_mask_width)
                    if cfg.spec_augment else None)
    return FrontEnd(fbank_options(cfg), dither=cfg.dither, cmn=cfg.cmn, spec_augment=spec_augment)


def build_network(cfg: Config, num_speakers: int) -> tuple[nn.Module, nn.Module]:
    model = build_model(cfg.model, n_mels=cfg.n_mels, embed_dim=cfg.embed_dim or None,
                        channels=cfg.channels or None)
    head = build_head(cfg.loss, embed_dim=model.embed_dim, num_speakers=num_speakers, margin=cfg.margin,
                      scale=cfg.scale, subcenters=cfg.subcenters, easy_margin=cfg.easy_margin)
    return model, head


@dataclass
class Trained:
    """Everything a checkpoint rebuilds."""
    cfg: Config
    model: nn.Module
    head: nn.Module
    speakers: list[str]
    path: Path


def load_trained(path: Path) -> Trained:
    state = load_checkpoint(path)
    cfg = build_config({}, base=state["config"])
    model, head = build_network(cfg, len(state["speakers"]))
    model.load_state_dict(state["model"])
    head.load_state_dict(state["head"])
    return Trained(cfg, model.eval(), head.eval(), list(state["speakers"]), Path(path))


def find_checkpoint(spec: str, exp_root: str) -> Path:
    """A checkpoint file, an experiment folder (its best.pt, else its newest epoch), or '' = the newest
    experiment under exp_root."""
    if spec and Path(spec).is_file():
        return Path(spec)
    if spec:
        folder = Path(spec)
        if not folder.is_dir():
            raise UserError(f"{spec}: no such checkpoint file or experiment folder")
    else:
        runs = [p.parent.parent for p in Path(exp_root).glob("*/checkpoints/*.pt")]
        if not runs:
            raise UserError(f"no trained experiment under {exp_root}/; run python train.py first")
        folder = max(set(runs), key=lambda p: max(c.stat().st_mtime for c in (p / "checkpoints").glob("*.pt")))
    best = folder / "checkpoints" / "best.pt"
    epochs = sorted((folder / "checkpoints").glob("epoch_*.pt"))
    if best.is_file():
        return best
    if epochs:
        return epochs[-1]
    raise UserError(f"{folder}: no checkpoints in {folder / 'checkpoints'}")


def run_dir(checkpoint: Path) -> Path:
    """The experiment folder of a checkpoint: <run> for <run>/checkpoints/x.pt, else the file's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


# --- embedding extraction ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extraction:
    """How a file becomes one embedding (module docstring). With the checkpoint, `settings()` names the cache."""
    crops: int = 0  # K evenly spaced crops, their embeddings averaged; 0 = full length
    crop_frames: int = 300  # frames per crop
    max_frames: int = 0  # full length (or the span the crops come from): the first max_frames; 0 = all
    bucket_crop: float = 0.0  # full length: fraction of a file's frames a batch may cut; 0 = exact
    batch_size: int = 16  # files (full length) or crops per forward pass; changes speed, not embeddings

    def settings(self) -> dict[str, object]:
        """What the embeddings depend on (not the batch size: equal frame counts batch exactly)."""
        if self.crops:
            return {"crops": self.crops, "crop_frames": self.crop_frames, "max_frames": self.max_frames}
        return {"crops": 0, "max_frames": self.max_frames, "bucket_crop": self.bucket_crop}

    def describe(self) -> str:
        span = f" of the first {self.max_frames} frames" if self.max_frames else ""
        if self.crops:
            return f"mean of {self.crops} evenly spaced crops of {self.crop_frames} frames{span}"
        cut = (f"batched with files up to {100 * self.bucket_crop:g}% longer, cut (centred) to the shortest"
               if self.bucket_crop else "batched by equal frame count (exact)")
        return f"full length{span}, {cut}"


def build_extraction(cfg: Config) -> Extraction:
    return Extraction(cfg.eval_crops, cfg.eval_crop_frames, cfg.max_eval_frames, cfg.eval_bucket_crop,
                      cfg.eval_batch_size)


@torch.no_grad()
def extract_embeddings(model: nn.Module, frontend: FrontEnd, paths: dict[str, str], *, sample_rate: int,
                       device: torch.device, precision: str, max_frames: int = 0, crops: int = 0,
                       crop_frames: int = 300, batch_size: int = 16, bucket_crop: float = 0.0,
                       lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """L2-normalised (D,) embedding of every file: full length (or its first `max_frames` frames), or the mean
    of `crops` crops of `crop_frames` frames; batched as the module docstring says. `lengths` (samples at
    sample_rate, e.g. Utterance.num_samples of a corpus index) saves the header reads that plan the batches."""
    model.eval()
    frontend.eval()
    extraction = Extraction(crops, crop_frames, max_frames, bucket_crop, batch_size)
    extractor = Extractor(model, frontend, sample_rate, device, precision, extraction)
    known = lengths or {}
    lengths = {k: known.get(k) or audio_info(p, sample_rate) for k, p in paths.items()}  # a bad file fails here
    embeddings: dict[str, np.ndarray] = {}
    with tqdm(total=len(paths), unit="file", desc="embedding", disable=None, leave=False) as bar:
        batches = extractor.crop_batches(lengths) if crops else extractor.full_length_batches(lengths)
        for keys in batches:
            embed = extractor.embed_crops if crops else extractor.embed_full_length
            embeddings.update(embed(keys, paths))
            bar.update(len(keys))
    return {k: embeddings[k] for k in paths}


@dataclass
class Extractor:
    """The batching and cropping of `extract_embeddings` (module docstring), for one model and setting."""
    model: nn.Module
    frontend: FrontEnd
    sample_rate: int
    device: torch.device
    precision: str
    extraction: Extraction

    @property
    def opts(self) -> FbankOptions:
        return self.frontend.opts

    def span(self, length: int) -> int:
        """Samples of a file of `length` samples that are embedded (before wrap padding)."""
        max_frames = self.extraction.max_frames
        return min(length, num_samples_for_frames(max_frames, self.opts)) if max_frames else length

    def load(self, path: str) -> np.ndarray:
        max_frames = self.extraction.max_frames
        stop = num_samples_for_frames(max_frames, self.opts) if max_frames else None
        return load_audio(path, self.sample_rate, 0, stop)

    @torch.no_grad()
    def forward(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) equal-length waves -> (B, D) L2-normalised embeddings."""
        x = torch.from_numpy(np.stack(waves)).to(self.device)  # (B, N)
        feats = self.frontend(x)  # (B, T, F)
        with autocast(self.device, self.precision):
            emb = self.model(feats)  # (B, D)
        return F.normalize(emb.float(), dim=-1).cpu().numpy()

    # full length

    def frames(self, num_samples: int) -> int:
        min_samples = num_samples_for_frames(MIN_EVAL_FRAMES, self.opts)
        return num_frames_for_samples(max(num_samples, min_samples), self.opts)

    def full_length_batches(self, lengths: dict[str, int]) -> list[list[str]]:
        """Files longest first; a batch takes the next file while it is at least (1 - bucket_crop) times its
        first (longest) file's frame count and fewer than batch_size files are in it."""
        frames = {k: self.frames(self.span(n)) for k, n in lengths.items()}
        batches: list[list[str]] = []
        for key in sorted(frames, key=lambda k: (-frames[k], k)):
            if (batches and len(batches[-1]) < self.extraction.batch_size
                    and frames[key] >= frames[batches[-1][0]] * (1.0 - self.extraction.bucket_crop)):
                batches[-1].append(key)
            else:
                batches.append([key])
        return batches

    def embed_full_length(self, keys: Sequence[str], paths: dict[str, str]) -> dict[str, np.ndarray]:
        min_samples = num_samples_for_frames(MIN_EVAL_FRAMES, self.opts)
        waves = [self.load(paths[k]) for k in keys]
        waves = [wrap_pad(w, min_samples) if len(w) < min_samples else w for w in waves]
        frames = np.array([num_frames_for_samples(len(w), self.opts) for w in waves])
        # a header length can differ from the decoded one by a sample (resampled files): group by the decoded
        groups = [np.arange(len(keys))] if self.extraction.bucket_crop else [
            np.flatnonzero(frames == t) for t in np.unique(frames)]
        out = {}
        for group in groups:
            shortest = int(frames[group].min())
            cut = [self.centred(waves[i], int(frames[i]), shortest) for i in group]
            out.update(zip([keys[i] for i in group], self.forward(cut)))
        return out

    def centred(self, wave: np.ndarray, frames: int, target: int) -> np.ndarray:
        """The samples of `target` frames centred in the wave's `frames` frames (all of them when equal)."""
        start = (frames - target) // 2 * self.opts.frame_shift
        return wave[start:start + num_samples_for_frames(target, self.opts)]

    # crops

    def crop_batches(self, lengths: dict[str, int]) -> list[list[str]]:
        """Files in order, as many per batch as fill batch_size crops (at least one file)."""
        per_file = max(1, self.extraction.batch_size // self.extraction.crops)
        keys = list(lengths)
        return [keys[i:i + per_file] for i in range(0, len(keys), per_file)]

    def crop_starts(self, length: int) -> list[int]:
        window = num_samples_for_frames(self.extraction.crop_frames, self.opts)
        if length <= window:
            return [0]
        if self.extraction.crops == 1:
            return [(length - window) // 2]
        return [int(s) for s in np.linspace(0, length - window, self.extraction.crops).round()]

    def embed_crops(self, keys: Sequence[str], paths: dict[str, str]) -> dict[str, np.ndarray]:
        window = num_samples_for_frames(self.extraction.crop_frames, self.opts)
        crops, owners = [], []
        for i, key in enumerate(keys):
            wave = self.load(paths[key])
            for start in self.crop_starts(len(wave)):
                crops.append(wrap_pad(wave[start:start + window], window))
                owners.append(i)
        emb = self.forward(crops)  # (crops, D)
        owners = np.array(owners)
        return {key: l2_normalise(emb[owners == i].mean(axis=0)) for i, key in enumerate(keys)}


# --- the embedding cache -------------------------------------------------------------------------------

def file_sha1(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Embedder:
    """A model and front end on a device with extraction settings; with `cache_dir`, embeddings are kept in
    <cache_dir>/<checkpoint stem>-<hash of checkpoint sha1 and settings>.npz, keyed by utterance key + file
    path, and each file is embedded once. A file rewritten under the same path keeps its old embedding:
    delete the cache after editing audio in place."""
    model: nn.Module
    frontend: FrontEnd
    sample_rate: int
    device: torch.device
    precision: str
    extraction: Extraction
    cache_dir: Path | None = None
    checkpoint_name: str = "model"  # the checkpoint's stem, first part of the cache file name
    checkpoint_sha1: str = ""

    def settings(self) -> dict[str, object]:
        return {"version": CACHE_VERSION, "checkpoint_sha1": self.checkpoint_sha1,
                "extraction": self.extraction.settings(), "fbank": dataclasses.asdict(self.frontend.opts),
                "cmn": self.frontend.cmn, "min_eval_frames": MIN_EVAL_FRAMES, "precision": self.precision}

    def settings_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.checkpoint_name}-{self.settings_hash()}.npz"

    def with_max_frames(self, max_frames: int) -> Embedder:
        return dataclasses.replace(self, extraction=dataclasses.replace(self.extraction, max_frames=max_frames))

    def embed(self, paths: dict[str, str], lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """key -> embedding of each file, from the cache or extracted (`lengths`: see extract_embeddings)."""
        cached = read_embedding_cache(self.cache_path) if self.cache_path else {}
        found = {k: cached[(k, p)] for k, p in paths.items() if (k, p) in cached}
        todo = {k: p for k, p in paths.items() if k not in found}
        if self.cache_path:
            log.info("embeddings: %d of %d files from %s, %d to embed", len(found), len(paths), self.cache_path,
                     len(todo))
        if not todo:
            return {k: found[k] for k in paths}
        x = self.extraction
        new = extract_embeddings(self.model, self.frontend, todo, sample_rate=self.sample_rate, device=self.device,
                                 precision=self.precision, max_frames=x.max_frames, crops=x.crops,
                                 crop_frames=x.crop_frames, batch_size=x.batch_size, bucket_crop=x.bucket_crop,
                                 lengths=lengths)
        if self.cache_path:
            write_embedding_cache(self.cache_path, {(k, todo[k]): e for k, e in new.items()}, self.settings())
        return {k: found[k] if k in found else new[k] for k in paths}


def read_embedding_cache(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(key, path) -> embedding; {} when the file is absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, files, matrix = data["keys"], data["paths"], data["embeddings"]
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s: unreadable embedding cache (%s); re-embedding", path, err)
        return {}
    return {(str(k), str(p)): row for k, p, row in zip(keys, files, matrix)}


def write_embedding_cache(path: Path, new: dict[tuple[str, str], np.ndarray], settings: dict) -> None:
    """Add entries to the cache file, atomically (a concurrent writer's additions may be lost, never torn)."""
    entries = {**read_embedding_cache(path), **new}
    items = sorted(entries.items())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.array([k for (k, _), _ in items]), paths=np.array([p for (_, p), _ in items]),
                 embeddings=np.stack([e for _, e in items]).astype(np.float32),
                 settings=np.array(json.dumps(settings, sort_keys=True)))


def save_embeddings(embeddings: dict[str, np.ndarray], paths: dict[str, str], folder: Path) -> None:
    """folder/embeddings.npy (N, D) float32 and folder/embeddings.txt, line i = `<key> <path>` of row i."""
    keys = sorted(embeddings)
    with atomic_path(folder / "embeddings.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.stack([embeddings[k] for k in keys]).astype(np.float32))
    atomic_write_text(folder / "embeddings.txt", "".join(f"{k} {paths[k]}\n" for k in keys))
    log.info("embeddings of %d files written to %s/embeddings.npy (+ .txt index)", len(keys), folder)


# --- cohort ---------------------------------------------------------------------------------

def read_train_list(run: Path) -> list[Utterance]:
    path = run / "train_list.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; S-norm, AS-norm and --subtract-mean take their cohort and mean from "
                        f"the training list the experiment wrote")
    return [Utterance(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def build_cohort(embedder: Embedder, run: Path, utts_per_speaker: int, seed: int, subtract: bool) -> Cohort:
    """Embeds (or reads from the cache) `utts_per_speaker` seeded-random training utterances per speaker."""
    utts = cap_per_speaker(read_train_list(run), utts_per_speaker, seed)
    log.info("cohort: %d utterances of %d training speakers", len(utts), len({u.speaker for u in utts}))
    emb = embedder.embed({u.key: u.path for u in utts}, {u.key: u.num_samples for u in utts})
    return make_cohort(np.stack([emb[u.key] for u in utts]), [u.speaker for u in utts], subtract,
                       str(run / "train_list.jsonl"))


def build_scorer(cfg: Config, run: Path, embedder: Embedder, norms: Sequence[str]) -> Scorer:
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
            "subtract_mean": cfg.subtract_mean, "score_norm": norm, "cohort": cohort}


# --- metrics of a list ---------------------------------------------------------------------------------

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
                 score_norm: str = "none", test_duration: float = 0.0) -> TrialResult:
    m = verification_metrics(scores, labels, P_TARGETS)
    ci = (bootstrap_metrics(scores, labels, P_TARGETS, rounds=bootstrap, confidence=CONFIDENCE, seed=seed)
          if bootstrap else None)
    return TrialResult(name, len(scores), m.eer.eer, {p: d.min_dcf for p, d in m.min_dcf.items()}, scores, labels,
                       score_norm, test_duration, m.eer.threshold, {p: d.threshold for p, d in m.min_dcf.items()},
                       ci)


def evaluate_trials(model: nn.Module, frontend: FrontEnd, trials_path: str, data_root: str, *, sample_rate: int,
                    device: torch.device, precision: str, max_frames: int = 0,
                    cache: dict[str, np.ndarray] | None = None, crops: int = 0, crop_frames: int = 300,
                    batch_size: int = 16, bucket_crop: float = 0.0, bootstrap: int = 0,
                    seed: int = 0) -> TrialResult:
    """Cosine-score one trial list: EER and minDCF (and bootstrap intervals with `bootstrap` rounds). `cache`
    (in memory) shares embeddings between lists; the extraction arguments are those of extract_embeddings."""
    trials = read_trials(trials_path)
    paths = trial_paths(trials, data_root, trials_path)
    cache = {} if cache is None else cache  # files shared by several trial lists are embedded once
    todo = {k: p for k, p in paths.items() if k not in cache}
    cache.update(extract_embeddings(model, frontend, todo, sample_rate=sample_rate, device=device,
                                    precision=precision, max_frames=max_frames, crops=crops,
                                    crop_frames=crop_frames, batch_size=batch_size, bucket_crop=bucket_crop))
    scores = Scorer().score_trials(trials, cache, cache, "none")
    labels = np.array([t.label for t in trials])
    return trial_result(trials_path, scores, labels, bootstrap=bootstrap, seed=seed)


# --- evaluation of trial lists -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialList:
    path: str
    name: str  # file stem, made unique among the lists of one call
    sha1: str
    trials: list[Trial]
    files: dict[str, str]  # utterance key -> file
    labels: np.ndarray


def load_trial_lists(paths: Sequence[str], data_root: str) -> list[TrialList]:
    """Every list read and every file checked before any embedding: an error names the first missing file."""
    lists, names = [], set()
    for path in paths:
        trials = read_trials(path)
        name = Path(path).stem
        while name in names:
            name += "_"
        names.add(name)
        lists.append(TrialList(path, name, file_sha1(path), trials, trial_paths(trials, data_root, path),
                               np.array([t.label for t in trials])))
    return lists


def duration_frames(seconds: float, opts: FbankOptions, max_frames: int) -> int:
    frames = num_frames_for_samples(round(seconds * opts.sample_rate), opts)
    if frames < 1:
        raise UserError(f"test_durations: {seconds} s is shorter than one {opts.frame_length_ms} ms frame")
    return min(frames, max_frames) if max_frames else frames


@dataclass
class Row:
    """One line of the results: a trial list scored one way."""
    trial_list: TrialList
    result: TrialResult
    score_file: Path
    short_fraction: float = 0.0  # test files shorter than the test duration (kept whole)
    cllr: float | None = None
    min_cllr: float | None = None


def score_lists(cfg: Config, lists: Sequence[TrialList], embedder: Embedder, scorer: Scorer,
                embeddings: dict[str, np.ndarray], scores_dir: Path) -> list[Row]:
    rows = []
    for tl in lists:
        for duration in [0.0, *cfg.test_durations]:
            test, short = embeddings, 0.0
            if duration:
                test_files = {t.test: tl.files[t.test] for t in tl.trials}
                frames = duration_frames(duration, embedder.frontend.opts, cfg.max_eval_frames)
                test = embedder.with_max_frames(frames).embed(test_files)
                limit = num_samples_for_frames(frames, embedder.frontend.opts)
                short = float(np.mean([audio_info(p, cfg.sample_rate) < limit for p in test_files.values()]))
            for norm in cfg.score_norm:
                started = time.perf_counter()
                scores = scorer.score_trials(tl.trials, embeddings, test, norm)
                result = trial_result(tl.path, scores, tl.labels, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                      score_norm=norm, test_duration=duration)
                suffix = ("" if norm == "none" else f".{norm}") + (f".{duration:g}s" if duration else "")
                path = scores_dir / f"{tl.name}{suffix}.txt"
                write_scores(result, tl.trials, path)
                log.info("%s %s%s: EER %.2f%% (%.1f s)", tl.name, norm, f" {duration:g} s" if duration else "",
                         100 * result.eer, time.perf_counter() - started)
                rows.append(Row(tl, result, path, short, min_cllr=min_cllr(scores, tl.labels)))
    return rows


def write_scores(result: TrialResult, trials: Sequence[Trial], path: Path) -> None:
    lines = (f"{t.enroll} {t.test} {s:.6f} {t.label}\n" for t, s in zip(trials, result.scores))
    atomic_write_text(path, "".join(lines))


def calibrate(cfg: Config, dev: TrialList, embeddings: dict[str, np.ndarray], scorer: Scorer,
              signatures: dict[str, dict]) -> dict[str, CalibrationRecord]:
    """One calibration per score normalisation, fitted on the development list at decision_p_target."""
    records = {}
    for norm in cfg.score_norm:
        scores = scorer.score_trials(dev.trials, embeddings, embeddings, norm)
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
        print(f"calibration {norm} on {dev.path} ({len(scores)} trials): llr = {calibration.slope:.4g} * score "
              f"{calibration.offset:+.4g}; Cllr {r.cllr:.4f} bits (min {r.min_cllr:.4f}); thresholds: EER "
              f"{r.threshold_eer:.4f}, " + ", ".join(f"minDCF({p}) {t:.4f}" for p, t in r.threshold_min_dcf.items()))
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
    return {"trials": row.trial_list.path, "trials_sha1": row.trial_list.sha1, "num_trials": r.num_trials,
            "num_target": int(r.labels.sum()), "test_duration_s": r.test_duration or None,
            "test_files_shorter": row.short_fraction if r.test_duration else None, "score_norm": r.score_norm,
            "eer": r.eer, "eer_ci": list(r.ci.eer) if r.ci else None, "eer_threshold": r.eer_threshold,
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


TABLE_COLUMNS = ["trial list", "sha1", "trials", "test side", "norm", "EER %",
                 *[f"minDCF {p}" for p in P_TARGETS], "min Cllr", "Cllr"]


def write_report(out: Path, header: dict[str, object], rows: Sequence[Row]) -> str:
    """results.json (every number and what it depends on), results.md (the same as a table), det.png and one
    histogram per list. Returns the Markdown."""
    atomic_write_text(out / "results.json", json.dumps({**header, "results": [row_record(r) for r in rows]},
                                                       indent=2) + "\n")
    lines = [f"# Evaluation of {header['checkpoint']}", ""]
    lines += [f"- {key}: {value}" for key, value in header["summary"].items()]
    markdown = "\n".join(lines) + "\n\n" + markdown_table(TABLE_COLUMNS, [table_row(r) for r in rows])
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


def report_header(cfg: Config, ckpt: Path, embedder: Embedder, scorer: Scorer,
                  calibrations: dict[str, CalibrationRecord], calibration_file: Path) -> dict[str, object]:
    cohort = scorer.cohort
    cohort_record = ({"train_list": cohort.train_list, "speakers": len(cohort.speakers), "utterances": cohort.num_utts,
                      "utts_per_speaker": cfg.cohort_utts_per_speaker, "top_n": cfg.cohort_top_n, "seed": cfg.seed}
                     if cohort else None)
    bootstrap = ({"rounds": cfg.bootstrap, "confidence": CONFIDENCE, "seed": cfg.seed,
                  "resampling": "trials, with replacement, within each class"} if cfg.bootstrap else None)
    summary = {
        "checkpoint": f"`{ckpt}` (sha1 {embedder.checkpoint_sha1[:12]}), {cfg.model}, {embedder.device} "
                      f"{embedder.precision}",
        "embedding": embedder.extraction.describe(),
        "scoring": "; ".join(f"{n}: {scorer.describe(n)}" for n in cfg.score_norm),
        "cohort": (f"{len(cohort.speakers)} training speakers, {cohort.num_utts} utterances "
                   f"({cfg.cohort_utts_per_speaker} per speaker at most, seed {cfg.seed})" if cohort else "none"),
        "metrics": "EER in % (P_miss = P_fa on the linearly interpolated ROC); minDCF normalised as in the "
                   f"NIST SRE plans, C_miss = C_fa = 1, p_target {', '.join(map(str, P_TARGETS))}",
        "intervals": (f"{100 * CONFIDENCE:g}% bootstrap percentile intervals, {cfg.bootstrap} replicates, trials "
                      f"resampled within each class, seed {cfg.seed}" if cfg.bootstrap else "none"),
        "Cllr": ("; ".join(f"{n}: calibrated on {r.context['dev_trials']} (prior {r.calibration.prior:g})"
                           for n, r in calibrations.items()) + f" ({calibration_file})"
                 if calibrations else "no calibration (run with --calibrate DEV_TRIALS)"),
    }
    return {"checkpoint": str(ckpt), "checkpoint_sha1": embedder.checkpoint_sha1, "model": cfg.model,
            "device": str(embedder.device), "precision": embedder.precision,
            "embedding": {"describe": embedder.extraction.describe(), **embedder.extraction.settings(),
                          "cache": str(embedder.cache_path), "settings_hash": embedder.settings_hash()},
            "subtract_mean": cfg.subtract_mean, "cohort": cohort_record,
            "metrics": {"eer": "fraction; P_miss = P_fa on the linearly interpolated ROC",
                        "min_dcf": "normalised by min(C_miss p, C_fa (1 - p)) (NIST SRE)", "c_miss": 1.0,
                        "c_fa": 1.0, "p_targets": list(P_TARGETS), "bootstrap": bootstrap},
            "calibration": ({"file": str(calibration_file), **{n: {**dataclasses.asdict(r.calibration), **r.context}
                                                                for n, r in calibrations.items()}}
                            if calibrations else None),
            "summary": summary}


def evaluate(cfg: Config, ckpt: Path, embedder: Embedder, save_to: Path | None = None) -> list[TrialResult]:
    """Every test list, every normalisation and test duration: score files, results, plots, calibration."""
    run = run_dir(ckpt)
    if not cfg.test_trials:
        raise UserError("nothing to evaluate: no --test-trials (pair mode: --enroll AUDIO --test AUDIO)")
    lists = load_trial_lists(cfg.test_trials, cfg.test_data)
    dev = load_trial_lists([cfg.calibrate], cfg.calibrate_data or cfg.val_data)[0] if cfg.calibrate else None
    files = {k: p for tl in lists for k, p in tl.files.items()}
    embeddings = embedder.embed(files)
    dev_embeddings = embedder.embed(dev.files) if dev else {}
    scorer = build_scorer(cfg, run, embedder, cfg.score_norm)
    rows = score_lists(cfg, lists, embedder, scorer, embeddings, run / "scores")

    out = run / "eval"
    signatures = {norm: scoring_signature(cfg, embedder, norm) for norm in cfg.score_norm}
    calibration_file = out / "calibration.json"
    try:
        saved = load_calibrations(calibration_file) if calibration_file.is_file() else {}
    except UserError as err:  # a stale or foreign file: an evaluation does not need it
        log.warning("%s; ignored%s", err, " and replaced" if dev else "")
        saved = {}
    if dev:  # the file keeps the calibrations of the other normalisations
        records = calibrate(cfg, dev, dev_embeddings, scorer, signatures)
        save_calibrations(calibration_file, {**saved, **records})
    else:
        records = matching_calibrations(saved, signatures, calibration_file)
    for row in rows:
        record = records.get(row.result.score_norm)
        if record:
            row.cllr = cllr(record.calibration.llr(row.result.scores), row.result.labels)
    header = report_header(cfg, ckpt, embedder, scorer, records, calibration_file)
    markdown = write_report(out, header, rows)
    print(markdown)
    if save_to is not None:
        save_embeddings({**dev_embeddings, **embeddings}, {**(dev.files if dev else {}), **files}, save_to)
    log.info("scores in %s, results and plots in %s", run / "scores", out)
    return [row.result for row in rows]


# --- pair mode -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairResult:
    test: str
    score: float
    llr: float | None  # calibrated log-likelihood ratio (natural log), when a calibration applies
    accept: bool | None  # the decision, when a calibration (with its thresholds) applies
    rule: str  # how the decision was taken, or why there is none


@dataclass(frozen=True)
class Decision:
    llr: float | None  # calibrated log-likelihood ratio (natural log)
    accept: bool | None  # None: no calibration, so no threshold
    text: str  # the decision and its rule, or why there is none


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


def verify_pairs(cfg: Config, ckpt: Path, embedder: Embedder, enroll: Sequence[str],
                 tests: Sequence[str]) -> list[PairResult]:
    """Score each test file against the mean embedding of the enrolment files (first score_norm)."""
    run, norm = run_dir(ckpt), cfg.score_norm[0]
    single = dataclasses.replace(embedder, cache_dir=None)
    enroll_emb = single.embed({f"enroll:{p}": p for p in enroll})
    test_emb = single.embed({f"test:{p}": p for p in tests})
    scorer = build_scorer(cfg, run, embedder, [norm])
    enrolment = l2_normalise(np.mean(list(enroll_emb.values()), axis=0))[None]  # (1, D)
    scores = scorer.score(enrolment, np.stack(list(test_emb.values())), np.zeros(len(tests), dtype=int),
                          np.arange(len(tests)), norm)
    calibration_file = run / "eval" / "calibration.json"
    saved = load_calibrations(calibration_file) if calibration_file.is_file() else {}
    record = matching_calibrations(saved, {norm: scoring_signature(cfg, embedder, norm)}, calibration_file).get(norm)
    print(f"enrolment: {len(enroll)} file(s), embeddings averaged; scoring: {scorer.describe(norm)}")
    results = []
    for path, score in zip(tests, scores):
        d = decide(float(score), record, cfg.decision_threshold, cfg.decision_p_target, calibration_file)
        results.append(PairResult(path, float(score), d.llr, d.accept, d.text))
        print(f"{path}: score {score:.4f}" + (f"  llr {d.llr:.3f}" if d.llr is not None else "") + f"  {d.text}")
    return results


# --- script --------------------------------------------------------------------------------------------

def make_embedder(cfg: Config, trained: Trained, ckpt: Path) -> Embedder:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    return Embedder(trained.model.to(device), build_frontend(cfg).to(device), cfg.sample_rate, device, precision,
                    build_extraction(cfg), run_dir(ckpt) / "embeddings", ckpt.stem, file_sha1(ckpt))


def main(argv: list[str] | None = None) -> list[TrialResult] | list[PairResult]:
    configure_malloc()
    parser = make_parser(__doc__)
    parser.add_argument("--enroll", nargs="+", metavar="AUDIO",
                        help="pair mode: enrolment file(s); several are averaged as embeddings")
    parser.add_argument("--test", nargs="+", metavar="AUDIO", help="pair mode: file(s) to verify")
    parser.add_argument("--save-embeddings", nargs="?", const="", metavar="DIR",
                        help="also write the trial files' embeddings: DIR/embeddings.npy (N, D) and "
                             "DIR/embeddings.txt (row i: key path); default DIR <run>/eval")
    overrides, args = parse_args(argv, __doc__, parser)
    enroll, tests = getattr(args, "enroll", None), getattr(args, "test", None)
    if bool(enroll) != bool(tests):
        raise UserError("pair mode needs both --enroll AUDIO [AUDIO ...] and --test AUDIO [AUDIO ...]")
    defaults = build_config(overrides)
    ckpt_path = find_checkpoint(defaults.checkpoint, defaults.exp_dir)
    trained = load_trained(ckpt_path)
    cfg = build_config(overrides, base={**trained.cfg.__dict__, "checkpoint": str(ckpt_path)})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    embedder = make_embedder(cfg, trained, ckpt_path)
    log.info("checkpoint %s (%s), device %s, precision %s; embedding: %s", ckpt_path, cfg.model, embedder.device,
             embedder.precision, embedder.extraction.describe())
    if enroll:
        return verify_pairs(cfg, ckpt_path, embedder, enroll, tests)
    save = getattr(args, "save_embeddings", None)
    save_to = None if save is None else Path(save) if save else run_dir(ckpt_path) / "eval"
    return evaluate(cfg, ckpt_path, embedder, save_to)


if __name__ == "__main__":
    run_main(main)
