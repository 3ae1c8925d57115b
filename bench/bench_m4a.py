"""VoxCeleb2-style .m4a conversion benchmark: files per second of `data.prepare` (PyAV decode, int16 .npy) on
1 and 2 worker processes.

    python -m bench.bench_m4a                    # 64 files of 8 s (VoxCeleb2's mean utterance is ~7.8 s)
    python -m bench.bench_m4a --files 200 --seconds 8 --workers 1 2 4

The files are 16 kHz mono AAC written with PyAV (speech-band noise: AAC decoding time does not depend on the
content much) in a temporary VoxCeleb2 layout, aac/<speaker>/<video>/<utt>.m4a, deleted at the end. Each
worker count converts into a fresh folder (no file skipped as already converted). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from data.prepare import prepare_corpus
from tests.conftest import write_m4a


def make_tree(root: Path, files: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    for i in range(files):
        wave = (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        write_m4a(root / f"id{i % 8:05d}" / f"video{i // 8:03d}" / f"{i:05d}.m4a", wave)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "aac"
        make_tree(src, args.files, args.seconds)
        print(f"{args.files} files x {args.seconds:g} s, 16 kHz mono AAC; {os.cpu_count()} CPUs\n")
        print("| workers | seconds | files/s | x real time |\n| --- | --- | --- | --- |")
        for workers in args.workers:
            started = time.perf_counter()
            result = prepare_corpus(src, Path(tmp) / f"npy{workers}", 16000, workers)
            elapsed = time.perf_counter() - started
            assert result.converted == args.files and not result.bad
            print(f"| {workers} | {elapsed:.2f} | {args.files / elapsed:.1f} | "
                  f"{args.files * args.seconds / elapsed:.0f} |")


if __name__ == "__main__":
    main()
