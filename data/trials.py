"""Trial lists: reading VoxCeleb- or Kaldi-format trials and mapping their utterance keys to files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.corpus import scan_kaldi
from utils import UserError


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
        known = {u.key: u.path for u in scan_kaldi(root)}
        paths = {k: known.get(k, "") for k in keys}
    else:
        paths = {k: str(root / k) for k in keys}
    missing = [k for k, p in paths.items() if not p or not Path(p).is_file()]
    if missing:
        raise UserError(f"{trials_path}: {len(missing)} of {len(keys)} trial files are not in {root}, "
                        f"first: {missing[0]}")
    return paths
