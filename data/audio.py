"""Audio I/O: .wav / .flac through soundfile, .npy raw waveforms through numpy memory maps.

Every reader returns mono float32 in [-1, 1] at the requested sample rate. A .npy file holds one raw
waveform, int16 (scaled by 1/32768) or float, at the corpus sample rate (npy carries no rate of its own).
Reading a segment touches only that segment's samples: soundfile seeks, a memory map pages in the slice.
Every failure is a one-line UserError that names the file.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from utils import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".npy")


class AudioError(UserError):
    """A file that cannot be used as audio."""


def _open_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise AudioError(f"{path}: cannot read as a .npy waveform ({err})") from None
    if array.ndim == 2:  # (samples, channels)
        array = array[:, 0]
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise AudioError(f"{path}: expected a 1-D numeric waveform, got {array.dtype} {array.shape}")
    return array


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if np.issubdtype(samples.dtype, np.integer):
        return (samples / float(np.iinfo(samples.dtype).max + 1)).astype(np.float32)
    return np.asarray(samples, dtype=np.float32)


def _check_rate(path: Path, file_rate: int, sample_rate: int) -> None:
    if file_rate < sample_rate:
        raise AudioError(f"{path}: sample rate {file_rate} Hz is below the configured {sample_rate} Hz "
                         f"(upsampling adds no information; set --sample-rate {file_rate} for this corpus)")


def audio_info(path: str | Path, sample_rate: int) -> int:
    """Length of the file in samples at `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.suffix == ".npy":
        frames = len(_open_npy(path))
    else:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"{path}: cannot read audio ({err})") from None
        _check_rate(path, info.samplerate, sample_rate)
        frames = info.frames * sample_rate // info.samplerate
    if frames == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return frames


def load_audio(path: str | Path, sample_rate: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Samples [start, stop) of the file (positions at `sample_rate`) as mono float32, shape (N,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.suffix == ".npy":
        samples = _to_float(np.asarray(_open_npy(path)[start:stop]))
    else:
        samples = _read_soundfile(path, sample_rate, start, stop)
    if samples.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples in [{start}, {stop}))")
    return samples


def _read_soundfile(path: Path, sample_rate: int, start: int, stop: int | None) -> np.ndarray:
    try:
        with sf.SoundFile(str(path)) as f:
            file_rate = f.samplerate
            _check_rate(path, file_rate, sample_rate)
            # positions are given at sample_rate; map them to the file's own rate
            f.seek(start * file_rate // sample_rate)
            count = -1 if stop is None else (stop - start) * file_rate // sample_rate
            samples = f.read(count, dtype="float32", always_2d=True)[:, 0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot read audio ({err})") from None
    if file_rate != sample_rate and samples.size:
        g = gcd(file_rate, sample_rate)
        samples = resample_poly(samples, sample_rate // g, file_rate // g).astype(np.float32)
    return samples
