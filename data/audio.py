"""Audio I/O: .wav / .flac through soundfile, .npy raw waveforms through numpy memory maps.

Every reader returns mono float32 in [-1, 1] at the requested sample rate. A .npy file holds one raw
waveform, int16 (scaled by 1/32768) or float, at the corpus sample rate (npy carries no rate of its own).
Reading a segment touches only that segment's samples: soundfile seeks, a memory map pages in the slice.
Every failure is a one-line UserError that names the file.
"""

from __future__ import annotations

import os
import re
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from utils import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".npy")


class AudioError(UserError):
    """A file that cannot be used as audio."""


# Fast path for plain .npy files (1-D, little-endian int16 or float32, C order: what data.prepare writes).
# np.load(mmap_mode="r") spends ~150 us of Python per call (header parse, memmap object): a 2 s crop through
# it took 221 us against 137 us for a .wav; two preads take 24 us (bench/bench_data.py, warm page cache).
# Anything else (other dtypes, 2-D, truncated files) goes through np.load and its error messages.
_PLAIN_NPY = re.compile(rb"\{'descr': '(<i2|<f4)', 'fortran_order': False, 'shape': \((\d+),\), \}\s*$")


def _plain_npy_header(fd: int) -> tuple[int, np.dtype, int] | None:
    """(data offset, dtype, length) of a plain .npy file whose size matches its header, else None."""
    head = os.pread(fd, 128, 0)  # np.save pads a version-1 header to 64 bytes: a 1-D one fits in 128
    if head[:8] != b"\x93NUMPY\x01\x00":
        return None
    offset = 10 + int.from_bytes(head[8:10], "little")
    match = _PLAIN_NPY.match(head[10:offset]) if offset <= len(head) else None
    if match is None:
        return None
    dtype, length = np.dtype(match[1].decode()), int(match[2])
    return (offset, dtype, length) if os.fstat(fd).st_size == offset + length * dtype.itemsize else None


def _plain_npy(path: Path, start: int, stop: int | None, header_only: bool) -> np.ndarray | int | None:
    """The length (header_only) or samples [start, stop) of a plain .npy file; None if it is not plain."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        header = _plain_npy_header(fd)
        if header is None:
            return None
        offset, dtype, length = header
        if header_only:
            return length
        stop = length if stop is None else min(stop, length)
        if not 0 <= start < stop:
            return None
        data = os.pread(fd, (stop - start) * dtype.itemsize, offset + start * dtype.itemsize)
    except OSError:
        return None
    finally:
        os.close(fd)
    samples = np.frombuffer(data, dtype)
    return samples.astype(np.float32) / 32768.0 if dtype.kind == "i" else samples.copy()


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
        frames = _plain_npy(path, 0, None, header_only=True)
        frames = len(_open_npy(path)) if frames is None else frames
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
        samples = _plain_npy(path, start, stop, header_only=False)
        samples = _to_float(np.asarray(_open_npy(path)[start:stop])) if samples is None else samples
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
