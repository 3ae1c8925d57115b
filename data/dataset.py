"""Corpora, training crops and trial lists.

A corpus is a list of `Utterance`s, read from either layout real users have:
  - VoxCeleb-style folder: <root>/<speaker>/<any sub-folders>/<file>.wav|.flac|.npy; the speaker is the first
    folder level, the utterance key is the path relative to root (as in VoxCeleb trial lists).
  - Kaldi-style folder: <root>/wav.scp (`<utt> <path>`) and <root>/utt2spk (`<utt> <speaker>`); the key is the
    utterance id.
Speaker ids (class indices) come from the sorted speaker list, which is stored in every checkpoint.

`load_index` adds each file's length and caches the whole index (see its docstring), so that a corpus of a
million files is scanned once, not at every start.

Training randomness is an argument: the sampler draws an integer seed per item from (seed, epoch), and the
item's crop (its speed, its augmentation) is a pure function of that seed, so an epoch is reproduced exactly
whatever the number of workers, and a resumed run replays it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from data.audio import AUDIO_EXTENSIONS, audio_info, load_audio
from utils import UserError, atomic_write_text

log = logging.getLogger("voiceprint")


@dataclass(frozen=True)
class Utterance:
    key: str  # path relative to the corpus root (VoxCeleb) or utterance id (Kaldi)
    path: str  # file to read
    speaker: str
    num_samples: int = 0  # length at the index's sample rate (load_index); 0 = unknown, read when needed


# --- corpus index --------------------------------------------------------------------------------------

def scan_corpus(root: str | Path) -> list[Utterance]:
    """Every utterance of a VoxCeleb-style or Kaldi-style corpus folder, sorted by key."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such corpus folder")
    if (root / "wav.scp").is_file():
        utts = _scan_kaldi(root)
    else:
        utts = _voxceleb_utterances(root, walk_audio(root).files)
    if not utts:
        raise _no_audio(root)
    return sorted(utts, key=lambda u: u.key)


def _no_audio(root: Path) -> UserError:
    return UserError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under <speaker>/ folders, "
                     f"and no wav.scp")


@dataclass(frozen=True)
class AudioTree:
    files: list[str]  # audio files, relative posix paths, sorted
    dirs: dict[str, int]  # every folder walked ("." = the root) -> its mtime in ns, read before it was listed


def walk_audio(root: str | Path) -> AudioTree:
    """Every audio file under `root` at any depth, with os.scandir (no stat per file: an order of magnitude
    faster than Path.rglob on a million files). Symlinked folders are followed, each real folder once."""
    files: list[str] = []
    dirs: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    stack = [("", str(root))]
    while stack:
        rel, full = stack.pop()
        try:
            st = os.stat(full)
            dirs[rel or "."] = st.st_mtime_ns  # before listing: a file added later changes it
            if (st.st_dev, st.st_ino) in seen:  # a second link to a folder already walked
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(full) as entries:
                for entry in entries:
                    name = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir():
                        stack.append((name, entry.path))
                    elif os.path.splitext(entry.name)[1] in AUDIO_EXTENSIONS and entry.is_file():
                        files.append(name)
        except OSError as err:
            raise UserError(f"{full}: cannot list folder ({err.strerror})") from None
    return AudioTree(sorted(files), dirs)


def _voxceleb_utterances(root: Path, files: Sequence[str]) -> list[Utterance]:
    prefix = _path_prefix(root)
    return [Utterance(rel, prefix + rel, rel.split("/", 1)[0]) for rel in files if "/" in rel]


def _path_prefix(root: Path) -> str:
    """What `str(root / rel)` puts before `rel` ("" for the root "."), without a pathlib call per file."""
    return str(root / "_")[:-1]


def _read_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"{path}: missing (a Kaldi-style corpus needs wav.scp and utt2spk)")
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"{path}:{n}: expected '<utterance-id> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
    return table


def _scan_kaldi(root: Path) -> list[Utterance]:
    wav_scp, utt2spk = _read_table(root / "wav.scp"), _read_table(root / "utt2spk")
    utts = []
    for utt, path in wav_scp.items():
        if path.endswith("|"):
            raise UserError(f"{root / 'wav.scp'}: {utt}: piped commands are not supported; convert the audio "
                            f"to files (python -m data.prepare)")
        if utt not in utt2spk:
            raise UserError(f"{root / 'utt2spk'}: no speaker for utterance '{utt}'")
        path = path if Path(path).is_absolute() else str(root / path)
        utts.append(Utterance(utt, path, utt2spk[utt]))
    return utts


