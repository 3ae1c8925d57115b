"""Run folders and checkpoints: where a run lives, how its checkpoints are saved, found and loaded.

A run folder exp_dir/<name>/ holds config.yaml, train_list.jsonl, log.csv, results.json and
checkpoints/epoch_NNNN.pt (the last `keep_checkpoints` kept), checkpoints/best.pt and, with
`checkpoint_every`, mid-epoch checkpoints epoch_NNNN-step_SSSSSS.pt (SSSSSS optimizer steps into epoch NNNN:
the name sorts after the previous epoch's file and before its own). A checkpoint is a dict
of plain data (weights, optimizer state, config, speaker list, log, RNG states): it is loaded with
`torch.load(..., weights_only=True)`, never unpickled as code.

Every checkpoint carries `schema`, the version of its layout. `load_checkpoint` upgrades an older layout in
memory (MIGRATIONS, one step per version) and refuses a newer one, so renaming a config key or a state entry
is one migration, not every old checkpoint made unloadable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from config import Config, build_config
from loss import head_from_config
from models import model_from_config
from utils import UserError, atomic_path, atomic_torch_save

SCHEMA = 5  # the checkpoint layout this code writes


def _from_schema_1(state: dict) -> dict:
    """Schema 1 (no `schema` entry; written before 2026-11-29) lacks `best_epoch`, the epoch best.pt holds:
    the log's epoch of lowest validation EER (its first, as training kept the first of equal ones), or the
    last epoch when the run had no validation."""
    rows = state.get("log", [])
    scored = [(float(r["val_eer"]), int(r["epoch"])) for r in rows if r.get("val_eer")]
    best = min(scored, key=lambda x: x[0])[1] if scored else int(state.get("epoch", 0))
    return {**state, "best_epoch": best}


def _from_schema_2(state: dict) -> dict:
    """Schema 2 (before mid-epoch checkpoints) lacks `mid_epoch`: every checkpoint was taken at an epoch's end,
    which schema 3 writes as `mid_epoch: None`."""
    return {**state, "mid_epoch": None}


def _from_schema_3(state: dict) -> dict:
    """Schema 3 (before the model option `stats_variance`) pooled with the population variance: its config
    says so, whatever the default becomes."""
    return {**state, "config": {"stats_variance": "population", **state["config"]}}


def _from_schema_4(state: dict) -> dict:
    """Schema 4 (before in-training filtering) lacks `loss_record`, each training utterance's latest loss:
    an empty one (None), which a run resumed with --filter-share starts from (nothing left out until its
    utterances have losses again)."""
    return {**state, "loss_record": None}


# version -> its upgrade to version + 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_schema_1, 2: _from_schema_2, 3: _from_schema_3,
                                                 4: _from_schema_4}


def migrate(state: dict, source: Path) -> dict:
    version = int(state.get("schema", 1))
    if version > SCHEMA:
        raise UserError(f"{source}: checkpoint schema {version} was written by a newer voiceprint (this one reads "
                        f"up to {SCHEMA}); update the code")
    while version < SCHEMA:
        state = {**MIGRATIONS[version](state), "schema": version + 1}
        version += 1
    return state


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint as data (weights_only=True), upgraded to the current schema."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, not where in torch it broke
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or not {"model", "config", "speakers"} <= set(state):
        raise UserError(f"{path}: not a voiceprint checkpoint (no model, config and speaker list)")
    check_finite_weights(state, path)
    return migrate(state, path)


def check_finite_weights(state: dict, source: Path) -> None:
    """NaN or infinite weights (a diverged training, a damaged file) are an error, not NaN scores later."""
    for part in ("model", "head"):
        for key, value in state.get(part, {}).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise UserError(f"{source}: weights hold NaN or infinite values ({part} {key}): the training "
                                f"diverged or the file is damaged")


def checkpoint_name(state: dict) -> str:
    """epoch_NNNN.pt after epoch NNNN; epoch_NNNN-step_SSSSSS.pt SSSSSS optimizer steps into epoch NNNN (whose
    `epoch` entry counts the epochs completed before it: NNNN - 1)."""
    mid = state.get("mid_epoch")
    return f"epoch_{state['epoch'] + 1:04d}-step_{mid['step']:06d}.pt" if mid else f"epoch_{state['epoch']:04d}.pt"


def save_checkpoint(run: Path, state: dict, keep: int, is_best: bool) -> Path:
    """The checkpoint under `checkpoint_name` (atomically), linked as best.pt when `is_best` (link_best),
    then, unless keep is 0 (keep everything): all but the newest `keep` epoch files removed, and every
    mid-epoch file but this one (an epoch's end supersedes them all). Returns the file written."""
    folder = run / "checkpoints"
    path = folder / checkpoint_name(state)
    atomic_torch_save({**state, "schema": SCHEMA}, path)
    if is_best:
        link_best(path)
    if keep > 0:
        for old in [*epoch_checkpoints(run)[:-keep], *mid_epoch_checkpoints(run)]:
            if old != path:
                old.unlink()
    return path


def link_best(checkpoint: Path) -> None:
    """checkpoints/best.pt as the same file as `checkpoint`, atomically: a hard link (no second write of the
    checkpoint; a checkpoint file is only ever replaced, never written in place, so the two names cannot
    diverge, and removing the epoch file leaves best.pt whole), or a copy where the file system has none."""
    with atomic_path(checkpoint.parent / "best.pt") as tmp:
        tmp.unlink()
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)


