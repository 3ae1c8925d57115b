"""One configuration for every script: the glossary of the project.

Every field of `Config` is a command-line flag (`num_frames` -> `--num-frames`) of the scripts that use it:
SCOPES says which. A flag (or a --config key) that a script does not use is a one-line `ConfigError` naming
the script, never silently ignored. A YAML file given with `--config FILE.yaml` holds only the keys that differ
from the defaults. Precedence: defaults < file < flags. An unknown key or a bad value is a one-line
`ConfigError` naming the closest valid key. The resolved config is saved in every experiment folder and inside
every checkpoint.

What defines a trained model and its features (MODEL_KEYS) comes from its checkpoint: inference.py,
train_sort.py and a resumed train.py reject a different value for one of them (`check_model_keys`).

The defaults are the recipe the project descends from (ECAPA-TDNN, Adam, lr decayed by 0.97 per epoch, batch 64,
SpecAugment, AAM-softmax s=30 m=0.2) sized so that a bare `python train.py` on the generated demo corpus finishes
in minutes on a 2-core CPU, with one change measured on two corpora: peak lr 0.001 instead of the recipe's 0.0005
(README, "Recipe choices on two corpora"; `--config recipes/descent.yaml` is the recipe as it was). For
VoxCeleb-sized data raise `epochs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from utils import UserError, read_text


class ConfigError(UserError):
    """A config key or value the scripts cannot use."""


@dataclass
class Config:
    # --- experiment -------------------------------------------------------------------------------------
    exp_dir: str = "exp"  # root of all experiment folders
    name: str = ""  # experiment folder under exp_dir; "" = <model>-<date>-<time>
    seed: int = 0  # seeds data order, crops, label noise, init, dither and SpecAugment
    device: str = "auto"  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 on CUDA only, with a grad scaler)
    threads: int = 0  # torch intra-op CPU threads; 0 = torch's default (all cores)
    compile: str = "auto"  # auto | on | off: torch.compile (inductor) of the model's forward. auto compiles a
    # training run whose batches x eager step x the saved share exceed the compile (embedding.COMPILE_COST): on
    # the 2-core CPU 100 s for 15 % saved, on an H200 35 s for 10 % (neither for the 6-epoch demo, both for
    # VoxCeleb); and extraction from ~120 h (CPU) / ~45 h (CUDA) of audio (embedding.EXTRACT_COMPILE).
    # Checkpoints are the same either way
    resume: bool = False  # continue the newest run (or the run named by --name) from its latest checkpoint
    tensorboard: bool = False  # also write each epoch's scalars to <run>/tensorboard/ (pip install tensorboard);
    # <run>/curves.png is drawn either way (curves.py)
    keep_checkpoints: int = 3  # epoch checkpoints kept besides best.pt (and the newest mid-epoch one until its
    # epoch ends); 0 = keep all, mid-epoch ones too
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps within an epoch (resumable); 0 = off
    dist_timeout_min: float = 30.0  # torchrun: minutes a rank waits in a collective for the others (rank 0's
    # corpus scan, checkpoint writes) before the job fails

    # --- data -------------------------------------------------------------------------------------------
    # A data path is a VoxCeleb-style folder (<speaker>/.../<utt>.wav|.flac|.npy) or a Kaldi-style folder
    # holding wav.scp and utt2spk. Trial paths are relative to the matching data folder.
    demo_corpus: str = "corpora/demo"  # generated on first use when a data path points inside it
    demo_generator: str = "formant"  # which generator makes demo_corpus on first use: formant = data/synth.py,
    # harmonic = data/synth_harmonic.py
    train_data: str = "corpora/demo/train/wav"
    val_data: str = "corpora/demo/val/wav"
    val_trials: str = "corpora/demo/val/trials.txt"  # "" = no per-epoch validation EER
    test_data: str = "corpora/demo/test/wav"
    test_trials: list[str] = field(default_factory=lambda: ["corpora/demo/test/trials.txt"])
    sample_rate: int = 16000  # Hz; files at a higher rate are resampled, at a lower one rejected
    num_frames: int = 200  # training crop, in 10 ms frames (200 = 2.015 s)
    utts_per_speaker: int = 0  # cap on training utterances per speaker, chosen by seed; 0 = all
    label_noise: float = 0.0  # fraction of training utterances moved to a random other speaker
    filter_share: float = 0.0  # in-training filtering: fraction of each speaker's utterances left out per epoch,
    # those of highest loss in the previous epochs (README "In-training filtering"); 0 = off
    filter_warmup: int = 2  # epochs trained on everything before filtering starts (epoch warmup + 1 is the first)
    filter_mode: str = "drop"  # drop (left out of the epoch) | downweight (trained with loss weight filter_weight)
    filter_weight: float = 0.1  # downweight: the left-out utterances' weight in the batch's mean loss
    num_workers: int = 2  # DataLoader worker processes; 0 = load in the main process

    # --- augmentation (waveform domain, training crops only; data/augment.py) ------------------------
    musan: str = ""  # MUSAN-layout folder (noise/, music/, speech/); "" = no additive noise
    rirs: str = ""  # folder of room impulse responses (.wav/.flac, any depth); "" = no reverberation
    aug_prob: float = 0.6  # probability that a crop gets one augmentation (noise, music, babble or reverb)
    noise_snr: list[float] = field(default_factory=lambda: [0.0, 15.0])  # dB range, MUSAN noise
    music_snr: list[float] = field(default_factory=lambda: [5.0, 15.0])  # dB range, MUSAN music
    babble_snr: list[float] = field(default_factory=lambda: [13.0, 20.0])  # dB range, MUSAN speech babble
    babble_speakers: list[int] = field(default_factory=lambda: [3, 7])  # speech files mixed into babble
    speed_perturb: bool = False  # speeds 0.9 / 1.0 / 1.1, each a speaker class of its own (x3 classes)
    sampler: str = "random"  # random (each utterance once per epoch) | balanced (speakers_per_batch x N)
    utts_per_speaker_in_batch: int = 2  # balanced sampler: utterances of each speaker in a batch

    # --- features (data/features.py owns their meaning) ------------------------------------------------
    n_mels: int = 80  # mel filterbank channels
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop
    window_type: str = "hamming"  # hamming | povey | hanning | rectangular
    dither: float = 1.0  # Gaussian dither in int16 sample units, training only (Kaldi's default amplitude)
    cmn: bool = True  # subtract each utterance's mean over time
    spec_augment: bool = True  # SpecAugment masks, training only
    freq_masks: int = 1  # frequency masks per utterance (the recipe the project descends from: 2)
    freq_mask_width: int = 8  # maximum width of one frequency mask, in mel bins
    time_masks: int = 1  # time masks per utterance (the recipe: 2)
    time_mask_width: int = 10  # maximum width of one time mask, in frames
    spec_augment_prob: float = 0.6  # probability that a training crop is masked at all (wespeaker's; the recipe: 1)

    # --- model and head ---------------------------------------------------------------------------------
    model: str = "ecapa_tdnn"  # a key of models.MODELS
    channels: int = 0  # ECAPA-TDNN C or ResNet base width; 0 = the architecture's standard (512 / 32)
    embed_dim: int = 0  # embedding size; 0 = the architecture's standard (192 ECAPA, 256 ResNet)
    stats_variance: str = "population"  # the statistics pooling's variance over T: population (/ T, floored)
    # or unbiased (/ (T - 1), + 1e-7 under the sqrt: wespeaker's; a model converted from it, models/wespeaker.py)
    loss: str = "aam"  # a key of loss.HEADS: softmax | am | aam | subcenter_aam
    margin: float = 0.2  # AM: additive cosine margin; AAM: additive angular margin, radians
    scale: float = 30.0  # logit scale s of the margin heads
    subcenters: int = 3  # sub-centres per speaker, subcenter_aam only
    easy_margin: bool = False  # AAM: apply the margin only where cos(theta) > 0
    margin_ramp: list[float] = field(default_factory=lambda: [0.0, 0.0])  # epochs [start, end] of the
    # linear margin ramp from 0 to `margin`; [0, 0] = the full margin from the first step

    # --- optimisation -----------------------------------------------------------------------------------
    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.001  # peak learning rate. The descended recipe's 0.0005 lost on both generated corpora over 3
    # seeds (ECAPA C=128, 6 epochs): test EER 9.03 -> 7.58 % on the harmonic one (paired verdict resolved), 4.57 ->
    # 4.29 % on the demo (not resolved); README "Recipe choices on two corpora"
    lr_decay: float = 0.97  # exponential decay of the lr per epoch
    warmup_epochs: float = 0.0  # linear lr warm-up from 0, in epochs (fractions allowed)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 2e-5  # L2 on all weights (Adam: coupled, as in the recipe)
    batch_size: int = 64  # utterances per batch (per process under DDP)
    accumulate: int = 1  # batches whose gradients are summed per optimizer step: the effective batch is
    # batch_size x accumulate x processes (the recipe's lr is for 64; train.py warns when it differs)
    epochs: int = 6  # training epochs: a budget (demo corpus: ~10 min on 2 CPU cores; 12 gave -0.35 / -0.95 EER
    # points on the demo / harmonic corpus at C=128, 3 seeds, not resolved: README; VoxCeleb recipes: 80-150)
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping

    # --- starting from a trained model, ending with an average (train.py) -----------------------------------
    init_from: str = ""  # checkpoint file or run folder (its best.pt) to start from: its encoder, and its head
    # when trained on the same speakers (else a fresh one); the model keys come from it; "" = random init
    average_last: int = 0  # after training: the weight average of the last N epoch checkpoints, written as
    # checkpoints/avg_last_N.pt and given the final test instead of best.pt; needs keep_checkpoints 0 or >= N

    # --- evaluation -------------------------------------------------------------------------------------
    # inference.py; the metrics are defined in utils.py, normalisation and calibration in scoring.py.
    checkpoint: str = ""  # inference: checkpoint file or experiment folder; "" = the newest experiment
    runtime: str = "torch"  # inference: torch (the checkpoint) | onnx (onnxruntime on the file export.py wrote,
    # float32; deploy.py)
    onnx_file: str = ""  # --runtime onnx: the exported file; "" = beside the checkpoint (<checkpoint stem>.onnx)
    eval_batch_size: int = 32  # files (crops, with eval_crops) per embedding batch at inference
    max_eval_frames: int = 0  # cap on frames per utterance when embedding (memory); 0 = full length
    eval_crops: int = 0  # K: embed the mean of K evenly spaced crops of each file; 0 = the full length
    eval_crop_frames: int = 300  # N: frames per crop when eval_crops > 0 (300 = 3.015 s)
    eval_bucket_crop: float = 0.0  # full length: fraction of a file's frames a batch may cut (centred) to batch
    # it with shorter files; 0 = batches of equal frame counts only, embeddings exactly those of one file alone
    subtract_mean: bool = False  # subtract the training-set mean embedding before cosine scoring
    score_norm: list[str] = field(default_factory=lambda: ["none"])  # none | snorm | asnorm, one result row
    # per entry (scoring.py); pair mode and --calibrate decisions use the first
    cohort_top_n: int = 300  # AS-norm: the N most similar cohort speakers (of each trial side) it averages over
    cohort_utts_per_speaker: int = 10  # training utterances per speaker in the cohort and the --subtract-mean
    # mean: min(this, the speaker's count), a seeded choice, embedded once (cached); 0 = all of them. 10: no
    # measurable loss against all on the demo, 1/18 of all's files at VoxCeleb2 scale (README; bench_cohort)
    bootstrap: int = 1000  # bootstrap rounds of the 95% confidence intervals of EER and minDCF; 0 = none
    bootstrap_unit: str = "speaker"  # speaker: resample speakers (trials share them: bench/bench_intervals.py
    # measured 93-95 % coverage of a nominal 95 %, against 50-62 % for trial) | trial: resample trials
    test_durations: list[float] = field(default_factory=list)  # seconds: extra rows with the test side cut
    # to its first d seconds (enrolment at full length); [] = none
    enroll_mode: str = "mean_embedding"  # an enrolment of several files (a CN-Celeb enroll.map entry, pair
    # mode's --enroll): mean_embedding = scored against their L2-normalised mean embedding; score_average = the
    # mean of their scores
    calibrate: str = ""  # development trial list: fit score -> LLR calibration, saved in <run>/eval/; "" = none
    calibrate_data: str = ""  # folder of the calibrate list's files; "" = val_data
    decision_p_target: float = 0.01  # target prior of the calibration's class weights and of pair-mode
    # decisions (C_miss = C_fa = 1)
    decision_threshold: str = "bayes"  # pair mode accepts when: bayes = calibrated LLR >= log((1 - p) / p);
    # min_dcf = score >= the development minDCF threshold at decision_p_target; eer = score >= the dev EER one

    # --- train_sort -------------------------------------------------------------------------------------
    source: str = ""  # train_sort: the experiment folder whose model ranks the training utterances
    keep: list[float] = field(default_factory=lambda: [5.0, 95.0])  # kept percentile range per speaker,
    # counted from the most typical utterance (0) to the least typical (100): 0 90 drops the least typical 10%
    sort_by: str = "centroid"  # centroid (leave-one-out mean embedding) | class_weight | loss | subcenter (the
    # dominant sub-centre of a --loss subcenter_aam run's class; Deng et al. 2020)
    min_keep: int = 2  # utterances always kept per speaker, whatever the range
    rounds: int = 1  # score-trim-retrain rounds at most: a round whose list and labels equal the previous one's stops
    action: str = "drop"  # the utterances outside the kept range: drop | relabel (those clearly nearer another
    # speaker's centre move to it, the rest stay) | auto (those move, the rest are dropped)
    relabel_margin: float = 0.1  # cosine units: cos(another speaker's centre) - cos(own centre) needed to relabel;
    # 0.1, not 0: an utterance about as near two centres is a coin toss (untuned; bench.bench_sort measures)
    relabel_from: str = "flagged"  # which utterances relabel and auto may move: flagged (those outside the kept
    # range) | all (any utterance clearly nearer another speaker's centre, inside the range too)
    drop_unsure: bool = False  # relabel and auto: drop the candidates at least as near another speaker's centre as
    # their own but not clearly nearer (0 <= cos(other) - cos(own) < relabel_margin) instead of keeping their label
    cross_folds: int = 0  # relabel and auto: 0 = off; K >= 2 = check each relabel with a model that never saw the
    # utterance: K models, each trained on K-1 of K folds of every speaker's utterances (the source's config, as
    # many steps as the source), and a relabel stands only where the source's model and the held-out one name the
    # same speaker past the margin; where only one does, or they differ, the utterance is dropped
    score_average: int = 0  # rank with the weight average of the source's last N epoch checkpoints (its
    # checkpoints/avg_last_N.pt, as --average-last writes it; needs that many kept) instead of its best.pt; each
    # later round averages the previous round's. 0 = best.pt (bench.bench_relabel: fewer wrong relabels with 3)
    oracle: str = ""  # "" = off | drop | relabel: ignore the scores; drop exactly the moved utterances of the
    # source's label_noise.txt, or give them back their true speaker (what a perfect detector would give)

    def __post_init__(self) -> None:
        _validate(self)


# --- which script uses which keys ----------------------------------------------------------------------

RUN_KEYS = ("exp_dir", "seed", "device", "precision", "threads", "compile", "dist_timeout_min")
MODEL_KEYS = ("model", "channels", "embed_dim", "stats_variance",  # the network's shape...
              "sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms", "window_type", "cmn")  # ...its features
EVAL_KEYS = ("test_data", "test_trials", "eval_batch_size", "max_eval_frames", "eval_crops", "eval_crop_frames",
             "eval_bucket_crop", "subtract_mean", "score_norm", "cohort_top_n", "cohort_utts_per_speaker",
             "bootstrap", "bootstrap_unit", "test_durations", "enroll_mode")
INFERENCE_ONLY = ("checkpoint", "calibrate", "calibrate_data", "val_data", "decision_p_target", "decision_threshold",
                  "runtime", "onnx_file")
SORT_KEYS = ("source", "keep", "sort_by", "min_keep", "rounds", "action", "relabel_margin", "relabel_from",
             "drop_unsure", "cross_folds", "score_average", "oracle")


def _train_keys() -> tuple[str, ...]:
    """train.py uses every key but the ones only inference and train_sort read."""
    exclude = (set(INFERENCE_ONLY) - {"val_data"}) | set(SORT_KEYS)
    return tuple(k for k in (f.name for f in dataclasses.fields(Config)) if k not in exclude)


SCOPES: dict[str, tuple[str, ...]] = {
    "train.py": _train_keys(),
    "inference.py": (*RUN_KEYS, *MODEL_KEYS, *EVAL_KEYS, *INFERENCE_ONLY),
    "train_sort.py": (*_train_keys(), *SORT_KEYS),  # --resume: finished rounds reused, an unfinished one resumed
}


def check_model_keys(overrides: dict[str, object], saved: Config, source: str | Path) -> None:
    """A model's defining keys come from its checkpoint: a different value given now is an error."""
    for key in MODEL_KEYS:
        if key in overrides and _convert(key, overrides[key]) != getattr(saved, key):
            raise ConfigError(f"{key}: {source} was trained with {getattr(saved, key)!r}, not "
                              f"{_convert(key, overrides[key])!r}; a trained model's features and shape come "
                              f"from its checkpoint (drop --{key.replace('_', '-')})")