# --- cached index ---------------------------------------------------------------------------------------
#
# Cache file (text, tab-separated, written atomically):
#   voiceprint-index <version> <layout> <sample_rate> <number of signature lines> <number of utterances>
#   <mtime_ns> <size> <path relative to root>    signature: every folder below the root (VoxCeleb layout),
#                                                or wav.scp and utt2spk (Kaldi layout); size 0 for folders
#   <key> <path> <speaker> <num_samples>         path relative to the root unless absolute
# The root's own mtime is not in the signature (the cache file itself lives there); instead the root is
# listed at every start and its sub-folders must be those of the signature.

INDEX_VERSION = "1"
RACY_NS = 2_000_000_000  # a folder changed this close to the scan may hide a same-tick change: not cached


def load_index(root: str | Path, sample_rate: int, cache_dir: str | Path | None = None, rescan: bool = False,
               workers: int = 8) -> list[Utterance]:
    """`scan_corpus(root)` with `num_samples` filled in (header reads, `workers` threads), from a cache file
    when the corpus has not changed since it was written.

    The cache is `<root>/.voiceprint_index.<sample_rate>.tsv` when the root is writable, else in
    `cache_dir` (default `$XDG_CACHE_HOME/voiceprint` or `~/.cache/voiceprint`). It is valid while the
    root holds the same sub-folders and every folder below it keeps its mtime (adding, removing or renaming
    a file or folder changes its parent's mtime) or, for a Kaldi folder, while wav.scp and utt2spk keep
    their mtime and size. Not detected: a file rewritten in place under the same name (its length may be
    stale) and, for Kaldi, changes to the audio files themselves; pass `rescan=True` after such edits. A
    folder modified less than 2 s before the scan leaves the index uncached (a change in the same clock
    tick as the listing would go unseen); the next start caches it.

    `workers` threads overlap the header reads: a large gain on cold or network storage, where each read
    waits on I/O; on a warm page cache they contend for the GIL (100,000 .wav headers: 12 s with 8 threads,
    about half that with 1). Plain .npy headers are read directly (100,000 in 2.3 s).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such corpus folder")
    cache = index_cache_path(root, sample_rate, cache_dir)
    if not rescan:
        utts = _read_index_cache(cache, root, sample_rate)
        if utts is not None:
            log.info("%s: %d utterances from the index cache %s", root, len(utts), cache)
            return utts
    started_ns = time.time_ns()
    utts, signature = _scan_with_signature(root)
    log.info("%s: reading the length of %d files", root, len(utts))
    lengths = _read_lengths([u.path for u in utts], sample_rate, workers)
    utts = [dataclasses.replace(u, num_samples=n) for u, n in zip(utts, lengths)]
    if any(mtime > started_ns - RACY_NS for mtime, _, _ in signature):
        log.info("%s: modified in the last %d s; index not cached", root, RACY_NS // 10**9)
    else:
        _write_index_cache(cache, root, sample_rate, signature, utts)
    log.info("%s: indexed %d utterances in %.1f s", root, len(utts), (time.time_ns() - started_ns) / 1e9)
    return utts


def index_cache_path(root: Path, sample_rate: int, cache_dir: str | Path | None = None) -> Path:
    """Where `load_index` keeps the index of `root`."""
    if cache_dir is None and os.access(root, os.W_OK):
        return root / f".voiceprint_index.{sample_rate}.tsv"
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voiceprint"
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{root.resolve().name}-{digest}.index.{sample_rate}.tsv"


def _scan_with_signature(root: Path) -> tuple[list[Utterance], list[tuple[int, int, str]]]:
    """The corpus (sorted by key, no lengths yet) and its signature [(mtime_ns, size, relative path)], read
    before the listing so that a change during the scan shows as a mismatch next time."""
    if (root / "wav.scp").is_file():
        stats = {name: _stat_or_none(root / name) for name in ("wav.scp", "utt2spk")}
        utts = scan_corpus(root)  # raises when utt2spk is missing
        return utts, [(st.st_mtime_ns, st.st_size, name) for name, st in stats.items() if st is not None]
    tree = walk_audio(root)
    utts = sorted(_voxceleb_utterances(root, tree.files), key=lambda u: u.key)
    if not utts:
        raise _no_audio(root)
    return utts, [(mtime, 0, rel) for rel, mtime in sorted(tree.dirs.items()) if rel != "."]


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _read_lengths(paths: Sequence[str], sample_rate: int, workers: int) -> list[int]:
    """The length of every path; threads overlap the header reads (they wait on storage, not the CPU)."""
    blocks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [n for block in pool.map(lambda b: [audio_info(p, sample_rate) for p in b], blocks) for n in block]


def _layout(root: Path) -> str:
    return "kaldi" if (root / "wav.scp").is_file() else "voxceleb"


def _signature_holds(root: Path, signature: Sequence[tuple[int, int, str]]) -> bool:
    if _layout(root) == "voxceleb":  # VoxCeleb: the root's sub-folders are those indexed
        try:
            with os.scandir(root) as entries:
                folders = {entry.name for entry in entries if entry.is_dir()}
        except OSError:
            return False
        if folders != {rel for _, _, rel in signature if "/" not in rel}:
            return False
    for mtime, size, rel in signature:
        st = _stat_or_none(root / rel)
        if st is None or st.st_mtime_ns != mtime or (size and st.st_size != size):
            return False
    return True


def _read_index_cache(cache: Path, root: Path, sample_rate: int) -> list[Utterance] | None:
    """The cached index, or None when there is none or the corpus changed since."""
    try:
        lines = cache.read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        head = lines[0].split("\t")
        if len(head) != 6 or head[:4] != ["voiceprint-index", INDEX_VERSION, _layout(root), str(sample_rate)]:
            return None
        num_sig, num_utts = int(head[4]), int(head[5])
        if len(lines) != 2 + num_sig + num_utts:  # header, lines, and "" after the final newline
            return None
        signature = [(int(m), int(z), rel) for m, z, rel in (line.split("\t") for line in lines[1:1 + num_sig])]
        if not _signature_holds(root, signature):
            log.info("%s: changed since its index was cached; rescanning", root)
            return None
        prefix = _path_prefix(root)
        utts = []
        for line in lines[1 + num_sig:-1]:
            key, path, speaker, num_samples = line.split("\t")
            utts.append(Utterance(key, path if os.path.isabs(path) else prefix + path, speaker, int(num_samples)))
    except ValueError:  # not a file this version wrote
        return None
    return utts


def _write_index_cache(cache: Path, root: Path, sample_rate: int, signature: Sequence[tuple[int, int, str]],
                       utts: Sequence[Utterance]) -> None:
    prefix = _path_prefix(root)
    fields = [(u.key, u.path[len(prefix):] if prefix and u.path.startswith(prefix) else u.path, u.speaker)
              for u in utts]
    if any("\t" in f or "\n" in f for row in fields for f in row) or any("\t" in r or "\n" in r
                                                                          for _, _, r in signature):
        log.warning("%s: a file or speaker name holds a tab or newline; index not cached", root)
        return
    lines = [f"voiceprint-index\t{INDEX_VERSION}\t{_layout(root)}\t{sample_rate}\t{len(signature)}\t{len(utts)}"]
    lines += [f"{mtime}\t{size}\t{rel}" for mtime, size, rel in signature]
    lines += [f"{k}\t{p}\t{s}\t{u.num_samples}" for (k, p, s), u in zip(fields, utts)]
    try:
        atomic_write_bytes(cache, ("\n".join(lines) + "\n").encode())
    except OSError as err:
        log.warning("%s: cannot write the index cache (%s); the next start rescans", cache, err.strerror)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file beside it, fsynced, then renamed: a reader (or a resumed run)
    sees the old file or the whole new one. Unlike utils.atomic_path (mkstemp, mode 0600) the file gets the
    usual 0666 minus umask, so a corpus prepared by one user stays readable by the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def speakers_of(utts: Sequence[Utterance]) -> list[str]:
    return sorted({u.speaker for u in utts})


def cap_per_speaker(utts: Sequence[Utterance], max_utts: int, seed: int) -> list[Utterance]:
    """At most `max_utts` utterances per speaker, a seeded random choice (0 = keep all)."""
    if max_utts <= 0:
        return list(utts)
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_speaker[u.speaker].append(u)
    kept = []
    for speaker in sorted(by_speaker):
        group = by_speaker[speaker]
        chosen = rng.permutation(len(group))[:max_utts]
        kept.extend(group[i] for i in sorted(chosen))
    return kept


@dataclass(frozen=True)
class MovedLabel:
    key: str
    true_speaker: str
    assigned_speaker: str


def inject_label_noise(utts: Sequence[Utterance], rate: float,
                       seed: int) -> tuple[list[Utterance], list[MovedLabel]]:
    """Move round(rate * N) seeded-random utterances to a random *other* speaker; return the noisy list and
    the record of what moved (for measuring how well noise is found later)."""
    speakers = speakers_of(utts)
    count = round(rate * len(utts))
    if count == 0:
        return list(utts), []
    if len(speakers) < 2:
        raise UserError("label_noise needs at least two speakers")
    rng = np.random.default_rng([seed, 1])  # its own stream: the cap's choice does not shift with the rate
    moved_idx = rng.choice(len(utts), size=count, replace=False)
    offsets = rng.integers(1, len(speakers), size=count)  # never 0: always a different speaker
    index_of = {s: i for i, s in enumerate(speakers)}
    noisy, moved = list(utts), []
    for i, offset in zip(sorted(moved_idx), offsets):
        u = utts[i]
        other = speakers[(index_of[u.speaker] + offset) % len(speakers)]
        noisy[i] = dataclasses.replace(u, speaker=other)
        moved.append(MovedLabel(u.key, u.speaker, other))
    return noisy, moved


def write_moved_labels(moved: Sequence[MovedLabel], path: Path) -> None:
    atomic_write_text(path, "".join(f"{m.key} {m.true_speaker} {m.assigned_speaker}\n" for m in moved))


# --- training crops ------------------------------------------------------------------------------------

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
    return wrap_pad(load_audio(path, sample_rate, start, stop), num_samples)


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


class EpochSampler(torch.utils.data.Sampler):
    """Batches of (item, seed) pairs: a fresh permutation per epoch, a function of (seed, epoch) alone.
    Under DDP each rank takes every world_size-th batch, so ranks see disjoint data; the last incomplete
    batch (and the remainder that does not divide among ranks) is dropped."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < batch_size * world_size:
            raise UserError(f"{num_items} training utterances are fewer than one batch of {batch_size} "
                            f"x {world_size} process(es); lower --batch-size")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        seeds = rng.integers(0, 2**63 - 1, size=self.num_items)
        for b in range(self.start_batch, len(self)):
            first = (b * self.world_size + self.rank) * self.batch_size
            yield [(int(i), int(seeds[i])) for i in order[first:first + self.batch_size]]


