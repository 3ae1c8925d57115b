"""The embedding store at VoxCeleb2 scale: time and peak memory of its writes and reads.

    python -m bench.bench_store                        # 1,000,000 utterances (VoxCeleb2 dev: 1,092,009), ~3 min
    python -m bench.bench_store --utterances 100000    # quicker
    python -m bench.bench_store --skip-npz             # without the former cache (one .npz rewritten per addition)

Simulates the index of a VoxCeleb2-sized training list (keys `idNNNNN/VIDEO/NNNNN.wav`, absolute paths) with
random 192-dimensional embeddings (ECAPA-TDNN's), in a temporary folder deleted at the end. Each measurement
runs in a fresh process (spawned), so its peak resident memory (ru_maxrss) is its own; the first row is that
of a process that only imports the bench (embedding.py imports torch). The store's rows:
  - write all: train_sort's first pass, every training utterance embedded and stored as one shard;
  - add 1: one more file embedded into the full store (what cost a rewrite of the whole file before);
  - read 145k: the files of VoxCeleb1-E (145,160) out of the full store;
  - read all: train_sort's second range of the same model (every embedding from the store).
The former cache (`--skip-npz` to leave it out) is measured the same way: the full .npz, then one addition,
which read the whole file and wrote it again.
Seconds are those of the store operation alone; the peak memory is the whole process's, so it includes the
operation's inputs (a write's embeddings, a read's wanted keys) and its result. Prints a Markdown table on
stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedding import EmbeddingStore

DIM = 192
SUBSET = 145_160  # the files of the VoxCeleb1-E trial list


def entry(i: int) -> tuple[str, str]:
    """The i-th VoxCeleb2-like (key, path): 5,994 speakers' videos of 8 utterances each."""
    key = f"id{i // 182 % 5994:05d}/v{i // 8:010d}/{i % 8:05d}.wav"
    return key, f"/data/voxceleb2/dev/wav/{key}"


def entries(count: int) -> list[tuple[str, str]]:
    return [entry(i) for i in range(count)]


def vectors(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)  # (count, D), L2-normalised as embeddings are


# --- measurements (each in its own process; each returns the seconds of the operation itself) -------------

def timed(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def nothing(folder: Path, count: int) -> float:
    return 0.0


def write_all(folder: Path, count: int) -> float:
    new = dict(zip(entries(count), vectors(count, 0)))  # what Embedder.embed hands the store
    return timed(lambda: EmbeddingStore(folder / "store").append(new, {"bench": True}))


def add_one(folder: Path, count: int) -> float:
    new = {("extra/00001.wav", "/data/extra/00001.wav"): vectors(1, 1)[0]}
    return timed(lambda: EmbeddingStore(folder / "store").append(new, {"bench": True}))


def read_subset(folder: Path, count: int) -> float:
    picks = np.random.default_rng(2).choice(count, size=min(SUBSET, count), replace=False)
    wanted = dict(entry(int(i)) for i in picks)
    return timed(lambda: len(EmbeddingStore(folder / "store").read(wanted)) == len(wanted) or 1 / 0)


def read_all(folder: Path, count: int) -> float:
    wanted = dict(entries(count))
    return timed(lambda: len(EmbeddingStore(folder / "store").read(wanted)) == count or 1 / 0)


def npz_write_all(folder: Path, count: int) -> float:
    pairs, rows = entries(count), vectors(count, 0)
    return timed(lambda: np.savez(folder / "cache.npz", keys=np.array([k for k, _ in pairs]),
                                  paths=np.array([p for _, p in pairs]), embeddings=rows))


def npz_add_one(folder: Path, count: int) -> float:
    """The former embedding.write_embedding_cache: read every entry, add one, sort, write the file again."""
    new = {("extra/00001.wav", "/data/extra/00001.wav"): vectors(1, 1)[0]}

    def rewrite() -> None:
        with np.load(folder / "cache.npz") as data:
            cached = {(str(k), str(p)): r for k, p, r in zip(data["keys"], data["paths"], data["embeddings"])}
        items = sorted({**cached, **new}.items())
        np.savez(folder / "cache.npz", keys=np.array([k for (k, _), _ in items]),
                 paths=np.array([p for (_, p), _ in items]), embeddings=np.stack([e for _, e in items]))

    return timed(rewrite)


def measured(job: Callable[[Path, int], float], folder: Path, count: int) -> tuple[float, float]:
    """(seconds of the operation, peak resident MiB of this process, its inputs included)."""
    seconds = job(folder, count)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(job: Callable[[Path, int], float], folder: Path, count: int) -> tuple[float, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measured, (job, folder, count))


# --- report -----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--skip-npz", action="store_true", help="leave out the former single-.npz cache")
    args = parser.parse_args()
    jobs = [("a process importing the bench (torch too)", nothing), ("store: write all", write_all),
            ("store: add 1", add_one), (f"store: read {min(SUBSET, args.utterances):,}", read_subset),
            ("store: read all", read_all)]
    if not args.skip_npz:
        jobs += [("former .npz: write all", npz_write_all), ("former .npz: add 1 (rewrite)", npz_add_one)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in jobs:
            seconds, peak = in_fresh_process(job, Path(tmp), args.utterances)
            rows.append(f"| {name} | {seconds:.2f} | {peak:,.0f} |")
        size = sum(p.stat().st_size for p in Path(tmp, "store").iterdir()) / 2**20
    print(f"\n### Embedding store, {args.utterances:,} utterances x {DIM} float32 (store on disk: {size:,.0f} MiB)\n")
    print("| operation | seconds | peak resident MiB |\n|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
