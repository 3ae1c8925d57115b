"""Embed the utterances of trial lists with a trained model, cosine-score the trials, report EER and minDCF.

    python inference.py                                   # newest experiment, its test trial list(s)
    python inference.py --checkpoint exp/NAME --test-data /data/vox1/wav --test-trials veri_test2.txt

The checkpoint describes itself (config, speaker list, weights): the model and front end are rebuilt from it
alone. Flags given on this command line override the saved config's evaluation settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from data.features import FbankOptions, FrontEnd, SpecAugment, num_samples_for_frames
from loss import build_head
from torch import nn

from config import Config, build_config, parse_args
from data.audio import load_audio
from data.dataset import Trial, read_trials, trial_paths, wrap_pad
from models import build_model
from utils import (
    UserError,
    atomic_write_text,
    autocast,
    configure_malloc,
    eer_from_points,
    load_checkpoint,
    min_dcf_from_points,
    operating_points,
    resolve_device,
    resolve_precision,
    run_main,
)

log = logging.getLogger("voiceprint")

MIN_EVAL_FRAMES = 50  # shorter files are wrap-padded to 0.5 s so every network sees a usable input
P_TARGETS = (0.01, 0.05)  # minDCF operating points reported


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


# --- embeddings and scores -----------------------------------------------------------------------------

@torch.no_grad()
def extract_embeddings(model: nn.Module, frontend: FrontEnd, paths: dict[str, str], *, sample_rate: int,
                       device: torch.device, precision: str, max_frames: int = 0) -> dict[str, np.ndarray]:
    """L2-normalised embedding of every file, at full length (or its first `max_frames` frames)."""
    model.eval()
    frontend.eval()
    opts = frontend.opts
    min_samples = num_samples_for_frames(MIN_EVAL_FRAMES, opts)
    max_samples = num_samples_for_frames(max_frames, opts) if max_frames else None
    embeddings = {}
    for key, path in paths.items():
        wave = load_audio(path, sample_rate, 0, max_samples)
        wave = wrap_pad(wave, min_samples) if len(wave) < min_samples else wave
        x = torch.from_numpy(wave).to(device)[None]  # (1, N)
        feats = frontend(x)  # (1, T, F)
        with autocast(device, precision):
            emb = model(feats)  # (1, D)
        embeddings[key] = F.normalize(emb.float(), dim=-1)[0].cpu().numpy()
    return embeddings


def cosine_scores(embeddings: dict[str, np.ndarray], trials: Sequence[Trial]) -> np.ndarray:
    enroll = np.stack([embeddings[t.enroll] for t in trials])
    test = np.stack([embeddings[t.test] for t in trials])
    return np.einsum("nd,nd->n", enroll, test)


@dataclass(frozen=True)
class TrialResult:
    trials: str
    num_trials: int
    eer: float  # fraction
    min_dcf: dict[float, float]  # p_target -> normalised minDCF
    scores: np.ndarray
    labels: np.ndarray


def evaluate_trials(model: nn.Module, frontend: FrontEnd, trials_path: str, data_root: str, *, sample_rate: int,
                    device: torch.device, precision: str, max_frames: int = 0,
                    cache: dict[str, np.ndarray] | None = None) -> TrialResult:
    trials = read_trials(trials_path)
    paths = trial_paths(trials, data_root, trials_path)
    cache = {} if cache is None else cache  # files shared by several trial lists are embedded once
    todo = {k: p for k, p in paths.items() if k not in cache}
    cache.update(extract_embeddings(model, frontend, todo, sample_rate=sample_rate, device=device,
                                    precision=precision, max_frames=max_frames))
    scores = cosine_scores(cache, trials)
    labels = np.array([t.label for t in trials])
    points = operating_points(scores, labels)
    return TrialResult(trials_path, len(trials), eer_from_points(points).eer,
                       {p: min_dcf_from_points(points, p).min_dcf for p in P_TARGETS}, scores, labels)


def write_scores(result: TrialResult, trials: Sequence[Trial], path: Path) -> None:
    lines = (f"{t.enroll} {t.test} {s:.6f} {t.label}\n" for t, s in zip(trials, result.scores))
    atomic_write_text(path, "".join(lines))


# --- script --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[TrialResult]:
    configure_malloc()
    overrides, _ = parse_args(argv, __doc__)
    defaults = build_config(overrides)
    ckpt_path = find_checkpoint(defaults.checkpoint, defaults.exp_dir)
    trained = load_trained(ckpt_path)
    cfg = build_config(overrides, base={**trained.cfg.__dict__, "checkpoint": str(ckpt_path)})
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, frontend = trained.model.to(device), build_frontend(cfg).to(device)
    log.info("checkpoint %s (%s), device %s, precision %s", ckpt_path, cfg.model, device, precision)
    out_dir = ckpt_path.parent.parent / "scores"
    results, cache = [], {}
    for trials_path in cfg.test_trials:
        result = evaluate_trials(model, frontend, trials_path, cfg.test_data, sample_rate=cfg.sample_rate,
                                 device=device, precision=precision, max_frames=cfg.max_eval_frames, cache=cache)
        write_scores(result, read_trials(trials_path), out_dir / f"{Path(trials_path).stem}.txt")
        dcf = "  ".join(f"minDCF(p={p}) {v:.4f}" for p, v in result.min_dcf.items())
        print(f"{trials_path}: {result.num_trials} trials  EER {100 * result.eer:.2f}%  {dcf}")
        results.append(result)
    log.info("scores written to %s", out_dir)
    return results


if __name__ == "__main__":
    run_main(main)