# Values with a closed set of choices. Model and head names are checked against their registries.
CHOICES: dict[str, tuple[str, ...]] = {
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "window_type": ("hamming", "povey", "hanning", "rectangular"),
    "optimizer": ("adam", "sgd"),
    "sort_by": ("centroid", "class_weight", "loss", "subcenter"),
    "action": ("drop", "relabel", "auto"),
    "relabel_from": ("flagged", "all"),
    "oracle": ("", "drop", "relabel"),
    "sampler": ("random", "balanced"),
    "decision_threshold": ("bayes", "min_dcf", "eer"),
    "runtime": ("torch", "onnx"),
    "compile": ("auto", "on", "off"),
    "enroll_mode": ("mean_embedding", "score_average"),
    "stats_variance": ("population", "unbiased"),  # models.pooling.VARIANCES
    "bootstrap_unit": ("speaker", "trial"),
    "demo_generator": ("formant", "harmonic"),  # data.synth_harmonic.DEMO_GENERATORS
    "filter_mode": ("drop", "downweight"),
}
POSITIVE = ("sample_rate", "num_frames", "n_mels", "batch_size", "epochs", "lr", "scale", "subcenters",
            "eval_batch_size", "rounds", "frame_length_ms", "frame_shift_ms", "eval_crop_frames", "cohort_top_n",
            "accumulate", "dist_timeout_min")
