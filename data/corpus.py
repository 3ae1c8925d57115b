"""Corpora: scanning, the cached index, per-speaker cap, label noise, and the training list an experiment saves.

A corpus is a list of `Utterance`s, read from either layout real users have:
  - VoxCeleb-style folder: <root>/<speaker>/<any sub-folders>/<file>.wav|.flac|.npy; the speaker is the first
    folder level, the utterance key is the path relative to root (as in VoxCeleb trial lists).
  - Kaldi-style folder: <root>/wav.scp (`<utt> <path>`) and <root>/utt2spk (`<utt> <speaker>`); the key is the
    utterance id.
Speaker ids (class indices) come from the sorted speaker list, which is stored in every checkpoint.

`load_index` adds each file's length and caches the whole index (see its docstring), so that a corpus of a
million files is scanned once, not at every start; `python -m data.corpus ROOT [--rescan]` prints its summary
(and rebuilds it). `save_index` writes the list an experiment trained on
(JSON lines) and `load_utterance_list` reads it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.audio import AUDIO_EXTENSIONS, audio_info, warn_short
from utils import UserError, atomic_write_bytes, atomic_write_text, read_text, remove_stale_temps, run_main

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
        utts = scan_kaldi(root)
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
    """`<utterance-id> <value>` lines; a repeated id is an error naming both lines (Kaldi's tables are maps)."""
    if not path.is_file():
        raise UserError(f"{path}: missing (a Kaldi-style corpus needs wav.scp and utt2spk)")
    table, line_of = {}, {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"{path}:{n}: expected '<utterance-id> <value>', got {line!r}")
        if parts[0] in table:
            raise UserError(f"{path}:{n}: utterance id '{parts[0]}' again (first on line {line_of[parts[0]]}); "
                            f"every id must be unique")
        table[parts[0]], line_of[parts[0]] = parts[1].strip(), n
    return table


def scan_kaldi(root: Path) -> list[Utterance]:
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
    their mtime and size. Not detected here: a file rewritten in place under the same name and, for Kaldi,
    changes to the audio files themselves (checking would cost a stat per file at every start); a training
    crop then finds the file's length differs from the index's and stops with an error naming the file
    (data.audio.load_audio's `length`). Rebuild with `rescan=True` (`python -m data.corpus --rescan ROOT`). A
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
            warn_short({u.path: u.num_samples for u in utts}, sample_rate, str(root))
            return utts
    started_ns = time.time_ns()
    utts, signature = _scan_with_signature(root)
    log.info("%s: reading the length of %d files", root, len(utts))
    lengths = _read_lengths([u.path for u in utts], sample_rate, workers)
    utts = [dataclasses.replace(u, num_samples=n) for u, n in zip(utts, lengths)]
    warn_short({u.path: u.num_samples for u in utts}, sample_rate, str(root))
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
        remove_stale_temps(cache.parent, recursive=False)
        atomic_write_bytes(cache, ("\n".join(lines) + "\n").encode())
    except (OSError, UserError) as err:  # disk full, read-only: the index is only a cache
        log.warning("%s: cannot write the index cache (%s); the next start rescans", cache, err)


# --- speakers, per-speaker cap, label noise ------------------------------------------------------------

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


# --- the training list ---------------------------------------------------------------------------------

def save_index(utts: Sequence[Utterance], path: Path) -> None:
    """The list an experiment trained on, as JSON lines (key, path, speaker)."""
    atomic_write_text(path, "".join(json.dumps(u.__dict__) + "\n" for u in utts))


def load_utterance_list(path: str | Path) -> list[Utterance]:
    """The list `save_index` wrote: one JSON object (key, path, speaker, num_samples) per line; an error names
    the file and the first malformed line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    utts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        u = _utterance_from_json(line)
        if u is None:
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise UserError(f"{path}:{n}: expected a JSON object with key, path, speaker and num_samples "
                            f"(as save_index writes), got {shown!r}")
        utts.append(u)
    return utts


def _utterance_from_json(line: str) -> Utterance | None:
    """The Utterance of one line `save_index` wrote, or None when the line is not one."""
    try:
        u = Utterance(**json.loads(line))  # TypeError: not a JSON object, or other fields
    except (ValueError, TypeError):
        return None
    typed = all(isinstance(v, str) for v in (u.key, u.path, u.speaker)) and type(u.num_samples) is int
    return u if typed else None


# --- command line ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[Utterance]:
    """`python -m data.corpus ROOT [--sample-rate N] [--rescan]`: the index's summary; --rescan rebuilds it
    (after audio files were rewritten in place, which the cache does not notice)."""
    parser = argparse.ArgumentParser(description="Index a corpus folder (cached beside it) and summarise it.",
                                     allow_abbrev=False)
    parser.add_argument("root", help="corpus folder, VoxCeleb or Kaldi layout")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default: %(default)s)")
    parser.add_argument("--rescan", action="store_true", help="ignore the cached index and rebuild it")
    args = parser.parse_args(argv)
    utts = load_index(args.root, args.sample_rate, rescan=args.rescan)
    hours = sum(u.num_samples for u in utts) / args.sample_rate / 3600
    print(f"{args.root}: {len(utts)} utterances, {len(speakers_of(utts))} speakers, {hours:.2f} h")
    return utts


if __name__ == "__main__":
    run_main(main)
