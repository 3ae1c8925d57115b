"""Data-loading benchmark: per-crop read time (wav vs npy), DataLoader throughput, and the corpus index.

    python -m bench.bench_data                  # the demo corpus, then a 100,000-file index (~2 min)
    python -m bench.bench_data --skip-index     # without the 100,000-file part
    python -m bench.bench_data --corpus DIR     # any corpus folder (VoxCeleb- or Kaldi-style, .wav/.flac)

The corpus defaults to corpora/demo/train/wav (made by `python -m data.synth`); when the folder is absent a
stand-in is generated in a temporary folder (--gen-speakers x --gen-utts files of --gen-seconds s of random
int16 wav). Its .npy copy is made with data.prepare, the augmentation folders (MUSAN-style noise/music/speech
and synthetic RIRs) and the 100,000 tiny files of the index part are generated, all in a temporary folder
deleted at the end. Crops are 200 frames (32240 samples); the loader uses batch 64 and --workers processes.

Files were just written or read, so the page cache is warm: the numbers are the CPU cost of a crop, what
limits a loader on local disks; on cold network storage both formats add the same ~64 KB read per crop.
Prints Markdown tables on stdout; progress goes to the log on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from data.audio import AUDIO_EXTENSIONS, load_audio
from data.augment import build_augmenter
from data.corpus import Utterance, load_index, speakers_of, walk_audio
from data.crops import TrainDataset, crop_bounds, random_crop, wrap_pad
from data.prepare import prepare_corpus
from data.samplers import EpochSampler

log = logging.getLogger("voiceprint")

SAMPLE_RATE = 16000
CROP = 32240  # 200 frames of 10 ms with a 25 ms window: (200 - 1) * 160 + 400
BATCH = 64


# --- corpora ----------------------------------------------------------------------------------------------

def generate_wav_corpus(root: Path, speakers: int, utts: int, seconds: float, rng: np.random.Generator) -> Path:
    for s in range(speakers):
        for u in range(utts):
            path = root / f"id{s:05d}" / f"v{u % 3}" / f"{u:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (rng.normal(0, 3000, int(seconds * SAMPLE_RATE))).astype(np.int16), SAMPLE_RATE)
    return root


def generate_augmentation(root: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """A small MUSAN-style folder (noise/, music/, speech/) and synthetic RIRs (decaying noise)."""
    for folder, count, seconds in (("noise", 6, 5), ("music", 3, 20), ("speech", 8, 6)):
        for i in range(count):
            path = root / "musan" / folder / f"{folder}-{i:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, rng.normal(0, 2000, seconds * SAMPLE_RATE).astype(np.int16), SAMPLE_RATE)
    for i in range(10):
        rir = rng.normal(0, 1, 8000) * np.exp(-np.arange(8000) / rng.uniform(300, 2000))
        rir[0] = 4.0 * np.abs(rir).max()
        path = root / "rirs" / f"room{i % 3}" / f"rir{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (rir / np.abs(rir).max() * 30000).astype(np.int16), SAMPLE_RATE)
    return root / "musan", root / "rirs"


def generate_tiny_files(root: Path, speakers: int, per_speaker: int, fmt: str, rng: np.random.Generator) -> float:
    """speakers x per_speaker .npy or .wav files of 0.1 s; returns the seconds it took."""
    started = time.perf_counter()
    wave = rng.normal(0, 3000, SAMPLE_RATE // 10).astype(np.int16)
    for s in range(speakers):
        folder = root / f"id{s:05d}"
        folder.mkdir(parents=True)
        for u in range(per_speaker):
            if fmt == "npy":
                np.save(folder / f"{u:05d}.npy", wave)
            else:
                sf.write(folder / f"{u:05d}.wav", wave, SAMPLE_RATE)
    return time.perf_counter() - started


# --- measurements ---------------------------------------------------------------------------------------

def seconds_per_call(fn: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        fn(i)
    return (time.perf_counter() - started) / count


def crop_times(utts: list[Utterance], count: int, seed: int) -> dict[str, float]:
    """Seconds per single-process crop of random utterances: lengths from the index, from a header read,
    and (for .npy) through data.audio.load_audio's np.load memory map."""
    picks = np.random.default_rng(seed).integers(0, len(utts), size=count)
    rng = np.random.default_rng(seed)
    times = {
        "index": seconds_per_call(lambda i: random_crop(utts[picks[i]].path, CROP, SAMPLE_RATE, rng,
                                                        utts[picks[i]].num_samples), count),
        "header": seconds_per_call(lambda i: random_crop(utts[picks[i]].path, CROP, SAMPLE_RATE, rng), count),
    }

    def through_load_audio(i: int) -> np.ndarray:
        u = utts[picks[i]]
        start, stop = crop_bounds(u.num_samples, CROP, rng)
        return wrap_pad(load_audio(u.path, SAMPLE_RATE, start, stop), CROP)

    times["load_audio"] = seconds_per_call(through_load_audio, count)
    return times


def loader_rate(dataset: TrainDataset, batches: int, workers: int, seed: int) -> float:
    """Crops per second through a DataLoader, after the first batch (worker start-up) is out of the way."""
    sampler = EpochSampler(len(dataset), BATCH, seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0)
    seen, epoch, started = -1, 0, 0.0
    while seen < batches:
        sampler.set_epoch(epoch)
        for wave, _ in loader:
            assert wave.shape == (BATCH, CROP)
            seen += 1
            if seen == 0:
                started = time.perf_counter()
            if seen == batches:
                break
        epoch += 1
    return batches * BATCH / (time.perf_counter() - started)