NON_NEGATIVE = ("threads", "keep_checkpoints", "utts_per_speaker", "num_workers", "dither", "freq_masks",
                "freq_mask_width", "time_masks", "time_mask_width", "channels", "embed_dim", "warmup_epochs",
                "momentum", "weight_decay", "grad_clip", "max_eval_frames", "min_keep", "relabel_margin",
                "margin", "eval_crops", "bootstrap", "checkpoint_every", "average_last", "cohort_utts_per_speaker",
                "filter_warmup", "score_average", "cross_folds")


def _validate(cfg: Config) -> None:
    from loss import HEADS  # local imports: the registries import torch, config should load fast
    from models import MODELS

    for f in dataclasses.fields(cfg):  # nan and inf pass every comparison below or fail it with a worse message
        value = getattr(cfg, f.name)
        if any(isinstance(v, float) and not abs(v) < float("inf") for v in (value if isinstance(value, list)
                                                                             else [value])):
            raise ConfigError(f"{f.name}: must be a finite number, got {value}")
    for key, options in {**CHOICES, "model": tuple(MODELS), "loss": tuple(HEADS)}.items():
        if getattr(cfg, key) not in options:
            raise ConfigError(f"{key}: '{getattr(cfg, key)}' is not one of: {', '.join(options)}")
    for key in POSITIVE:
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{key}: must be > 0, got {getattr(cfg, key)}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.label_noise < 1.0:
        raise ConfigError(f"label_noise: must be in [0, 1), got {cfg.label_noise}")
    if cfg.cross_folds == 1:
        raise ConfigError("cross_folds: 0 (off) or the number of folds, at least 2; got 1")
    if not 0.0 <= cfg.filter_share < 1.0:
        raise ConfigError(f"filter_share: must be in [0, 1), got {cfg.filter_share}")
    if not 0.0 <= cfg.filter_weight <= 1.0:
        raise ConfigError(f"filter_weight: must be in [0, 1], got {cfg.filter_weight}")
    for key in ("aug_prob", "spec_augment_prob"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"{key}: a probability, must be in [0, 1], got {getattr(cfg, key)}")
    if not 0.0 < cfg.lr_decay <= 1.0:
        raise ConfigError(f"lr_decay: must be in (0, 1], got {cfg.lr_decay}")
    if len(cfg.margin_ramp) != 2 or not 0 <= cfg.margin_ramp[0] <= cfg.margin_ramp[1]:
        raise ConfigError(f"margin_ramp: needs two epochs 0 <= start <= end, got {cfg.margin_ramp}")
    if len(cfg.keep) != 2:
        raise ConfigError(f"keep: needs two percentiles LOW HIGH, got {cfg.keep}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device: '{cfg.device}' is not auto, cpu, cuda or cuda:N")
    if cfg.frame_shift_ms > cfg.frame_length_ms:
        raise ConfigError("frame_shift_ms: must not exceed frame_length_ms")
    _validate_evaluation(cfg)
    _validate_averaging(cfg)


