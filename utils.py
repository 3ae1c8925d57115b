"""Shared helpers: user-facing errors, atomic writes, device and precision choice, seeding, the allocator
setting, and the verification metrics (EER, minDCF) that every script reports."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("voiceprint")


# --- errors ---------------------------------------------------------------------------------------------

class UserError(Exception):
    """A problem with the user's input (file, config, data). Scripts print it as one line and exit 2."""


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's main; a UserError becomes a one-line message instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except UserError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# --- files ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`, so a reader
    (or a kill at any moment) sees either the old file or the complete new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_table_row(path: Path, columns: list[str], row: dict[str, object]) -> None:
    """Append one row to a Markdown table shared by many runs (header written when the file is new). One
    write() under an exclusive lock: concurrent runs never interleave or rewrite each other's rows."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "| " + " | ".join(str(row.get(c, "")) for c in columns) + " |\n"
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        header = "" if f.read(1) else ("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        f.write(header + line)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict:
    """Checkpoints are data, not code: loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, not where in torch it broke
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None


# --- machine --------------------------------------------------------------------------------------------

def configure_malloc() -> bool:
    """Keep freed memory in the process (glibc): no mmap for large blocks, no trimming of the heap.

    A training step frees and reallocates the same few hundred MB of activations. With glibc's defaults
    the large blocks are mmapped and returned to the system on free, and every step page-faults them in
    again: measured here, an ECAPA-TDNN CPU step took 2.6-3.6 s instead of 1.4 s. Equivalent to
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>. Forked DataLoader workers inherit it. Returns
    whether it was applied (False off glibc, or when the user set either variable themselves).
    """
    if platform.system() != "Linux" or "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_max, 0) == 1
    ok &= libc.mallopt(m_trim_threshold, 2**31 - 1) == 1  # the largest value mallopt takes (an int)
    return bool(ok)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but no CUDA device is available here")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the processor computes bf16 in hardware (x86 AVX512-BF16 / AMX, Arm BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' picks the fastest precision that keeps accuracy on this device: bf16 autocast on CUDA
    devices that support it (fp16 otherwise) and on CPUs with native bf16; fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision bf16 is not supported by this CUDA device; use fp16 or fp32")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch RNG states as weights_only-loadable data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, *rest = state["python"]
    random.setstate((version, tuple(keys), *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- metrics --------------------------------------------------------------------------------------------
#
# A trial is accepted when its score >= threshold. For every distinct score taken as the threshold (plus
# +inf, accepting nothing) one sorted pass gives the miss rate P_miss (targets rejected) and the false-alarm
# rate P_fa (non-targets accepted); ties are one operating point, never split.
#
# EER: the point where P_miss = P_fa on the ROC drawn by straight lines between those operating points
# (the same curve as scikit-learn's roc_curve with linear interpolation). A fraction, not a percent.
#
# minDCF (NIST SRE 2008-2019 evaluation plans): C_det(t) = C_miss P_miss(t) P_target + C_fa P_fa(t) (1 - P_target),
# normalised by C_default = min(C_miss P_target, C_fa (1 - P_target)), minimised over the thresholds.

@dataclass(frozen=True)
class OperatingPoints:
    thresholds: np.ndarray  # (K,), decreasing, thresholds[0] = +inf
    p_miss: np.ndarray  # (K,), non-increasing
    p_fa: np.ndarray  # (K,), non-decreasing


def operating_points(scores: np.ndarray, labels: np.ndarray) -> OperatingPoints:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    num_target = int(labels.sum())
    num_nontarget = labels.size - num_target
    if num_target == 0 or num_nontarget == 0:
        raise ValueError(f"need target and non-target trials, got {num_target} and {num_nontarget}")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    hits = np.cumsum(labels[order])
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    accepted_targets = np.r_[0, hits[last_of_tie]]
    accepted_nontargets = np.r_[0, last_of_tie + 1 - hits[last_of_tie]]
    return OperatingPoints(
        thresholds=np.r_[np.inf, sorted_scores[last_of_tie]],
        p_miss=1.0 - accepted_targets / num_target,
        p_fa=accepted_nontargets / num_nontarget,
    )


@dataclass(frozen=True)
class EER:
    eer: float  # fraction in [0, 1]
    threshold: float  # the score at which P_miss = P_fa, interpolated between operating points


def eer_from_points(points: OperatingPoints) -> EER:
    gap = points.p_miss - points.p_fa  # decreasing from 1 to -1 over the points
    i = int(np.argmax(gap <= 0))  # first point at or past the crossing (i >= 1: gap[0] = 1)
    a = gap[i - 1] / (gap[i - 1] - gap[i])  # fraction of the segment (i-1, i) where the gap is zero
    eer = points.p_fa[i - 1] + a * (points.p_fa[i] - points.p_fa[i - 1])
    lo, hi = points.thresholds[i], points.thresholds[i - 1]
    threshold = lo if not np.isfinite(hi) else hi + a * (lo - hi)
    return EER(float(eer), float(threshold))


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> EER:
    return eer_from_points(operating_points(scores, labels))


@dataclass(frozen=True)
class MinDCF:
    min_dcf: float  # normalised, in [0, 1]
    threshold: float
    p_target: float


def min_dcf_from_points(points: OperatingPoints, p_target: float, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> MinDCF:
    dcf = c_miss * points.p_miss * p_target + c_fa * points.p_fa * (1.0 - p_target)
    i = int(np.argmin(dcf))
    return MinDCF(float(dcf[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))),
                  float(points.thresholds[i]), p_target)


def compute_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0,
                    c_fa: float = 1.0) -> MinDCF:
    return min_dcf_from_points(operating_points(scores, labels), p_target, c_miss, c_fa)
