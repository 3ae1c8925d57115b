"""Training crops: random fixed-length crops, speed perturbation, and the `TrainDataset` that combines them.

Training randomness is an argument: the sampler (data/samplers.py) draws an integer seed per item from (seed,
epoch), and the item's crop (its speed, its augmentation) is a pure function of that seed, so an epoch is
reproduced exactly whatever the number of workers, and a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import torch

from data.audio import audio_info, load_audio
from data.corpus import Utterance


def crop_bounds(length: int, num_samples: int, rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly random window of `num_samples` inside `length` samples; the whole file if shorter."""
    if length <= num_samples:
        return 0, length
    start = int(rng.integers(0, length - num_samples + 1))
    return start, start + num_samples


def wrap_pad(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat a short waveform until it is `num_samples` long (wrap padding, no silence inserted)."""
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)), mode="wrap")


def random_crop(path: str, num_samples: int, sample_rate: int, rng: np.random.Generator,
                length: int | None = None) -> np.ndarray:
    """Exactly `num_samples` samples of a file, read from a random offset; short files are wrap-padded."""
    length = audio_info(path, sample_rate) if length is None else length
    start, stop = crop_bounds(length, num_samples, rng)
    return wrap_pad(load_audio(path, sample_rate, start, stop, length), num_samples)  # length: a stale index errs


SPEEDS = (1.0, 0.9, 1.1)  # speed perturbation factors; class of (speaker i, speed j) = i * len(SPEEDS) + j


def speed_speakers(speakers: Sequence[str]) -> list[str]:
    """Class names under speed perturbation, in label order: [s, s_sp0.9, s_sp1.1] for each speaker s
    (a sped-up or slowed-down voice is treated as another speaker, as in the wespeaker VoxCeleb recipes)."""
    return [s if f == 1.0 else f"{s}_sp{f}" for s in speakers for f in SPEEDS]


def _speed_ratio(factor: float) -> tuple[int, int]:
    """(up, down) of the resampling that plays `factor` times faster: 1.1 -> (10, 11), 0.9 -> (10, 9)."""
    ratio = Fraction(factor).limit_denominator(100)
    return ratio.denominator, ratio.numerator


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `wave` `factor` times faster (tempo and pitch, like sox `speed`): ceil(len * up / down) samples."""
    if factor == 1.0:
        return wave
    from scipy.signal import resample_poly  # here: importing scipy.signal costs every script 0.7 s

    up, down = _speed_ratio(factor)
    return resample_poly(wave, up, down).astype(np.float32)


def speed_crop(path: str, num_samples: int, sample_rate: int, factor: float, rng: np.random.Generator,
               length: int | None = None) -> np.ndarray:
    """A random crop read just long enough that, sped up by `factor`, it is exactly `num_samples` long."""
    up, down = _speed_ratio(factor)
    needed = -(-num_samples * down // up)  # ceil: ceil(needed * up / down) >= num_samples
    return speed_perturb(random_crop(path, needed, sample_rate, rng, length), factor)[:num_samples]


Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (crop, rng) -> crop of the same length


class TrainDataset(torch.utils.data.Dataset):
    """Random fixed-length crops. Indexed by (item, seed) pairs from `EpochSampler` or `BalancedSampler`;
    returns (waveform float32 (num_samples,), class index).

    Per item, from its own seed: the speed (when `speed_perturb`; the class index is then
    speaker * len(SPEEDS) + speed index, see `speed_speakers`), the crop, then `augment(crop, rng)`.
    Lengths known from `load_index` (`Utterance.num_samples`) spare a header read per item.
    """

    def __init__(self, utts: Sequence[Utterance], speakers: Sequence[str], num_samples: int, sample_rate: int,
                 augment: Augment | None = None, speed_perturb: bool = False):
        index_of = {s: i for i, s in enumerate(speakers)}
        self.paths = [u.path for u in utts]
        self.lengths = [u.num_samples for u in utts]
        self.labels = [index_of[u.speaker] for u in utts]
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.augment = augment
        self.speed_perturb = speed_perturb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        rng = np.random.default_rng(seed)
        path, length, label = self.paths[index], self.lengths[index] or None, self.labels[index]
        if self.speed_perturb:
            speed = int(rng.integers(len(SPEEDS)))
            wave = speed_crop(path, self.num_samples, self.sample_rate, SPEEDS[speed], rng, length)
            label = label * len(SPEEDS) + speed
        else:
            wave = random_crop(path, self.num_samples, self.sample_rate, rng, length)
        if self.augment is not None:
            wave = self.augment(wave, rng)
        return torch.from_numpy(wave), label
