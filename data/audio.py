"""Audio I/O: .wav / .flac (and .mp3 / .ogg / .opus, which libsndfile >= 1.1 decodes) through soundfile, .npy
raw waveforms through numpy memory maps, .m4a (AAC, as VoxCeleb2 ships) through PyAV.

PyAV (`pip install av`) is optional: FFmpeg's decoders in its wheels, with no system FFmpeg to install and no
process to spawn per file; only .m4a needs it, and it is imported when the first .m4a is read (a one-line
error says how to install it when it is missing). AAC has no sample-exact seek, so an .m4a is decoded whole
for every read: convert such a corpus once (`python -m data.prepare SRC DST`, or `data.recipes voxceleb2`).

Every reader returns mono float32 in [-1, 1] at the requested sample rate. A .npy file holds one raw
waveform, shape (samples,) (or (samples, 1) / (1, samples)), at the corpus sample rate (npy carries no rate
of its own), of one of the types NPY_SCALES lists: int16 (full scale 32768), int32 (2^31) or float in
[-1, 1]. Anything else (several channels, int64, uint8, a text file named .npy) is an error naming the file,
never a guess. Reading a segment touches only that segment's samples: soundfile seeks, a memory map pages in
the slice. Every failure is a one-line UserError that names the file: missing, unreadable, empty, below the
sample rate, NaN or infinite samples, or (with `length`) another length than the corpus index recorded.
A whole-file read of digital silence logs a warning naming the file (a script shows it once: utils.ONCE).
"""

from __future__ import annotations

import logging
import os
import re
from math import gcd
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf

from utils import ONCE, UserError

log = logging.getLogger("voiceprint")

DECODED_EXTENSIONS = (".m4a",)  # read through PyAV (FFmpeg), decoded whole
AUDIO_EXTENSIONS = (".wav", ".flac", ".npy", ".mp3", ".ogg", ".opus", *DECODED_EXTENSIONS)
NPY_SCALES = {"int16": 2.0**15, "int32": 2.0**31, "float16": 1.0, "float32": 1.0, "float64": 1.0}  # full scale


class AudioError(UserError):
    """A file that cannot be used as audio."""


# Fast path for plain .npy files (1-D, little-endian int16 or float32, C order: what data.prepare writes).
# np.load(mmap_mode="r") spends ~150 us of Python per call (header parse, memmap object): a 2 s crop through
# it took 221 us against 137 us for a .wav; two preads take 24 us (bench/bench_data.py, warm page cache).
# Anything else (other dtypes, 2-D, truncated files) goes through np.load and its checks.
_PLAIN_NPY = re.compile(rb"\{'descr': '(<i2|<f4)', 'fortran_order': False, 'shape': \((\d+),\), \}\s*$")
_NPY_MAGIC = b"\x93NUMPY"


def _plain_npy_header(fd: int) -> tuple[int, np.dtype, int] | None:
    """(data offset, dtype, length) of a plain .npy file whose size matches its header, else None."""
    head = os.pread(fd, 128, 0)  # np.save pads a version-1 header to 64 bytes: a 1-D one fits in 128
    if head[:8] != _NPY_MAGIC + b"\x01\x00":
        return None
    offset = 10 + int.from_bytes(head[8:10], "little")
    match = _PLAIN_NPY.match(head[10:offset]) if offset <= len(head) else None
    if match is None:
        return None
    dtype, length = np.dtype(match[1].decode()), int(match[2])
    return (offset, dtype, length) if os.fstat(fd).st_size == offset + length * dtype.itemsize else None


def _plain_npy(path: Path, start: int, stop: int | None,
               header_only: bool) -> tuple[np.ndarray | None, int] | None:
    """(samples [start, stop) or None when header_only, the file's length) of a plain .npy file; None if it
    is not plain."""
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
            return None, length
        stop = length if stop is None else min(stop, length)
        if not 0 <= start < stop:
            return None
        data = os.pread(fd, (stop - start) * dtype.itemsize, offset + start * dtype.itemsize)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _to_float(np.frombuffer(data, dtype)), length


def _open_npy(path: Path) -> np.ndarray:
    """The file's waveform as a 1-D memory map of one of the NPY_SCALES types."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as err:
        raise AudioError(f"{path}: cannot read ({err.strerror})") from None
    if magic != _NPY_MAGIC:
        raise AudioError(f"{path}: not a .npy file (no NumPy header); save waveforms with numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise AudioError(f"{path}: cannot read as a .npy waveform ({err})") from None
    if array.ndim == 2 and 1 in array.shape:  # (samples, 1) or (1, samples): one channel either way
        array = array.reshape(-1)
    if array.ndim != 1:
        raise AudioError(f"{path}: a .npy waveform has shape (samples,), not {array.shape}; save one channel "
                         f"(e.g. x[0] of channels-first audio) or their mean")
    if array.dtype.name not in NPY_SCALES:
        raise AudioError(f"{path}: a .npy waveform is {', '.join(NPY_SCALES)} (int16 scaled by 1/32768, float "
                         f"in [-1, 1]), not {array.dtype.name}; convert it, e.g. x.astype(np.int16)")
    return array


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Samples of a NPY_SCALES type as float32 in [-1, 1]."""
    scale = NPY_SCALES[samples.dtype.name]
    return (samples.astype(np.float32) / np.float32(scale)) if scale != 1.0 else samples.astype(np.float32)


def _check_rate(path: Path, file_rate: int, sample_rate: int) -> None:
    if file_rate < sample_rate:
        raise AudioError(f"{path}: sample rate {file_rate} Hz is below the {sample_rate} Hz the model works at "
                         f"(upsampling adds no information); use audio of {sample_rate} Hz or more, or a model "
                         f"trained at {file_rate} Hz")