def _validate_averaging(cfg: Config) -> None:
    if cfg.average_last > cfg.epochs:
        raise ConfigError(f"average_last: {cfg.average_last} epoch checkpoints to average, but only {cfg.epochs} "
                          f"epochs")
    if 0 < cfg.keep_checkpoints < cfg.average_last:
        raise ConfigError(f"average_last: {cfg.average_last} needs the last {cfg.average_last} epoch checkpoints; "
                          f"keep_checkpoints is {cfg.keep_checkpoints} (set it to {cfg.average_last}, or 0 = all)")


def _validate_evaluation(cfg: Config) -> None:
    from scoring import SCORE_NORMS

    if not 0.0 <= cfg.eval_bucket_crop < 1.0:
        raise ConfigError(f"eval_bucket_crop: must be in [0, 1), got {cfg.eval_bucket_crop}")
    if not cfg.score_norm or len(set(cfg.score_norm)) != len(cfg.score_norm):
        raise ConfigError(f"score_norm: needs one or more distinct entries, got {cfg.score_norm}")
    for name in cfg.score_norm:
        if name not in SCORE_NORMS:
            raise ConfigError(f"score_norm: '{name}' is not one of: {', '.join(SCORE_NORMS)}")
    if not 0.0 < cfg.decision_p_target < 1.0:
        raise ConfigError(f"decision_p_target: must be in (0, 1), got {cfg.decision_p_target}")
    if any(not d > 0 for d in cfg.test_durations):
        raise ConfigError(f"test_durations: seconds must be > 0, got {cfg.test_durations}")


