"""Trial lists: reading VoxCeleb-, Kaldi- or CN-Celeb-format trials and mapping their keys to files.

One format per file, recognised from its first trial:
  voxceleb  `1|0 <enroll> <test>`                keys: paths relative to the data folder (or wav.scp ids)
  kaldi     `<enroll> <test> target|nontarget`   the same keys
  cnceleb   `<enroll_id> <test> 1|0`             CN-Celeb's eval/lists/trials.lst: the enrolment side is a
            model of several files, named by the `enroll.map` beside the list (`<enroll_id> <utt> [<utt> ...]`).
            CN-Celeb's layout: the test paths are relative to its eval/ folder, the enroll.map files to its
            data/ folder. The data folder given may be the corpus root (holding eval/ and data/) or eval/
            itself; without a data/ folder beside it, the enroll.map files are looked for in the data folder.
A file the list names with another audio extension than the one on disk is found under the same name with any
extension of data.audio.AUDIO_EXTENSIONS (CN-Celeb's lists name .wav files; its flac release holds .flac,
and data.prepare's output .npy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.audio import AUDIO_EXTENSIONS
from data.corpus import scan_kaldi
from utils import UserError, read_text

ENROLL_MAP = "enroll.map"  # CN-Celeb: the enrolment models of the trial lists in its folder


@dataclass(frozen=True)
class Trial:
    label: int  # 1 = same speaker (target), 0 = different (non-target)
    enroll: str  # utterance key; in a cnceleb list, an enrolment model id (TrialFiles.models names its files)
    test: str  # utterance key


def _voxceleb(parts: Sequence[str]) -> Trial | None:
    return Trial(int(parts[0]), parts[1], parts[2]) if parts[0] in ("0", "1") else None


def _kaldi(parts: Sequence[str]) -> Trial | None:
    return Trial(int(parts[2] == "target"), parts[0], parts[1]) if parts[2] in ("target", "nontarget") else None


def _cnceleb(parts: Sequence[str]) -> Trial | None:
    return Trial(int(parts[2]), parts[0], parts[1]) if parts[2] in ("0", "1") else None


# format -> (its line parser, its line in words); detection tries them in this order (a first line that two
# formats parse, `0 a target` or `1 a 0`, is read as the first of them)
FORMATS: dict[str, tuple[Callable[[Sequence[str]], Trial | None], str]] = {
    "kaldi": (_kaldi, "'<enroll> <test> target|nontarget'"),
    "voxceleb": (_voxceleb, "'1|0 <enroll> <test>'"),
    "cnceleb": (_cnceleb, "'<enroll_id> <test> 1|0'"),
}


@dataclass(frozen=True)
class Listing:
    format: str  # a key of FORMATS
    trials: list[Trial]
    lines: list[int]  # the line number of each trial


def read_listing(path: str | Path) -> Listing:
    """A trial list's trials in any format of FORMATS (that of its first trial; every line must share it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such trial list")
    fmt, trials, lines = "", [], []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        candidates = [fmt] if fmt else list(FORMATS)
        parsed = [(f, t) for f in candidates if len(parts) == 3 and (t := FORMATS[f][0](parts)) is not None]
        if not parsed:
            raise UserError(f"{path}:{n}: expected {' or '.join(FORMATS[f][1] for f in candidates)}, got {line!r}")
        fmt = parsed[0][0]
        trials.append(parsed[0][1])
        lines.append(n)
    if not trials:
        raise UserError(f"{path}: no trials")
    if {t.label for t in trials} != {0, 1}:
        raise UserError(f"{path}: needs both target and non-target trials")
    return Listing(fmt, trials, lines)


def read_trials(path: str | Path) -> list[Trial]:
    """The trials of a list in any of the FORMATS."""
    return read_listing(path).trials


def find_audio(folder: Path, name: str) -> str | None:
    """folder/name if it is a file, else the same name with another audio extension, else None."""
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    stem, ext = os.path.splitext(path)
    stem = stem if ext in AUDIO_EXTENSIONS else path
    return next((stem + e for e in AUDIO_EXTENSIONS if os.path.isfile(stem + e)), None)