def index_times(root: Path, cache_dir: Path) -> dict[str, float]:
    def timed(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return {
        "Path.rglob listing (the former scan_corpus)":
            timed(lambda: [p for p in root.rglob("*") if p.suffix in AUDIO_EXTENSIONS]),
        "os.scandir listing (walk_audio)": timed(lambda: walk_audio(root)),
        "load_index, first scan (listing + 8-thread header reads + cache write)":
            timed(lambda: load_index(root, SAMPLE_RATE, cache_dir=cache_dir, rescan=True)),
        "load_index, cached start": timed(lambda: load_index(root, SAMPLE_RATE, cache_dir=cache_dir)),
    }


# --- report -----------------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bench_crops(wav: list[Utterance], npy: list[Utterance], args: argparse.Namespace, tmp: Path) -> None:
    times = {"wav": crop_times(wav, args.crops, args.seed), "npy": crop_times(npy, args.crops, args.seed)}
    base = times["wav"]["index"]
    rows = [["wav", f"{times['wav']['index'] * 1e6:.0f}", f"{times['wav']['header'] * 1e6:.0f}", "1.0x"],
            ["npy (data.audio.load_audio: pread)", f"{times['npy']['index'] * 1e6:.0f}",
             f"{times['npy']['header'] * 1e6:.0f}", f"{base / times['npy']['index']:.1f}x"],
            ["npy (data.audio.load_audio: np.load mmap)", f"{times['npy']['load_audio'] * 1e6:.0f}", "",
             f"{base / times['npy']['load_audio']:.1f}x"]]
    print(f"\n### Single-process crop read ({args.crops} random crops of {CROP} samples, warm page cache)\n")
    print(table(["format", "us / crop, length from index", "us / crop, header read", "speed vs wav"], rows))

    musan, rirs = generate_augmentation(tmp / "aug", np.random.default_rng(args.seed))
    augmenter = build_augmenter(str(musan), str(rirs), SAMPLE_RATE, 0.6)
    variants = [("wav", wav, None, False), ("npy", npy, None, False),
                ("npy + augmentation (p 0.6)", npy, augmenter, False),
                ("npy + augmentation + speed perturbation", npy, augmenter, True)]
    rows = []
    for name, utts, augment, speed in variants:
        dataset = TrainDataset(utts, speakers_of(utts), CROP, SAMPLE_RATE, augment=augment, speed_perturb=speed)
        log.info("loader: %s", name)
        rows.append([name, f"{loader_rate(dataset, args.batches, args.workers, args.seed):.0f}"])
    print(f"\n### DataLoader throughput ({args.workers} workers, batch {BATCH}, {args.batches} batches after the "
          f"first)\n")
    print(table(["input", "crops / s"], rows))


def bench_index(args: argparse.Namespace, tmp: Path) -> None:
    root = tmp / "tiny"
    count = args.index_speakers * args.index_files
    log.info("writing %d tiny .%s files", count, args.index_format)
    write_s = generate_tiny_files(root, args.index_speakers, args.index_files, args.index_format,
                                  np.random.default_rng(args.seed))
    time.sleep(2.1)  # past load_index's 2 s racy window, as for a corpus not written a moment ago
    times = index_times(root, tmp / "index-cache")
    rows = [[name, f"{seconds:.2f}"] for name, seconds in times.items()]
    print(f"\n### Index of {count:,} files ({args.index_speakers} speakers x {args.index_files} "
          f".{args.index_format} of 0.1 s; writing them took {write_s:.0f} s)\n")
    print(table(["step", "seconds"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--corpus", default="corpora/demo/train/wav", help="(default: %(default)s)")
    parser.add_argument("--crops", type=int, default=2000, help="single-process crops per format")
    parser.add_argument("--batches", type=int, default=60, help="loader batches timed per input")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--gen-speakers", type=int, default=40, help="stand-in corpus: speakers")
    parser.add_argument("--gen-utts", type=int, default=10, help="stand-in corpus: files per speaker")
    parser.add_argument("--gen-seconds", type=float, default=6.0, help="stand-in corpus: seconds per file")
    parser.add_argument("--skip-index", action="store_true", help="skip the index of many tiny files")
    parser.add_argument("--index-speakers", type=int, default=100)
    parser.add_argument("--index-files", type=int, default=1000, help="files per speaker in the index part")
    parser.add_argument("--index-format", choices=("npy", "wav"), default="npy", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp_name:
        tmp = Path(tmp_name)
        source = Path(args.corpus)
        if not source.is_dir():
            log.info("%s absent: generating a stand-in corpus in %s", source, tmp / "wav")
            source = generate_wav_corpus(tmp / "wav", args.gen_speakers, args.gen_utts, args.gen_seconds,
                                         np.random.default_rng(args.seed))
        started = time.perf_counter()
        prepared = prepare_corpus(source, tmp / "npy", SAMPLE_RATE, workers=min(2, os.cpu_count() or 1))
        prepare_s = time.perf_counter() - started
        wav = load_index(source, SAMPLE_RATE, cache_dir=tmp / "index-cache")
        npy = load_index(tmp / "npy", SAMPLE_RATE, cache_dir=tmp / "index-cache")
        hours = sum(u.num_samples for u in wav) / SAMPLE_RATE / 3600
        print(f"\n## Data benchmark: {source} ({len(wav)} files, {len(speakers_of(wav))} speakers, {hours:.2f} h); "
              f"{os.cpu_count()} CPUs; prepare to .npy: {prepared.converted / prepare_s:.0f} files/s")
        bench_crops(wav, npy, args, tmp)
        if not args.skip_index:
            bench_index(args, tmp)


if __name__ == "__main__":
    main()