def restore_best(run: Path, state: dict) -> None:
    """Make checkpoints/best.pt hold the state's best_epoch again after a kill inside save_checkpoint: when the
    latest epoch (`state`'s) was the best, the kill may have come before or during its link to best.pt, so the
    link is redone; an older best epoch finished its link before the next epoch began (best.pt is linked
    again only if it is gone)."""
    best_epoch = int(state.get("best_epoch", 0))
    source = run / "checkpoints" / f"epoch_{best_epoch:04d}.pt"
    best = run / "checkpoints" / "best.pt"
    if best_epoch and source.is_file() and (best_epoch == int(state["epoch"]) or not best.is_file()):
        link_best(source)


def average_checkpoints(run: Path, last: int) -> Path:
    """checkpoints/avg_last_N.pt, written atomically: the element-wise mean of the model and head weights of the
    run's last N epoch checkpoints (checkpoint averaging as in wespeaker's average_model.py; the BatchNorm
    running statistics are averaged too, its integer step counters taken from the newest). The rest is the
    newest checkpoint's, less its optimizer, scaler and RNG state (an average resumes nothing), plus
    `averaged_epochs`. A checkpoint like any other for load_trained, inference.py and --init-from."""
    paths = epoch_checkpoints(run)[-last:]
    if len(paths) < last:
        raise UserError(f"{run / 'checkpoints'}: average_last {last} needs {last} epoch checkpoints, found "
                        f"{len(paths)} (keep_checkpoints must be >= average_last, or 0)")
    sums: dict[str, dict[str, torch.Tensor]] = {}
    epochs = []
    for path in paths:
        state = load_checkpoint(path)
        epochs.append(int(state["epoch"]))
        for part in ("model", "head"):
            part_sums = sums.setdefault(part, {})
            for key, value in state[part].items():
                part_sums[key] = part_sums.get(key, 0) + value.double() if value.is_floating_point() else value
    averaged = {part: {k: (v / last).to(state[part][k].dtype) if v.is_floating_point() else v
                       for k, v in weights.items()} for part, weights in sums.items()}
    rest = {k: v for k, v in state.items() if k not in ("optimizer", "scaler", "rng")}
    out = run / "checkpoints" / f"avg_last_{last}.pt"
    atomic_torch_save({**rest, **averaged, "averaged_epochs": epochs, "schema": SCHEMA}, out)
    return out


# --- finding runs and checkpoints -------------------------------------------------------------------------

def new_run_dir(cfg: Config) -> Path:
    """exp_dir/<name>, or exp_dir/<model>-<date>-<time> when no name is given."""
    return Path(cfg.exp_dir) / (cfg.name or f"{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}")


def epoch_checkpoints(run: Path) -> list[Path]:
    """The end-of-epoch checkpoints, oldest first."""
    return sorted(p for p in (run / "checkpoints").glob("epoch_*.pt") if "-step_" not in p.name)


def mid_epoch_checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("epoch_*-step_*.pt"))


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint to resume from, an epoch's end or within an epoch (their names sort in order)."""
    found = sorted((run / "checkpoints").glob("epoch_*.pt"))
    return found[-1] if found else None


def newest_run(exp_root: str | Path, pattern: str) -> Path | None:
    """The run under exp_root whose newest file matching <run>/checkpoints/<pattern> is the most recent."""
    runs = {p.parent.parent for p in Path(exp_root).glob(f"*/checkpoints/{pattern}")}
    if not runs:
        return None
    return max(runs, key=lambda run: max(p.stat().st_mtime for p in (run / "checkpoints").glob(pattern)))


def find_resumable(exp_root: str | Path, name: str) -> Path:
    """The run named `name`, or the newest run with an epoch checkpoint."""
    if name:
        run = Path(exp_root) / name
        if latest_checkpoint(run) is None:
            raise UserError(f"{run}: no checkpoint to resume from")
        return run
    run = newest_run(exp_root, "epoch_*.pt")
    if run is None:
        raise UserError(f"--resume: no run with a checkpoint under {exp_root}/")
    return run


def find_checkpoint(spec: str, exp_root: str | Path) -> Path:
    """A checkpoint file, a run folder (its best.pt, else its newest epoch), or '' = the newest run under
    exp_root."""
    if spec and Path(spec).is_file():
        return Path(spec)
    if spec and not Path(spec).is_dir():
        raise UserError(f"{spec}: no such checkpoint file or experiment folder")
    run = Path(spec) if spec else newest_run(exp_root, "*.pt")
    if run is None:
        raise UserError(f"no trained experiment under {exp_root}/; run python train.py first")
    best = run / "checkpoints" / "best.pt"
    found = best if best.is_file() else latest_checkpoint(run)
    if found is None:
        raise UserError(f"{run}: no checkpoints in {run / 'checkpoints'}")
    return found


def run_dir(checkpoint: Path) -> Path:
    """The run folder of a checkpoint: <run> for <run>/checkpoints/x.pt, else the file's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


# --- a trained model -------------------------------------------------------------------------------------

@dataclass
class Trained:
    """Everything a checkpoint rebuilds."""
    cfg: Config
    model: nn.Module
    head: nn.Module
    speakers: list[str]
    path: Path
    epoch: int


def load_trained(path: str | Path) -> Trained:
    """The model and head of a checkpoint (eval mode, CPU), rebuilt from its own config and speaker list."""
    state = load_checkpoint(path)
    cfg = build_config({}, base=state["config"])
    model = model_from_config(cfg)
    head = head_from_config(cfg, model.embed_dim, len(state["speakers"]))
    try:
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the {cfg.model} its config describes "
                        f"({str(err).splitlines()[0]})") from None
    return Trained(cfg, model.eval(), head.eval(), list(state["speakers"]), Path(path), int(state["epoch"]))