def audio_info(path: str | Path, sample_rate: int) -> int:
    """Length of the file in samples at `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.suffix == ".npy":
        plain = _plain_npy(path, 0, None, header_only=True)
        frames = len(_open_npy(path)) if plain is None else plain[1]
    elif path.suffix in DECODED_EXTENSIONS:
        samples, file_rate = decode(path)
        _check_rate(path, file_rate, sample_rate)
        frames = len(samples) * sample_rate // file_rate
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


def load_audio(path: str | Path, sample_rate: int, start: int = 0, stop: int | None = None,
               length: int | None = None) -> np.ndarray:
    """Samples [start, stop) of the file (positions at `sample_rate`) as mono float32, shape (N,). `length`:
    the file's length as the caller knows it (a corpus index's `num_samples`); a file of another length
    changed since, and is an error rather than a crop from the wrong place."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.suffix == ".npy":
        plain = _plain_npy(path, start, stop, header_only=False)
        if plain is None:
            array = _open_npy(path)
            plain = _to_float(np.asarray(array[start:stop])), len(array)
        samples, file_length = plain
    elif path.suffix in DECODED_EXTENSIONS:
        samples, file_length = _read_decoded(path, sample_rate, start, stop)
    else:
        samples, file_length = _read_soundfile(path, sample_rate, start, stop)
    if length is not None and file_length != length:
        raise AudioError(f"{path}: {file_length} samples, but the corpus index says {length}: the file changed "
                         f"after the index was cached; rebuild it (python -m data.corpus --rescan CORPUS)")
    if samples.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples in [{start}, {stop}))")
    check_samples(path, samples, start, whole=start == 0 and (stop is None or stop >= file_length))
    return samples


def check_samples(path: Path, samples: np.ndarray, start: int, whole: bool) -> None:
    """NaN or infinite samples are an error; a whole file of digital silence a warning (shown once: utils.ONCE)."""
    finite = np.isfinite(samples)
    if not finite.all():
        first = start + int(np.argmin(finite))
        raise AudioError(f"{path}: holds NaN or infinite samples (the first at sample {first})")
    if whole and not samples.any():
        log.warning("%s: every sample is zero (digital silence); its features and embedding carry no speaker",
                    path, extra=ONCE)


def _read_soundfile(path: Path, sample_rate: int, start: int, stop: int | None) -> tuple[np.ndarray, int]:
    """(samples [start, stop) at sample_rate, the file's length at sample_rate)."""
    try:
        with sf.SoundFile(str(path)) as f:
            file_rate = f.samplerate
            _check_rate(path, file_rate, sample_rate)
            file_length = f.frames * sample_rate // file_rate
            # positions are given at sample_rate; map them to the file's own rate
            f.seek(start * file_rate // sample_rate)
            count = -1 if stop is None else (stop - start) * file_rate // sample_rate
            samples = f.read(count, dtype="float32", always_2d=True)[:, 0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot read audio ({err})") from None
    if file_rate != sample_rate and samples.size:
        from scipy.signal import resample_poly  # here: importing scipy.signal costs every script 0.7 s

        g = gcd(file_rate, sample_rate)
        samples = resample_poly(samples, sample_rate // g, file_rate // g).astype(np.float32)
    return samples, file_length


def require_av(path: Path) -> ModuleType:
    """PyAV, or a one-line error naming the file that needs it and how to install it."""
    try:
        import av  # optional: only .m4a needs it (module docstring)
    except ImportError:
        raise AudioError(f"{path}: reading {path.suffix} needs PyAV, FFmpeg's decoders for Python: pip install av "
                         f"(or convert the file to .wav first)") from None
    return av


def decode(path: Path) -> tuple[np.ndarray, int]:
    """(first channel as float32 (N,), sample rate) of a whole file PyAV decodes."""
    av = require_av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")  # planar float, the file's own layout and rate
            chunks = [f.to_ndarray()[0] for frame in container.decode(stream) for f in to_float.resample(frame)]
            chunks += [f.to_ndarray()[0] for f in to_float.resample(None)]
            rate = stream.codec_context.sample_rate
    except av.error.FFmpegError as err:
        raise AudioError(f"{path}: cannot decode ({err})") from None
    return (np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)), rate


def _read_decoded(path: Path, sample_rate: int, start: int, stop: int | None) -> tuple[np.ndarray, int]:
    """(samples [start, stop) at sample_rate, the file's length at sample_rate), the file decoded whole."""
    samples, file_rate = decode(path)
    _check_rate(path, file_rate, sample_rate)
    file_length = len(samples) * sample_rate // file_rate
    if file_rate != sample_rate and samples.size:
        from scipy.signal import resample_poly  # here: importing scipy.signal costs every script 0.7 s

        g = gcd(file_rate, sample_rate)
        samples = resample_poly(samples, sample_rate // g, file_rate // g).astype(np.float32)
    return samples[start:stop], file_length


SHORT_SECONDS = 0.1  # files shorter than this are warned about: ten 10 ms frames, less than a syllable


def warn_short(lengths: dict[str, int], sample_rate: int, what: str) -> None:
    """One warning naming the files (of `what`: a corpus, an embedding pass) shorter than SHORT_SECONDS (a
    script shows the same one once: utils.ONCE): they are wrap-padded to a crop or to the shortest embedded
    input, i.e. a few milliseconds repeated, and say little about a speaker."""
    short = sorted(p for p, n in lengths.items() if n < SHORT_SECONDS * sample_rate)
    if short:
        log.warning("%s: %d file(s) shorter than %g s, wrap-padded to a usable length: %s%s", what, len(short),
                    SHORT_SECONDS, ", ".join(short[:3]), " ..." if len(short) > 3 else "", extra=ONCE)
