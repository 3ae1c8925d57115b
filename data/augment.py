"""Waveform-domain augmentation of training crops: MUSAN noise, music and babble, and room reverberation.

The recipe of the VoxCeleb trainers (voxceleb_trainer's AugmentWAV, wespeaker, Kaldi's v2 recipe): with
probability `prob` a crop gets one augmentation, its kind drawn uniformly among those available:
  noise   one MUSAN noise/ file,              SNR drawn from noise_snr  (default 0-15 dB)
  music   one MUSAN music/ file,              SNR drawn from music_snr  (default 5-15 dB)
  babble  3-7 MUSAN speech/ files summed,     SNR drawn from babble_snr (default 13-20 dB)
  reverb  convolution with a room impulse response (RIR) from rir_dir
SNR = 10 log10(P_crop / P_noise) with P the mean square over the crop; a noise segment is a random crop of
a random file (wrap-padded when short), of which only those samples are read (data.audio.load_audio).

Deviations, on purpose:
  - babble: each talker is scaled to unit power, the sum to the drawn SNR; Kaldi and voxceleb_trainer draw one
    SNR per talker, which makes the SNR of the sum lower than the range says. Here the range is the mix's.
  - reverb: the RIR (unit energy, as in the recipes) is aligned on its direct-path peak, so the speech is not
    delayed by the source-microphone distance (voxceleb_trainer crops the convolution from sample 0).
Speed perturbation changes the class of a crop, so it lives with the labels: data.crops.speed_perturb.

rir_dir takes every audio file below it as an impulse response: point it at RIRS_NOISES/simulated_rirs (or
real_rirs_isotropic_noises' RIR files), not at RIRS_NOISES itself, whose pointsource_noises are not RIRs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.audio import audio_info, load_audio
from data.corpus import walk_audio
from data.crops import crop_bounds, wrap_pad
from utils import UserError

log = logging.getLogger("voiceprint")

KINDS = ("noise", "music", "babble", "reverb")
MUSAN_FOLDERS = {"noise": "noise", "music": "music", "babble": "speech"}


class Augmenter:
    """`augmenter(crop, rng)`: the crop (float32, same length) with at most one augmentation, a pure function
    of (crop, rng). A folder left out (None or "") disables its kinds; with neither it is a no-op. File lists
    and noise-file lengths are read once, here."""

    def __init__(self, musan_dir: str | Path | None, rir_dir: str | Path | None, sample_rate: int, prob: float,
                 noise_snr: Sequence[float] = (0.0, 15.0), music_snr: Sequence[float] = (5.0, 15.0),
                 babble_snr: Sequence[float] = (13.0, 20.0), babble_speakers: Sequence[int] = (3, 7)):
        if not 0.0 <= prob <= 1.0:
            raise UserError(f"aug_prob: must be in [0, 1], got {prob}")
        self.snr = {"noise": _check_range("noise_snr", noise_snr), "music": _check_range("music_snr", music_snr),
                    "babble": _check_range("babble_snr", babble_snr)}
        low, high = _check_range("babble_speakers", babble_speakers)
        if low < 1:
            raise UserError(f"babble_speakers: needs at least 1 speaker, got {list(babble_speakers)}")
        self.babble_speakers = (int(low), int(high))
        self.sample_rate, self.prob = sample_rate, prob
        self.files: dict[str, list[str]] = {}  # kind -> files, sorted
        self.lengths: dict[str, list[int]] = {}  # kind -> file lengths in samples (additive kinds)
        if musan_dir:
            self._add_musan(Path(musan_dir))
        if rir_dir:
            self.files["reverb"] = _audio_files(Path(rir_dir), "rirs", "room impulse responses")
        self.kinds = tuple(k for k in KINDS if k in self.files)
        log.info("augmentation: %s", ", ".join(f"{k} ({len(self.files[k])} files)" for k in self.kinds) or "none")

    def _add_musan(self, root: Path) -> None:
        if not root.is_dir():
            raise UserError(f"{root}: musan: no such folder")
        for kind, folder in MUSAN_FOLDERS.items():
            if (root / folder).is_dir():
                files = [str(root / folder / f) for f in walk_audio(root / folder).files]
                if files:
                    self.files[kind] = files
                    self.lengths[kind] = [audio_info(f, self.sample_rate) for f in files]
        if not self.lengths:
            raise UserError(f"{root}: musan: no audio files under noise/, music/ or speech/")

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if not self.kinds or rng.random() >= self.prob:
            return wave
        return self.apply(self.kinds[int(rng.integers(len(self.kinds)))], wave, rng)

    def apply(self, kind: str, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One augmentation of the given kind (one of `self.kinds`)."""
        if kind not in self.kinds:
            raise ValueError(f"augmentation '{kind}' is not available; available: {', '.join(self.kinds)}")
        wave = np.asarray(wave, dtype=np.float32)
        if kind == "reverb":
            path = self.files["reverb"][int(rng.integers(len(self.files["reverb"])))]
            return reverberate(wave, load_audio(path, self.sample_rate), path)
        count = int(rng.integers(self.babble_speakers[0], self.babble_speakers[1] + 1)) if kind == "babble" else 1
        chosen = rng.choice(len(self.files[kind]), size=count, replace=count > len(self.files[kind]))
        noise = np.zeros(len(wave), dtype=np.float64)
        for i in chosen:
            segment = self._segment(kind, int(i), len(wave), rng)
            noise += segment / np.sqrt(np.mean(segment**2) + 1e-20) if kind == "babble" else segment
        return add_at_snr(wave, noise, float(rng.uniform(*self.snr[kind])))

    def _segment(self, kind: str, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A random crop of one noise file: only its samples are read; a short file is wrap-padded."""
        path, length = self.files[kind][index], self.lengths[kind][index]
        start, stop = crop_bounds(length, num_samples, rng)
        return wrap_pad(load_audio(path, self.sample_rate, start, stop), num_samples).astype(np.float64)


def build_augmenter(musan_dir: str | Path | None, rir_dir: str | Path | None, sample_rate: int, prob: float,
                    noise_snr: Sequence[float] = (0.0, 15.0), music_snr: Sequence[float] = (5.0, 15.0),
                    babble_snr: Sequence[float] = (13.0, 20.0),
                    babble_speakers: Sequence[int] = (3, 7)) -> Augmenter | None:
    """An Augmenter, or None when there is nothing to do (no folder given, or prob 0)."""
    if not (musan_dir or rir_dir) or prob == 0.0:
        return None
    return Augmenter(musan_dir, rir_dir, sample_rate, prob, noise_snr, music_snr, babble_snr, babble_speakers)


def add_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave + g * noise with g such that 10 log10(mean(wave^2) / mean((g * noise)^2)) = snr_db."""
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if noise_power == 0.0:  # a silent noise segment adds nothing at any gain
        return wave
    wave_power = float(np.mean(np.square(wave, dtype=np.float64)))
    gain = np.sqrt(wave_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + gain * noise).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray, name: str = "impulse response") -> np.ndarray:
    """`wave` convolved with `rir` scaled to unit energy (so the level stays comparable), aligned on the
    RIR's direct path (its largest tap) so the speech is not delayed, cut to the length of `wave`."""
    energy = float(np.sum(np.square(rir, dtype=np.float64)))
    if energy == 0.0:
        raise UserError(f"{name}: silent impulse response (all samples zero)")
    from scipy.signal import fftconvolve  # here: importing scipy.signal costs every script 0.7 s

    direct = int(np.argmax(np.abs(rir)))
    out = fftconvolve(wave.astype(np.float32), (rir / np.sqrt(energy)).astype(np.float32))  # float32: 1.5x faster
    return out[direct:direct + len(wave)].astype(np.float32)


def _audio_files(root: Path, flag: str, what: str) -> list[str]:
    if not root.is_dir():
        raise UserError(f"{root}: {flag}: no such folder")
    files = [str(root / f) for f in walk_audio(root).files]
    if not files:
        raise UserError(f"{root}: {flag}: no {what} (.wav, .flac or .npy files at any depth)")
    return files


def _check_range(name: str, values: Sequence[float]) -> tuple[float, float]:
    if len(values) != 2 or not values[0] <= values[1]:
        raise UserError(f"{name}: needs two values LOW <= HIGH, got {list(values)}")
    return values[0], values[1]