class BalancedSampler(torch.utils.data.Sampler):
    """Speaker-balanced batches of (item, seed) pairs: each batch holds batch_size / N distinct speakers with
    N = `utts_per_speaker_in_batch` utterances each, laid out speaker-major (reshape to (speakers, N)).
    Same interface and guarantees as `EpochSampler`: a function of (seed, epoch) alone, `set_epoch` with
    `start_batch`, ranks take every world_size-th batch (disjoint batches; only an utterance repeated as
    padding, below, can fall on two ranks, with another crop seed).

    Per epoch each speaker's utterances are shuffled and cut into groups of N; a speaker with fewer than N
    utterances, or a last group short of N, is filled by repeating the speaker's own utterances (each
    repeat gets its own seed, so another crop): every speaker is trained on and every utterance is seen at
    least once per epoch. The groups are dealt to the batches at random (`_deal`), never two of one
    speaker in a batch. The epoch has (total groups // speakers per batch) batches, about the random
    sampler's count; the fewer than speakers-per-batch groups left over are dropped at random, and a
    speaker holding more than 1 / speakers-per-batch of all groups is capped at one group per batch.
    """

    def __init__(self, speaker_of_item: Sequence[int], batch_size: int, utts_per_speaker_in_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        per_speaker = utts_per_speaker_in_batch
        if per_speaker < 1 or batch_size % per_speaker:
            raise UserError(f"batch_size {batch_size} is not a multiple of utts_per_speaker_in_batch "
                            f"{per_speaker}")
        speaker_of_item = np.asarray(speaker_of_item, dtype=np.int64)
        order = np.argsort(speaker_of_item, kind="stable")
        _, starts, counts = np.unique(speaker_of_item[order], return_index=True, return_counts=True)
        self.items_of_speaker = np.split(order, starts[1:])
        self.speakers_per_batch = batch_size // per_speaker
        if len(counts) < self.speakers_per_batch:
            raise UserError(f"{len(counts)} training speakers are fewer than the {self.speakers_per_batch} a "
                            f"balanced batch of {batch_size} needs; lower --batch-size or raise "
                            f"--utts-per-speaker-in-batch")
        self.groups_of_speaker = _capped_groups(-(-counts // per_speaker), self.speakers_per_batch)
        self.num_batches = int(self.groups_of_speaker.sum()) // self.speakers_per_batch  # all ranks together
        if self.num_batches < world_size:
            raise UserError(f"{len(speaker_of_item)} training utterances are fewer than one balanced batch of "
                            f"{batch_size} x {world_size} process(es); lower --batch-size")
        self.batch_size, self.per_speaker, self.seed = batch_size, per_speaker, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches // self.world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._deal(self._kept_groups(rng), rng)  # (num_batches, speakers_per_batch, N) items
        order = rng.permutation(self.num_batches)
        seeds = rng.integers(0, 2**63 - 1, size=(self.num_batches, self.batch_size))
        for b in range(self.start_batch, len(self)):
            chosen = order[b * self.world_size + self.rank]
            yield [(int(i), int(s)) for i, s in zip(batches[chosen].ravel(), seeds[chosen])]

    def _kept_groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Each speaker's groups this epoch, (groups, N) items; the leftover groups dropped at random."""
        groups = [np.resize(rng.permutation(items), (g, self.per_speaker))
                  for items, g in zip(self.items_of_speaker, self.groups_of_speaker)]
        total = int(self.groups_of_speaker.sum())
        dropped = rng.choice(total, size=total - self.num_batches * self.speakers_per_batch, replace=False)
        owner = np.searchsorted(np.cumsum(self.groups_of_speaker), dropped, side="right")
        keep = self.groups_of_speaker - np.bincount(owner, minlength=len(groups))
        return [g[:k] for g, k in zip(groups, keep)]

    def _deal(self, groups: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Deal the groups, speakers in random order, to the batches in the order of a shuffled deck; each
        pass through the deck fills one more slot of every batch. When a speaker's groups run past the end
        of the deck, the next deck is shuffled with the batches that speaker just got at its back, so no
        speaker lands twice in a batch (it never has more groups than there are batches)."""
        filled = np.zeros(self.num_batches, dtype=np.int64)
        batches = np.empty((self.num_batches, self.speakers_per_batch, self.per_speaker), dtype=np.int64)
        deck, pos = rng.permutation(self.num_batches), 0
        for s in rng.permutation(len(groups)):
            chosen = deck[pos:pos + len(groups[s])]
            pos += len(chosen)
            if len(chosen) < len(groups[s]):  # next pass: a fresh deck, this speaker's batches last
                deck = rng.permutation(self.num_batches)
                deck = np.concatenate([deck[~np.isin(deck, chosen)], deck[np.isin(deck, chosen)]])
                pos = len(groups[s]) - len(chosen)
                chosen = np.concatenate([chosen, deck[:pos]])
            batches[chosen, filled[chosen]] = groups[s]
            filled[chosen] += 1
        return batches


def _capped_groups(groups: np.ndarray, speakers_per_batch: int) -> np.ndarray:
    """Cap each speaker at one group per batch: a batch never holds a speaker twice."""
    while True:
        capped = np.minimum(groups, groups.sum() // speakers_per_batch)
        if (capped == groups).all():
            return groups
        groups = capped


# --- trial lists ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    label: int  # 1 = same speaker (target), 0 = different (non-target)
    enroll: str  # utterance key
    test: str


def read_trials(path: str | Path) -> list[Trial]:
    """VoxCeleb format `1|0 <enroll> <test>` or Kaldi format `<enroll> <test> target|nontarget`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such trial list")
    trials = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 3 and parts[0] in ("0", "1"):
            trials.append(Trial(int(parts[0]), parts[1], parts[2]))
        elif len(parts) == 3 and parts[2] in ("target", "nontarget"):
            trials.append(Trial(int(parts[2] == "target"), parts[0], parts[1]))
        else:
            raise UserError(f"{path}:{n}: expected '1|0 <enroll> <test>' or '<enroll> <test> target|nontarget', "
                            f"got {line!r}")
    if not trials:
        raise UserError(f"{path}: no trials")
    labels = {t.label for t in trials}
    if labels != {0, 1}:
        raise UserError(f"{path}: needs both target and non-target trials")
    return trials


def trial_paths(trials: Sequence[Trial], root: str | Path, trials_path: str | Path) -> dict[str, str]:
    """Map every utterance key of the trials to its file; an error names the first missing one."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such corpus folder")
    keys = sorted({t.enroll for t in trials} | {t.test for t in trials})
    if (root / "wav.scp").is_file():
        known = {u.key: u.path for u in _scan_kaldi(root)}
        paths = {k: known.get(k, "") for k in keys}
    else:
        paths = {k: str(root / k) for k in keys}
    missing = [k for k, p in paths.items() if not p or not Path(p).is_file()]
    if missing:
        raise UserError(f"{trials_path}: {len(missing)} of {len(keys)} trial files are not in {root}, "
                        f"first: {missing[0]}")
    return paths


def save_index(utts: Sequence[Utterance], path: Path) -> None:
    """The list an experiment trained on, as JSON lines (key, path, speaker)."""
    atomic_write_text(path, "".join(json.dumps(u.__dict__) + "\n" for u in utts))