# --- parsing -------------------------------------------------------------------------------------------

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: see {Path(__file__).name}"


def _convert(key: str, value: object) -> object:
    """Coerce a value from YAML or the command line to the field's type, or raise a ConfigError."""
    kind = _TYPES[key]
    try:
        if typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            values = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            if item in (int, float):  # numbers may come comma-separated as one flag value: 1,2,3,5
                values = [v for x in values for v in (x.replace(",", " ").split() if isinstance(x, str) else [x])]
            return [item(v) for v in values]
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{key}: cannot use {value!r} as {name}") from None


def load_yaml(path: str | Path) -> dict[str, object]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(overrides: dict[str, object], *, base: dict[str, object] | None = None) -> Config:
    """Defaults < base (a saved or file config) < overrides; every key checked and converted."""
    values: dict[str, object] = {}
    for source in (base or {}, overrides):
        for key, value in source.items():
            if key not in FIELDS:
                raise ConfigError(f"unknown config key '{key}'{_closest(key)}")
            values[key] = _convert(key, value)
    return Config(**values)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not argparse's usage dump
        raise ConfigError(message)


def make_parser(description: str, script: str | None = None) -> argparse.ArgumentParser:
    """Flags for the Config fields `script` uses (SCOPES; None = all of them), defaults suppressed so that only
    the given ones override."""
    parser = _Parser(description=description, allow_abbrev=False, argument_default=argparse.SUPPRESS,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_script=script)
    parser.add_argument("--config", help="YAML file with the keys that differ from the defaults")
    defaults = Config.__new__(Config)  # defaults without validation, for the help text only
    scope = set(SCOPES[script]) if script else set(FIELDS)
    for f in (f for f in dataclasses.fields(Config) if f.name in scope):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        setattr(defaults, f.name, default)
        flag = "--" + f.name.replace("_", "-")
        kind = _TYPES[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"(default: {default})")
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, nargs="*", metavar=f.name.upper(), help=f"(default: {default})")
        else:
            parser.add_argument(flag, metavar=f.name.upper(), help=f"(default: {default})")
    return parser


