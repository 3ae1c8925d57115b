"""Shared machinery: user-facing errors, atomic writes, Markdown tables, checkpoint loading, device and
precision choice, the allocator setting, seeding. The verification metrics are in metrics.py."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import logging
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("voiceprint")


# --- errors ---------------------------------------------------------------------------------------------

class UserError(Exception):
    """A problem with the user's input (file, config, data). Scripts print it as one line and exit 2."""

    def __init__(self, message: object = "") -> None:
        super().__init__(_from_worker(type(self), str(message)))


_WORKER_MESSAGE = re.compile(r"Caught \w+ in [^\n]+\.\nOriginal Traceback")


def _from_worker(kind: type, message: str) -> str:
    """A DataLoader re-raises a worker's exception in the main process as `kind(<its worker's traceback>)`
    (torch's ExceptionWrapper): keep the one line the worker raised, the traceback's last line without its
    `module.Class: ` prefix."""
    if not _WORKER_MESSAGE.match(message):
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    return last.split(f"{kind.__qualname__}: ", 1)[-1]


ONCE = {"once": True}  # log.warning(..., extra=ONCE): a warning a script shows once, however often it recurs


class OncePerProcess(logging.Filter):
    """Passes a record logged with extra=ONCE the first time its text is seen, and drops it after: a silent or
    short file is named once, not again at every epoch's validation. run_main installs one on the voiceprint
    logger, so a script owns this policy; a library caller (api.py) gets every warning, as it configures its
    own logging. Other records pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "once", False):
            return True
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's main; a UserError becomes a one-line message instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not any(isinstance(f, OncePerProcess) for f in log.filters):
        log.addFilter(OncePerProcess())
    try:
        main(argv)
    except UserError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# --- files ----------------------------------------------------------------------------------------------
#
# Every file a script writes goes through atomic_path: a temporary `.<name>.<host>-<pid>.<random>.tmp` beside
# the target, renamed over it when complete. A failed write (disk full, read-only, no permission) is a
# one-line UserError naming the target, with the temporary removed; a killed process leaves its temporary
# behind, and remove_stale_temps clears those of processes that are gone (train.py on every start and resume,
# data.prepare, the corpus index and the embedding cache before they write).

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", platform.node())[:32]
_STARTED = time.time()  # temporaries of this pid older than this are a former process's (pids get reused)
_RANDOM_PART = re.compile(r"[a-z0-9_]{8}")  # what mkstemp puts between the prefix and the suffix
FOREIGN_TEMP_SECONDS = 86400  # another host's (or an older version's) temporary: removed after a day


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`, so a reader
    (or a kill at any moment) sees either the old file or the complete new one, never a torn one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err, tmp) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_error(path: Path, err: OSError, tmp: str = "") -> UserError:
    """The one-line error of a failed write of `path` (or of the other file `err` names, e.g. a copy's
    source): 'no space left on device' with the free space, or the system's reason."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):  # (shutil's copy names the source in err.filename)
        free = shutil.disk_usage(Path(path).parent).free if Path(path).parent.is_dir() else 0
        return UserError(f"{path}: no space left on device ({free / 2**20:.1f} MiB free in {Path(path).parent}); "
                         f"free some space and run again (--resume continues a training run)")
    if err.filename and str(err.filename) not in (tmp, str(path)):  # e.g. a copy's source
        return UserError(f"{err.filename}: {err.strerror or err} (writing {path})")
    return UserError(f"{path}: cannot write ({err.strerror or err})")


def _temp_is_stale(path: Path) -> bool:
    parts = path.name.split(".")  # "", <target name parts>, [<host>-<pid>], <8 random characters>, "tmp"
    if len(parts) < 4 or parts[0] or parts[-1] != "tmp" or not _RANDOM_PART.fullmatch(parts[-2]):
        return False
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    host, _, pid = parts[-3].rpartition("-")
    if len(parts) < 5 or host != _HOST or not pid.isdigit():  # another host's, or an older version's name
        return time.time() - mtime > FOREIGN_TEMP_SECONDS
    if int(pid) == os.getpid():
        return mtime < _STARTED
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temps(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove the temporaries (atomic_path's) of killed writes under `folder`: those of processes of this host
    that are no longer running, and any other older than FOREIGN_TEMP_SECONDS. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for parent, _, names in os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]:
        for name in names:
            path = Path(parent) / name
            if name.endswith(".tmp") and name.startswith(".") and _temp_is_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    if removed:
        log.info("%s: removed %d temporary file(s) of interrupted writes", folder, len(removed))
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save through memory: a failed file write is then an OSError (disk full: 'no space left on
    device'), not torch's 'enforce fail at inline_container.cc ... unexpected pos'."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def read_text(path: str | Path) -> str:
    """A text file as UTF-8; an unreadable or non-UTF-8 file is a one-line error naming its line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[err.start:err.start + 1]!r}); save it as "
                        f"UTF-8") from None


def _markdown_line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |\n"


def markdown_header(columns: Sequence[str]) -> str:
    """The header of a Markdown table: the column names, then the separator line."""
    return _markdown_line(columns) + "|" + "---|" * len(columns) + "\n"


def markdown_row(columns: Sequence[str], row: dict[str, object]) -> str:
    """One line of a Markdown table: the row's value for each column, empty where it has none."""
    return _markdown_line([row.get(c, "") for c in columns])


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> str:
    return markdown_header(columns) + "".join(markdown_row(columns, row) for row in rows)


def append_table_row(path: Path, columns: list[str], row: dict[str, object]) -> None:
    """Append one row to a Markdown table shared by many runs (header written when the file is new). One
    write() under an exclusive lock: concurrent runs never interleave or rewrite each other's rows."""
    import fcntl

    path = Path(path)
    data = markdown_row(columns, row).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as err:
        raise write_error(path, err) from None
    size = -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        data = (b"" if size else markdown_header(columns).encode()) + data
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as err:
        if size >= 0:
            os.ftruncate(fd, size)  # no half row left behind
        raise write_error(path, err) from None
    finally:
        os.close(fd)


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
    """True where the processor computes bf16 in hardware (x86 AVX512-BF16 / AMX, Arm BF16) and torch has
    oneDNN to use it: without both, bf16 convolutions are emulated and slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on CUDA devices that compute bf16 in hardware (compute capability >= 8.0, and ROCm). Not
    torch.cuda.is_bf16_supported(): by default it also says True where bf16 is only emulated (e.g. V100, T4),
    where bf16 is several times slower than fp16."""
    if torch.version.hip:
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_properties(device).major >= 8


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision to run at: 'fp32', 'bf16' or 'fp16' (autocast; fp16 with a gradient scaler in training).

    'auto' picks the fastest one that keeps accuracy on this device: on CUDA, bf16 where the GPU has it in
    hardware, fp16 elsewhere; on the CPU, bf16 where the processor has native bf16 (measured on a 2-core
    Zen 4 with AVX512-BF16: ECAPA-TDNN C=512 training step and embedding extraction ~1.8x faster than fp32;
    embeddings within cosine 0.99998 of fp32's, demo test EER within 0.04 points), fp32 elsewhere; fp32 on
    any other device type. An explicit choice is checked: fp16 needs CUDA (the CPU's fp16 is emulated), bf16
    on CUDA needs a device that supports it at all (emulated bf16 included: it is what was asked for).
    """
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision '{name}'; choose one of: auto, fp32, bf16, fp16")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision bf16 is not supported by this CUDA device; use fp16 or fp32")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32). Wrap the model and the head only:
    the front end and the head compute in float32 inside it anyway, and the pooling's statistics too."""
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
