"""Convert a corpus to .npy int16 raw waveforms, the fastest input for random training crops.

    python -m data.prepare SRC DST [--sample-rate 16000] [--workers N] [--skip-bad]

SRC is either corpus layout (data/corpus.py) holding .wav/.flac/.npy files. DST mirrors it:
  - VoxCeleb-style: DST/<speaker>/.../<name>.npy for SRC/<speaker>/.../<name>.<ext>;
  - Kaldi-style: DST/<utt>.npy, with DST/wav.scp (`<utt> <utt>.npy`) and DST/utt2spk.
Audio is read with data.audio.load_audio, the reader training uses (mono, resampled to --sample-rate), and
stored as int16: int16 sources are copied exactly; others are rounded to 16 bits. An .npy file has no sample
rate of its own, so DST/prepare.json records it and a later run at another rate is refused.

A crop of an .npy file reads only its samples (a memory map), where a .wav crop pays for opening the file
with libsndfile and a .flac crop for decoding (see bench/bench_data.py for measured numbers).

Resumable: files already in DST are skipped; each file is written to a temporary name and renamed, so a
killed run leaves no partial .npy behind (only a `.<name>.*.tmp`, removed by the next run). An unreadable input is a
one-line error naming it; with --skip-bad it is logged, left out (and out of the Kaldi tables), and listed in
DST/bad_files.txt.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import Config
from data.audio import AudioError, load_audio
from data.corpus import Utterance, scan_corpus
from utils import UserError, atomic_write_bytes, remove_stale_temps, run_main

log = logging.getLogger("voiceprint")


@dataclass(frozen=True)
class PrepareResult:
    converted: int  # files written by this run
    existing: int  # files already in DST, left alone
    bad: list[str]  # "<file>: <reason>" of the inputs skipped (skip_bad)


def prepare_corpus(src: str | Path, dst: str | Path, sample_rate: int, workers: int = 1,
                   skip_bad: bool = False) -> PrepareResult:
    """Convert the corpus at `src` into .npy int16 files under `dst` (see the module docstring)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise UserError(f"{dst}: the destination must lie outside the source corpus {src}")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: exists and is not a folder; the destination is a folder (created if missing)")
    remove_stale_temps(dst)  # of an earlier, killed run
    kaldi = (src / "wav.scp").is_file()
    if kaldi and (src / "segments").is_file():
        raise UserError(f"{src / 'segments'}: Kaldi segments are not supported (training reads whole files); "
                        f"cut the segments into files first")
    utts = scan_corpus(src)
    names = [_target_name(u, kaldi, src) for u in utts]
    targets = [dst / name for name in names]
    _check_unique(utts, targets)
    _stamp_sample_rate(dst, src, sample_rate)
    todo = [(u.path, t) for u, t in zip(utts, targets) if not t.is_file()]
    log.info("%s -> %s: %d files, %d already converted", src, dst, len(utts), len(utts) - len(todo))
    bad = _convert_all(todo, sample_rate, workers, skip_bad)
    if kaldi:
        failed = {path for path, _ in bad}
        kept = [(u, name) for u, name in zip(utts, names) if u.path not in failed]
        atomic_write_bytes(dst / "wav.scp", "".join(f"{u.key} {name}\n" for u, name in kept).encode())
        atomic_write_bytes(dst / "utt2spk", "".join(f"{u.key} {u.speaker}\n" for u, _ in kept).encode())
    messages = [message for _, message in bad]
    if messages:
        atomic_write_bytes(dst / "bad_files.txt", "".join(m + "\n" for m in messages).encode())
        log.warning("%d unreadable files skipped, listed in %s", len(messages), dst / "bad_files.txt")
    return PrepareResult(len(todo) - len(bad), len(utts) - len(todo), messages)


def _target_name(utt: Utterance, kaldi: bool, src: Path) -> str:
    if not kaldi:  # the key is the path relative to the root
        return os.path.splitext(utt.key)[0] + ".npy"
    parts = utt.key.split("/")  # ids like "id10001/1zcIwhmdeo4/00001.wav" (wespeaker) become sub-folders
    if "" in parts or "." in parts or ".." in parts:
        raise UserError(f"{src / 'wav.scp'}: utterance id '{utt.key}' cannot be a file name under the destination")
    return utt.key + ".npy"