def _out_of_scope(key: str, script: str) -> str:
    users = [name for name, keys in SCOPES.items() if key in keys]
    return f"{script} does not use {key}" + (f" (a setting of {', '.join(users)})" if users else "")


def _unexpected(value: str, argv: list[str]) -> str:
    """The error for a stray value: after an on/off flag (`--cmn maybe`), it names the flag."""
    i = argv.index(value) if value in argv else -1
    flag = argv[i - 1] if i > 0 and argv[i - 1].startswith("--") else ""
    key = flag[2:].replace("-", "_").removeprefix("no_")
    if key in FIELDS and _TYPES[key] is bool:
        name = key.replace("_", "-")
        return f"{flag}: an on/off flag takes no value, got '{value}'; write --{name} or --no-{name}"
    return f"unexpected argument '{value}'"


def parse_args(argv: list[str] | None, description: str,
               parser: argparse.ArgumentParser | None = None) -> tuple[dict[str, object], argparse.Namespace]:
    """The config keys a command line sets (its --config file's keys, overridden by its flags), and the
    namespace for any script-only flags. Scripts that start from a saved config (resume, inference) apply
    these on top of it; others on top of the defaults (`parse_config`)."""
    parser = parser or make_parser(description)
    args, unknown = parser.parse_known_args(argv)
    script = getattr(args, "_script", None)
    if unknown:
        flags = [u for u in unknown if u.startswith("-")]
        if not flags:
            raise ConfigError(_unexpected(unknown[0], sys.argv[1:] if argv is None else argv))
        key = flags[0].lstrip("-").split("=")[0].replace("-", "_").removeprefix("no_")
        if key in FIELDS and script:
            raise ConfigError(f"{flags[0]}: {_out_of_scope(key, script)}")
        raise ConfigError(f"unknown flag '{flags[0]}'{_closest(key)}")
    overrides = load_yaml(args.config) if getattr(args, "config", None) else {}
    for key in overrides:
        if key not in FIELDS:
            raise ConfigError(f"{args.config}: unknown config key '{key}'{_closest(key)}")
        if script and key not in SCOPES[script]:
            raise ConfigError(f"{args.config}: {_out_of_scope(key, script)}")
    overrides.update({k: v for k, v in vars(args).items() if k in FIELDS})
    if "tensorboard" in overrides and _convert("tensorboard", overrides["tensorboard"]):
        from curves import check_tensorboard  # at the start, not after an epoch's work

        check_tensorboard()
    return overrides, args


def parse_config(argv: list[str] | None, description: str, script: str | None = None) -> Config:
    return build_config(parse_args(argv, description, make_parser(description, script))[0])


def to_dict(cfg: Config) -> dict[str, object]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    from utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