def trial_paths(trials: Sequence[Trial], root: str | Path, trials_path: str | Path) -> dict[str, str]:
    """Map every utterance key of the trials to its file; an error names the first missing one."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such corpus folder")
    keys = sorted({t.enroll for t in trials} | {t.test for t in trials})
    if (root / "wav.scp").is_file():
        known = {u.key: u.path for u in scan_kaldi(root)}
        paths = {k: known.get(k, "") for k in keys}
    else:
        paths = {k: find_audio(root, k) or "" for k in keys}
    missing = [k for k, p in paths.items() if not p or not Path(p).is_file()]
    if missing:
        raise UserError(f"{trials_path}: {len(missing)} of {len(keys)} trial files are not in {root}, "
                        f"first: {missing[0]}")
    return paths


# --- a list with every file it needs -----------------------------------------------------------------------

@dataclass(frozen=True)
class TrialFiles:
    trials: list[Trial]
    files: dict[str, str]  # utterance key -> file, for every file the trials need (both sides)
    models: dict[str, tuple[str, ...]]  # enrolment model id -> its utterance keys; {} = enroll keys are files
    enroll_map: str = ""  # the file `models` came from


def load_trials(path: str | Path, root: str | Path) -> TrialFiles:
    """A trial list of any format, every file it names found under `root` (module docstring); an error names
    the file (and line) of the first problem."""
    listing = read_listing(path)
    if listing.format != "cnceleb":
        return TrialFiles(listing.trials, trial_paths(listing.trials, root, path), {})
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such corpus folder")
    eval_dir, data_dir = cnceleb_folders(root)
    map_path = Path(path).parent / ENROLL_MAP
    if not map_path.is_file():
        raise UserError(f"{path}: a CN-Celeb trial list ({FORMATS['cnceleb'][1]}) needs its enrolment map "
                        f"{map_path} ('<enroll_id> <utt> [<utt> ...]')")
    models, files = read_enroll_map(map_path, data_dir)
    for trial, n in zip(listing.trials, listing.lines):
        if trial.enroll not in models:
            raise UserError(f"{path}:{n}: enrolment id '{trial.enroll}' is not in {map_path}")
    files.update(_test_files(Path(path), listing, eval_dir, files))
    return TrialFiles(listing.trials, files, models, str(map_path))


def cnceleb_folders(root: Path) -> tuple[Path, Path]:
    """(test folder, enrolment folder) of a CN-Celeb tree given as its root or as its eval/ folder."""
    if (root / "eval").is_dir():
        return root / "eval", root / "data"
    return root, (root.parent / "data" if (root.parent / "data").is_dir() else root)


def read_enroll_map(path: Path, data_dir: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(model id -> utterance keys, utterance key -> file) of an enroll.map whose files are under data_dir."""
    models: dict[str, tuple[str, ...]] = {}
    files: dict[str, str] = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise UserError(f"{path}:{n}: expected '<enroll_id> <utt> [<utt> ...]', got {line!r}")
        if parts[0] in models:
            raise UserError(f"{path}:{n}: enrolment id '{parts[0]}' appears twice")
        for utt in parts[1:]:
            found = files.get(utt) or find_audio(data_dir, utt)
            if found is None:
                raise UserError(f"{path}:{n}: {utt}: no such audio file under {data_dir}")
            files[utt] = found
        models[parts[0]] = tuple(parts[1:])
    if not models:
        raise UserError(f"{path}: no enrolment models")
    return models, files


def _test_files(path: Path, listing: Listing, eval_dir: Path, enroll_files: dict[str, str]) -> dict[str, str]:
    tests = {}
    for trial, n in zip(listing.trials, listing.lines):
        if trial.test in tests:
            continue
        found = find_audio(eval_dir, trial.test)
        if found is None:
            raise UserError(f"{path}:{n}: {trial.test}: no such audio file under {eval_dir}")
        if enroll_files.get(trial.test, found) != found:
            raise UserError(f"{path}:{n}: {trial.test}: names {found} here but {enroll_files[trial.test]} in "
                            f"{ENROLL_MAP}")
        tests[trial.test] = found
    return tests