def _check_unique(utts: Sequence[Utterance], targets: Sequence[Path]) -> None:
    first: dict[Path, str] = {}
    for u, t in zip(utts, targets):
        if t in first:
            raise UserError(f"{u.path}: would be converted to {t}, as {first[t]} is")
        first[t] = u.path


def _stamp_sample_rate(dst: Path, src: Path, sample_rate: int) -> None:
    stamp = dst / "prepare.json"
    if stamp.is_file():
        try:
            earlier = json.loads(stamp.read_text()).get("sample_rate")
        except (ValueError, AttributeError):
            raise UserError(f"{stamp}: not a data.prepare record; remove it to continue") from None
        if earlier != sample_rate:
            raise UserError(f"{dst}: prepared at {earlier} Hz, not {sample_rate} Hz; use another destination "
                            f"or --sample-rate {earlier}")
        return
    atomic_write_bytes(stamp, (json.dumps({"sample_rate": sample_rate, "source": str(src.resolve())}) + "\n").encode())


def _convert_all(todo: Sequence[tuple[str, Path]], sample_rate: int, workers: int,
                 skip_bad: bool) -> list[tuple[str, str]]:
    """Convert every (source, target); returns the (source, message) of those skipped as unreadable."""
    args = [(source, target, sample_rate, skip_bad) for source, target in todo]
    if workers <= 1 or len(args) <= 1:
        return _collect(todo, map(_convert_one, args))
    pool = ProcessPoolExecutor(workers)
    try:
        return _collect(todo, pool.map(_convert_one, args, chunksize=16))
    finally:
        pool.shutdown(cancel_futures=True)  # on an error: stop now, not after the rest of the corpus


def _collect(todo: Sequence[tuple[str, Path]], messages: Iterator[str]) -> list[tuple[str, str]]:
    bad = []
    last_log = time.monotonic()
    for done, ((source, _), message) in enumerate(zip(todo, messages), 1):
        if message:
            log.warning("skipped %s", message)
            bad.append((source, message))
        if time.monotonic() - last_log > 30:
            log.info("converted %d / %d", done, len(todo))
            last_log = time.monotonic()
    return bad


def _convert_one(args: tuple[str, Path, int, bool]) -> str:
    """Convert one file; '' when done, the error when unreadable and skipped."""
    source, target, sample_rate, skip_bad = args
    try:
        wave = load_audio(source, sample_rate)
    except AudioError as err:
        if skip_bad:
            return str(err)
        raise
    buffer = io.BytesIO()
    np.save(buffer, to_int16(wave))
    atomic_write_bytes(target, buffer.getvalue())
    return ""


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (x 32768, rounded, clipped): exact for audio that was int16."""
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def add_conversion_flags(parser: argparse.ArgumentParser) -> None:
    """--sample-rate, --workers and --skip-bad, shared with data/recipes.py; `check_conversion_flags` after
    parsing."""
    parser.add_argument("--sample-rate", type=int, default=Config.sample_rate,
                        help="Hz; must match training's --sample-rate (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="conversion processes (default: %(default)s, the CPU count)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="log and skip unreadable files (listed in bad_files.txt) instead of stopping")


def check_conversion_flags(args: argparse.Namespace) -> None:
    if args.sample_rate <= 0 or args.workers <= 0:
        raise UserError("--sample-rate and --workers must be > 0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("src", help="corpus folder: <speaker>/.../<file>.wav|.flac|.npy, or wav.scp + utt2spk")
    parser.add_argument("dst", help="output folder (created; files already there are kept)")
    add_conversion_flags(parser)
    args = parser.parse_args(argv)
    check_conversion_flags(args)
    result = prepare_corpus(args.src, args.dst, args.sample_rate, args.workers, args.skip_bad)
    log.info("%s: %d converted, %d already there, %d skipped", args.dst, result.converted, result.existing,
             len(result.bad))


if __name__ == "__main__":
    run_main(main)
