"""Every bad input and fault: a one-line error naming the file or flag and the problem (exit 2), or a correct
result with a warning naming the file; never a traceback, and nothing half-written or overwritten.

CASES is the table: one row per input class (audio, corpora, trial lists, configs, checkpoints, file-system
faults), each the real script run as a process on a bad input built by the row's setup function. The next
class is one more row. After the table: a full disk (a small tmpfs, skipped where mounting is not allowed) and
kills inside every atomic write of a run, each resumed to bit-identical weights.

    python -m tests.test_errors KILL_AT SCRIPT ARGS...    (used by the kill test) SCRIPT, SIGKILLed at a write
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data.audio import AudioError, audio_info, load_audio
from data.corpus import load_index, save_index
from tests.conftest import subprocess_env, tiny_train_args
from utils import UserError, append_table_row, atomic_torch_save, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")  # utils.run_main's logging format


# --- the inputs ------------------------------------------------------------------------------------------

class Inputs:
    """Builds one case's inputs under `tmp` from the session's tiny corpus and a trained model (neither is
    changed: what a case alters is a copy)."""

    def __init__(self, tmp: Path, corpus: Path, model: Path):
        self.tmp, self.corpus, self.model = tmp, corpus, model

    def wav(self, name: str, x: np.ndarray, rate: int = RATE, subtype: str | None = None) -> str:
        sf.write(self.tmp / name, x, rate, subtype=subtype)
        return str(self.tmp / name)

    def npy(self, name: str, x: np.ndarray) -> str:
        np.save(self.tmp / name, x)
        return str(self.tmp / name)

    def file(self, name: str, data: bytes) -> str:
        (self.tmp / name).write_bytes(data)
        return str(self.tmp / name)

    def speech(self) -> np.ndarray:
        """A real utterance of the corpus, float32 (N,)."""
        return sf.read(self.test_files()[0], dtype="float32")[0]

    def test_files(self) -> list[str]:
        return sorted(str(p) for p in (self.corpus / "test/wav").rglob("*.wav"))

    def pair(self, test: str, enroll: str = "") -> list[str]:
        """inference.py pair mode: `test` against a good enrolment file (or `enroll`)."""
        return ["inference.py", "--checkpoint", str(self.model), "--threads", "1", "--enroll",
                enroll or self.test_files()[0], "--test", test]

    def evaluate(self, trials: str | Path, test_data: str | Path | None = None) -> list[str]:
        return ["inference.py", "--checkpoint", str(self.model), "--threads", "1", "--bootstrap", "0",
                "--test-trials", str(trials), "--test-data", str(test_data or self.corpus / "test/wav")]

    def train(self, *extra: str) -> list[str]:
        """One tiny epoch, no validation or test (flags given later override these)."""
        return ["train.py", *tiny_train_args(self.corpus, self.tmp / "exp", "run", "--epochs", "1",
                                             "--val-trials", "", "--test-trials", *extra)]

    def copy(self, part: str) -> Path:
        """A copy of a split's audio folder (train/wav, test/wav) to alter."""
        dst = self.tmp / part.replace("/", "_")
        shutil.copytree(self.corpus / part, dst, ignore=shutil.ignore_patterns(".voiceprint_index*"))
        return dst

    def kaldi(self, wav_scp: list[str], utt2spk: list[str]) -> Path:
        root = self.tmp / "kaldi"
        root.mkdir()
        (root / "wav.scp").write_text("".join(line + "\n" for line in wav_scp))
        (root / "utt2spk").write_text("".join(line + "\n" for line in utt2spk))
        return root

    def kaldi_lines(self) -> tuple[list[str], list[str]]:
        files = sorted((self.corpus / "train/wav").rglob("*.wav"))
        return ([f"u{i} {f}" for i, f in enumerate(files)], [f"u{i} {f.parts[-3]}" for i, f in enumerate(files)])

    def checkpoint(self, name: str, change: Callable[[dict], None]) -> list[str]:
        state = torch.load(self.model, weights_only=True)
        change(state)
        torch.save(state, self.tmp / name)
        return ["inference.py", "--checkpoint", str(self.tmp / name), "--threads", "1", "--enroll",
                self.test_files()[0], "--test", self.test_files()[1]]


def _nan_weight(state: dict) -> None:
    state["model"][next(k for k, v in state["model"].items() if v.is_floating_point())].view(-1)[0] = float("nan")


def _as_resnet(state: dict) -> None:
    state["config"]["model"] = "resnet18"


def _stale_index(i: Inputs) -> list[str]:
    """A corpus whose index was cached, then one file rewritten in place (shorter): the folder times, all the
    cache checks, do not change."""
    train = i.copy("train/wav")
    for folder in [train, *(p for p in train.rglob("*") if p.is_dir())]:
        os.utime(folder, (time.time() - 60, time.time() - 60))  # older than the cache's 2 s racy window
    load_index(train, RATE)
    assert (train / f".voiceprint_index.{RATE}.tsv").is_file()
    for path in sorted(train.rglob("*.wav")):
        x, rate = sf.read(path, dtype="int16")
        sf.write(path, x[: len(x) // 2], rate)
    return i.train("--train-data", str(train))


def _nan_corpus(i: Inputs) -> list[str]:
    train = i.copy("train/wav")
    for path in sorted(train.rglob("*.wav")):
        x, rate = sf.read(path, dtype="float32")
        sf.write(path, np.full_like(x, np.nan), rate, subtype="FLOAT")  # every sample: every crop meets one
    return i.train("--train-data", str(train), "--num-workers", "2")


def _nan_test_file(i: Inputs) -> list[str]:
    test = i.copy("test/wav")
    path = sorted(test.rglob("*.wav"))[2]
    x, rate = sf.read(path, dtype="float32")
    x[100] = np.inf
    sf.write(path, x, rate, subtype="FLOAT")
    return i.evaluate(i.corpus / "test/trials.txt", test)


def _non_utf8_trials(i: Inputs) -> list[str]:
    lines = (i.corpus / "test/trials.txt").read_bytes().splitlines(keepends=True)
    (i.tmp / "trials.txt").write_bytes(b"".join(lines[:2]) + b"1 caf\xe9.wav x.wav\n" + b"".join(lines[2:]))
    return i.evaluate(i.tmp / "trials.txt")


def _duplicate_wav_scp(i: Inputs) -> list[str]:
    scp, spk = i.kaldi_lines()
    scp.insert(2, scp[0].split()[0] + " " + scp[5].split()[1])  # u0 again, with another file
    return i.train("--train-data", str(i.kaldi(scp, spk)))


def _duplicate_utt2spk(i: Inputs) -> list[str]:
    scp, spk = i.kaldi_lines()
    spk.append("u3 " + spk[-1].split()[1])
    return i.train("--train-data", str(i.kaldi(scp, spk)))


def _non_utf8_wav_scp(i: Inputs) -> list[str]:
    scp, spk = i.kaldi_lines()
    root = i.kaldi(scp, spk)
    (root / "wav.scp").write_bytes((root / "wav.scp").read_bytes().replace(b"\nu1 ", b"\nu\xff1 ", 1))
    return i.train("--train-data", str(root))


def _prepare_nan(i: Inputs) -> list[str]:
    src = i.copy("test/wav")
    path = sorted(src.rglob("*.wav"))[4]
    x, rate = sf.read(path, dtype="float32")
    sf.write(path, np.full_like(x, np.nan), rate, subtype="FLOAT")
    return ["-m", "data.prepare", str(src), str(i.tmp / "npy"), "--workers", "1"]


def _prepare_into_file(i: Inputs) -> list[str]:
    (i.tmp / "out.npy").write_bytes(b"precious")
    return ["-m", "data.prepare", str(i.corpus / "test/wav"), str(i.tmp / "out.npy")]


def _sort_source(i: Inputs, checkpoint: bool = True, rename: str = "") -> Path:
    """A train_sort source run: the model's best.pt (unless not) and the training list it was trained on (with
    `rename`, that speaker under another name)."""
    src = i.tmp / "src"
    (src / "checkpoints").mkdir(parents=True)
    if checkpoint:
        shutil.copy(i.model, src / "checkpoints/best.pt")
    utts = [u if u.speaker != rename else dataclasses.replace(u, speaker="zz")
            for u in load_index(i.corpus / "train/wav", RATE)]
    save_index(utts, src / "train_list.jsonl")
    return src


def _earlier_round(i: Inputs) -> Path:
    """A source, and round 1 of its `--keep 0 80` folder as an earlier run left it: an epoch checkpoint, its
    scores and a training list that this command's round 1 does not select (one utterance)."""
    src = _sort_source(i)
    round1 = src.parent / "exp/src-keep0-80-centroid/round1"
    (round1 / "checkpoints").mkdir(parents=True)
    shutil.copy(i.model, round1 / "checkpoints/epoch_0001.pt")
    (round1 / "utterance_scores.tsv").write_text("key\tspeaker\tscore\tkept\tlabel\n")
    save_index(load_index(i.corpus / "train/wav", RATE)[:1], round1 / "train_list.jsonl")
    return src


def _sort(src: Path, *extra: str) -> list[str]:
    return ["train_sort.py", "--from", str(src), "--exp-dir", str(src.parent / "exp"), "--threads", "1", *extra]


# --- the table ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str  # the input class and what is wrong with it
    setup: Callable[[Inputs], list[str]]  # builds the input under the case's folder; returns the command line
    message: str  # the one error line (or, with warns, a warning) holds this: the file or flag, and the problem
    warns: bool = False  # a usable input: exit 0, with a warning holding `message`
    absent: str = ""  # ...and the line must not hold this


CASES = [
    # audio, through pair mode: the file is named, whichever side it is on
    Case("wav: a NaN sample", lambda i: i.pair(i.wav("nan.wav", np.where(np.arange(16000) == 5, np.nan, 0.1),
                                                     subtype="FLOAT")),
         "nan.wav: holds NaN or infinite samples (the first at sample 5)"),
    Case("npy: an infinite sample, enrolment side",
         lambda i: i.pair(i.test_files()[1], enroll=i.npy("inf.npy", np.full(16000, np.inf, np.float32))),
         "inf.npy: holds NaN or infinite samples"),
    Case("npy: channels first (2, N)", lambda i: i.pair(i.npy("stereo.npy", np.stack([i.speech(), i.speech()]))),
         "stereo.npy: a .npy waveform has shape (samples,), not (2,"),
    Case("npy: int64 holding int16 values", lambda i: i.pair(i.npy("i64.npy", (i.speech() * 32767).astype(np.int64))),
         "i64.npy: a .npy waveform is int16, int32, float16, float32, float64"),
    Case("npy: a text file", lambda i: i.pair(i.file("text.npy", b"0.1 0.2\n")),
         "text.npy: not a .npy file (no NumPy header)", absent="pickle"),
    Case("wav: 8 kHz under a 16 kHz model", lambda i: i.pair(i.wav("8k.wav", i.speech()[::2], rate=8000)),
         "8k.wav: sample rate 8000 Hz is below the 16000 Hz the model works at", absent="--sample-rate"),
    Case("wav: all silent (usable, warned)", lambda i: i.pair(i.wav("silent.wav", np.zeros(16000))),
         "silent.wav: every sample is zero", warns=True),
    Case("wav: 10 ms (usable, warned)", lambda i: i.pair(i.wav("short.wav", i.speech()[:160])),
         "1 file(s) shorter than 0.1 s, wrap-padded to a usable length: " + "{tmp}/short.wav", warns=True),
    # corpora
    Case("corpus: an all-NaN file, read in a DataLoader worker", _nan_corpus, "holds NaN or infinite samples"),
    Case("corpus: a file rewritten after its index was cached", _stale_index, "the corpus index says"),
    Case("kaldi wav.scp: a repeated utterance id", _duplicate_wav_scp,
         "wav.scp:3: utterance id 'u0' again (first on line 1)"),
    Case("kaldi utt2spk: a repeated utterance id", _duplicate_utt2spk, "utt2spk:37: utterance id 'u3' again"),
    Case("kaldi wav.scp: not UTF-8", _non_utf8_wav_scp, "wav.scp:2: not UTF-8 text (byte b'\\xff')"),
    Case("prepare: a NaN file", _prepare_nan, "holds NaN or infinite samples"),
    Case("prepare: the destination is a file", _prepare_into_file, "out.npy: exists and is not a folder"),
    # trial lists
    Case("trial list: not UTF-8", _non_utf8_trials, "trials.txt:3: not UTF-8 text (byte b'\\xe9')"),
    Case("trial list: an infinite sample in one test file", _nan_test_file, "holds NaN or infinite samples"),
    Case("trial list: missing, found before training", lambda i: i.train("--test-trials", str(i.tmp / "no.txt")),
         "no.txt: no such trial list"),
    # configs
    Case("config: --lr inf", lambda i: i.train("--lr", "inf"), "lr: must be a finite number, got inf"),
    Case("training: diverges to NaN weights (--lr 1e30)", lambda i: i.train("--lr", "1e30"),
         "epoch 1: the weights became NaN or infinite (loss nan): the training diverged"),
    Case("config: --test-durations nan", lambda i: [*i.pair(i.test_files()[1]), "--test-durations", "nan"],
         "test_durations: must be a finite number"),
    Case("config: --spec-augment-prob 1.5", lambda i: i.train("--spec-augment-prob", "1.5"),
         "spec_augment_prob: a probability, must be in [0, 1], got 1.5"),
    Case("config: --cmn maybe", lambda i: i.train("--cmn", "maybe"),
         "--cmn: an on/off flag takes no value, got 'maybe'; write --cmn or --no-cmn"),
    Case("config: a YAML file not in UTF-8", lambda i: i.train("--config", i.file("c.yaml", b"lr: 0.1 # \xe9\n")),
         "c.yaml:1: not UTF-8 text"),
    # checkpoints
    Case("checkpoint: NaN weights", lambda i: i.checkpoint("nan.pt", _nan_weight),
         "nan.pt: weights hold NaN or infinite values (model "),
    Case("checkpoint: a resnet config over ECAPA weights", lambda i: i.checkpoint("mixed.pt", _as_resnet),
         "mixed.pt: weights do not fit the resnet18"),
    # train_sort's source run
    Case("train_sort: --action relabel, a source without a checkpoint",
         lambda i: _sort(_sort_source(i, checkpoint=False), "--action", "relabel"),
         "src: no checkpoint in {tmp}/src/checkpoints to score its training utterances with"),
    Case("train_sort: --sort-by subcenter, a source trained with aam",
         lambda i: _sort(_sort_source(i), "--sort-by", "subcenter"),
         "--sort-by subcenter: {tmp}/src was trained with --loss aam; sub-centres need"),
    Case("train_sort: --relabel-from all with --action drop", lambda i: _sort(_sort_source(i), "--relabel-from", "all"),
         "--relabel-from: --action drop relabels nothing; use --action relabel or auto"),
    Case("train_sort: --drop-unsure with --action drop", lambda i: _sort(_sort_source(i), "--drop-unsure"),
         "--drop-unsure: --action drop relabels nothing; use --action relabel or auto"),
    Case("train_sort: --drop-unsure with --oracle", lambda i: _sort(_sort_source(i), "--oracle", "relabel",
                                                                   "--drop-unsure"),
         "--drop-unsure: --oracle ignores the scores; give one or the other"),
    Case("train_sort: --cross-folds with --action drop", lambda i: _sort(_sort_source(i), "--cross-folds", "2"),
         "--cross-folds: --action drop relabels nothing; use --action relabel or auto"),
    Case("train_sort: --score-average 2, a source with no epoch checkpoint kept",
         lambda i: _sort(_sort_source(i), "--action", "relabel", "--score-average", "2"),
         "--score-average 2: {tmp}/src/checkpoints holds 0 epoch checkpoint(s); the run needs --keep-checkpoints 2"),
    Case("train_sort: --score-average with --oracle", lambda i: _sort(_sort_source(i), "--oracle", "drop",
                                                                       "--score-average", "3"),
         "--score-average: --oracle ignores the scores; give one or the other"),
    Case("train_sort: a round folder holding an earlier run, no --resume",
         lambda i: _sort(_earlier_round(i), "--keep", "0", "80"),
         "{tmp}/exp/src-keep0-80-centroid/round1: holds an earlier round; pass --resume"),
    Case("train_sort: --resume over a round trained on another list",
         lambda i: _sort(_earlier_round(i), "--keep", "0", "80", "--resume"),
         "round1: trained on another list than round 1 of this command selects"),
    Case("train_sort: a checkpoint trained on another speaker list",
         lambda i: _sort(_sort_source(i, rename="id00000")),
         "best.pt: its speaker list (6 classes) differs from {tmp}/src/train_list.jsonl's (6; first difference"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    """What a script printed besides its log lines: its error, and anything else that should not be there."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def run_script(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *(args if args[0] == "-m" else [str(ROOT / args[0]), *args[1:]])]
    return subprocess.run(command, cwd=cwd, env=subprocess_env(OMP_NUM_THREADS="1", **env), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory) -> Path:
    """The trained run's best.pt, alone in a run folder of its own (a case must not write there)."""
    run = tmp_path_factory.mktemp("model") / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints/best.pt", run / "checkpoints/best.pt")
    return run / "checkpoints/best.pt"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tiny_corpus, model, tmp_path):
    args = case.setup(Inputs(tmp_path, tiny_corpus, model))
    before, model_before = snapshot(tmp_path), snapshot(model.parent.parent)
    proc = run_script(args, tmp_path)
    script = "data.prepare" if args[0] == "-m" else args[0]
    message = case.message.replace("{tmp}", str(tmp_path))
    lines = error_lines(proc.stderr)
    if case.warns:
        assert proc.returncode == 0 and not lines, proc.stderr[-2000:]
        assert any(message in line for line in proc.stderr.splitlines() if " WARNING " in line), proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert len(lines) == 1, proc.stderr[-3000:]  # one line: no traceback, no worker dump
        assert lines[0].startswith(f"{'prepare.py' if script == 'data.prepare' else script}: error: ")
        assert message in lines[0], lines[0]
    assert not case.absent or case.absent not in proc.stderr
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing that was there changed
    assert not [k for k in after if k.endswith(".tmp")]  # nothing half-written
    assert snapshot(model.parent.parent) == model_before
    assert not (tmp_path / "exp/run/checkpoints").exists() and not (tmp_path / "exp/run/results.json").exists()


# --- the reader and the scripts' own checks ----------------------------------------------------------------

def test_missing_and_empty_and_unreadable_audio(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav", 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav: empty audio"):
        audio_info(tmp_path / "empty.wav", 16000)
    (tmp_path / "junk.wav").write_bytes(b"not a riff file at all")
    with pytest.raises(AudioError, match="junk.wav: cannot read audio"):
        load_audio(tmp_path / "junk.wav", 16000)
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(AudioError, match="junk.npy: not a .npy file"):
        load_audio(tmp_path / "junk.npy", 16000)


def test_low_sample_rate_is_rejected_high_is_resampled(tmp_path):
    sf.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.int16), 8000)
    with pytest.raises(AudioError, match="8k.wav: sample rate 8000 Hz is below the 16000 Hz the model works at"):
        load_audio(tmp_path / "8k.wav", 16000)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.float32)
    sf.write(tmp_path / "44k.wav", tone, 44100)
    wave = load_audio(tmp_path / "44k.wav", 16000)
    assert len(wave) == 16000 and audio_info(tmp_path / "44k.wav", 16000) == 16000
    assert abs(np.abs(wave).max() - 0.5) < 0.01


@pytest.mark.parametrize("args, message", [
    (["--train-data", "/nonexistent/corpus", "--val-trials", ""], "/nonexistent/corpus: no such corpus folder"),
    (["--epoch", "3"], "unknown flag '--epoch'; did you mean 'epochs'?"),
])
def test_train_script_prints_one_line(tmp_path, args, message):
    proc = run_script(["train.py", "--exp-dir", str(tmp_path), *args], tmp_path)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [f"train.py: error: {message}"]


def test_inference_without_experiment(tmp_path):
    proc = run_script(["inference.py", "--exp-dir", str(tmp_path / "none")], tmp_path)
    assert proc.returncode == 2 and "no trained experiment" in proc.stderr and "Traceback" not in proc.stderr


# --- file-system faults: a full disk -------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves `leave` bytes free on `disk`."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * (free - leave))  # written, not sparse: tmpfs counts what is stored
    return ballast


def test_disk_full_is_one_line_nothing_torn_and_the_run_resumes(tiny_corpus, trained_run, small_disk):
    """Room for 1.5 checkpoints: 2 epochs without validation write epoch_0001.pt, and epoch_0002.pt finds the
    disk full. Then every other kind of write on the full disk (torch.save, text, a row appended to
    results.md): one line each, nothing left behind. Then the run resumes. (best.pt, a hard link to its epoch's
    file, takes no room of its own.)"""
    size = (trained_run / "checkpoints/epoch_0001.pt").stat().st_size
    ballast = fill(small_disk, int(1.5 * size))
    args = tiny_train_args(tiny_corpus, small_disk, "run", "--val-trials", "", "--test-trials")
    proc = run_script(["train.py", *args], small_disk)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = error_lines(proc.stderr)
    best = small_disk / "run/checkpoints/best.pt"
    assert line.startswith(f"train.py: error: {small_disk}/run/checkpoints/epoch_0002.pt: no space left on device (")
    assert torch.load(small_disk / "run/checkpoints/epoch_0001.pt", weights_only=True)["epoch"] == 1  # intact
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    table = small_disk / "results.md"
    append_table_row(table, ["run"], {"run": "a"})
    writes = {"x.pt": lambda: atomic_torch_save(state, small_disk / "x.pt"),
              "log.csv": lambda: atomic_write_text(small_disk / "log.csv", "x" * size),
              "results.md": lambda: append_table_row(table, ["run"], {"run": "b" * size})}
    for name, write in writes.items():
        with pytest.raises(UserError, match=f"{name}: no space left on device"):
            write()
    assert table.read_text() == "| run |\n|---|\n| a |\n"  # no half row
    assert not list(small_disk.rglob("*.tmp")) and not (small_disk / "x.pt").exists()

    ballast.unlink()
    proc = run_script(["train.py", "--resume", "--exp-dir", str(small_disk), "--name", "run", "--threads", "1"],
                      small_disk)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["epoch"] for r in csv.DictReader(open(small_disk / "run/log.csv"))] == ["1", "2"]
    assert torch.load(best, weights_only=True)["epoch"] == 2
    assert json.loads((small_disk / "run/results.json").read_text())["epoch"] == 2
    assert not list(small_disk.rglob("*.tmp"))


# --- kills: inside every atomic write, every one resumed ------------------------------------------------------

# A tiny 3-epoch run with a final test (no validation: best.pt is written once, in the final epoch), killed
# with SIGKILL 20 times: inside each kind of atomic write it makes -- right before the rename, the temporary
# complete and the target old ("before"), or right after it ("after") -- and at seeded random optimizer steps
# of each epoch; each kill is followed by a restart (--resume once an epoch checkpoint exists). In the order a
# run reaches them, so that each is still ahead when its process starts (a count is of that process's own
# writes: a resumed process rewrites log.csv, and repairs best.pt, before it trains). 20 kills, 21 processes:
# ~80 s on a quiet 2-core machine.
STEPS_PER_EPOCH = 4  # the tiny corpus's, at batch 8
STEP = np.random.default_rng(15).integers(1, STEPS_PER_EPOCH + 1, size=3)  # a step of each epoch
KILLS = [
    ("config.yaml", 1, "before"),  # a fresh start: the run folder's first write
    (".voiceprint_index.*.tsv", 1, "before"),  # the corpus index cache
    ("train_list.jsonl", 1, "before"),
    ("step", int(STEP[0]), "before"),  # in epoch 1, before any checkpoint: a fresh start again
    ("epoch_0001.pt", 1, "before"),
    ("epoch_0001.pt", 1, "after"),  # the checkpoint complete, its log row not yet written
    ("log.csv", 1, "before"),  # a resumed process rewrites log.csv from its checkpoint first
    ("step", int(STEP[1]), "before"),  # in epoch 2
    ("epoch_0002.pt", 1, "before"),
    ("curves.png", 1, "before"),  # epoch 2's curves, after its checkpoint and log
    ("step", int(STEP[2]), "before"),  # in epoch 3
    ("epoch_0003.pt", 1, "before"),
    ("best.pt", 1, "before"),  # the final epoch's copy: the resume must rebuild best.pt from best_epoch
    ("best.pt", 1, "before"),  # ... and a kill inside that repair
    ("shard-*.npy", 1, "before"),  # the embedding cache of the final test (embedding.EmbeddingStore)
    ("shard-*.tsv", 1, "before"),  # its index, the shard's array written
    ("trials.txt", 1, "before"),  # the final test's score file (scores/trials.txt)
    ("results.json", 1, "before"),  # eval/results.json
    ("results.md", 1, "before"),  # eval/results.md (exp/results.md, the research log, is appended, not renamed)
    ("results.json", 2, "before"),  # the run's results.json
]
assert len(KILLS) == 20


def kill_at(spec: str) -> None:
    """SIGKILL this process (spec 'pattern:n:before|after') at the n-th os.replace onto a file named like
    `pattern` -- atomic_path's rename, the last step of every write the project makes -- or, for the pattern
    'step', at the n-th optimizer step."""
    pattern, n, when = spec.rsplit(":", 2)
    count = 0

    def due() -> bool:
        nonlocal count
        count += 1
        return count == int(n)

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if pattern == "step":
        for optimizer in (torch.optim.Adam, torch.optim.SGD):
            def step(self, *args, _step=optimizer.step, **kwargs):
                if due():
                    kill()
                return _step(self, *args, **kwargs)

            optimizer.step = step
        return
    real = os.replace

    def replace(src, dst, **kwargs):
        hit = fnmatch.fnmatch(Path(dst).name, pattern) and due()
        if hit and when == "before":
            kill()
        real(src, dst, **kwargs)
        if hit and when == "after":
            kill()

    os.replace = replace


def killed_run(spec: tuple[str, int, str] | None, args: list[str], cwd: Path) -> int:
    """The script run to its end, or to its kill at `spec` (kill_at); returns its exit status."""
    command = [*args] if args[0] == "-m" else [str(ROOT / args[0]), *args[1:]]
    if spec:
        command = ["-m", "tests.test_errors", ":".join(map(str, spec)), *command]
    proc = subprocess.run([sys.executable, *command], cwd=cwd, env=subprocess_env(OMP_NUM_THREADS="1"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def kill_chain(kills: list[tuple[str, int, str]], tiny_corpus: Path, exp: Path) -> Path:
    """A run of its own (own copy of the training folder, own experiment folder), killed at each of `kills` in
    turn, resumed after each, and run to its end: the run folder."""
    train_data = exp / "train"
    shutil.copytree(tiny_corpus / "train/wav", train_data, ignore=shutil.ignore_patterns(".voiceprint_index*"))
    for folder in [train_data, *(p for p in train_data.rglob("*") if p.is_dir())]:
        os.utime(folder, (time.time() - 60, time.time() - 60))  # old enough for the index to be cached
    args = tiny_train_args(tiny_corpus, exp, "run", *KILLED_RUN, "--train-data", str(train_data))
    run = exp / "run"
    resume = ["train.py", "--resume", "--exp-dir", str(exp), "--name", "run", "--threads", "1"]
    for spec in [*kills, None]:  # None: the last restart, to the end
        started = resume if list((run / "checkpoints").glob("epoch_*.pt")) else ["train.py", *args]
        assert killed_run(spec, started, exp) == (-signal.SIGKILL if spec else 0), spec
    return run


KILLED_RUN = ("--epochs", "3", "--val-trials", "", "--bootstrap", "0")


def test_kills_inside_every_atomic_write_resume_to_identical_weights(tiny_corpus, tmp_path):
    """Two chains side by side (each a 1-thread process at a time; 2 cores): the kills up to epoch 2's curves,
    and those from epoch 3 on, whose first process trains epochs 1-2 unkilled. The two best.pt kills stay in
    one chain: the second is a kill inside the first one's repair."""
    import train

    full = train.main([*tiny_train_args(tiny_corpus, tmp_path, "full", *KILLED_RUN)])
    split = KILLS.index(("curves.png", 1, "before")) + 1  # KILLS[split]: epoch 3's step
    # the second chain's first process starts fresh: epoch 3's step is its (2 epochs + STEP[2])-th
    chains = [KILLS[:split], [("step", 2 * STEPS_PER_EPOCH + int(STEP[2]), "before"), *KILLS[split + 1:]]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: kill_chain(chains[i], tiny_corpus, tmp_path / f"chain{i}"), (0, 1)))
    for run in runs:
        a, b = (torch.load(r / "checkpoints/epoch_0003.pt", weights_only=True) for r in (full, run))
        for part in ("model", "head"):
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), key
        best = torch.load(run / "checkpoints/best.pt", weights_only=True)
        assert best["epoch"] == 3 and all(torch.equal(best["model"][k], b["model"][k]) for k in b["model"])
        rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(x / "log.csv"))]
                for x in (full, run)]
        assert rows[0] == rows[1] and len(rows[0]) == 3
        assert all(int(r["steps"]) == STEPS_PER_EPOCH for r in rows[0])  # the second chain's step arithmetic
        results = [json.loads((x / "results.json").read_text()) for x in (full, run)]
        assert results[1]["epoch"] == 3 and results[0]["results"][0]["eer"] == results[1]["results"][0]["eer"]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp"))


def test_a_kill_inside_the_final_best_copy_is_repaired_on_resume(trained_run, tmp_path):
    """The final epoch was the best, killed before its copy to best.pt: the old best.pt (epoch 1) must not be
    what the run reports; restore_best copies the state's best_epoch again, and a missing best.pt too."""
    from runs import restore_best

    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(state, folder / "best.pt")  # epoch 1's
    torch.save({**state, "epoch": 2, "best_epoch": 2}, folder / "epoch_0002.pt")
    restore_best(tmp_path, {**state, "epoch": 2, "best_epoch": 2})
    assert torch.load(folder / "best.pt", weights_only=True)["epoch"] == 2
    (folder / "best.pt").unlink()
    torch.save({**state, "epoch": 3, "best_epoch": 2}, folder / "epoch_0003.pt")
    restore_best(tmp_path, {**state, "epoch": 3, "best_epoch": 2})  # an older best, its best.pt gone
    assert torch.load(folder / "best.pt", weights_only=True)["epoch"] == 2


def test_a_prepare_killed_inside_a_write_completes_identically(tiny_corpus, tmp_path):
    src = tiny_corpus / "test/wav"
    assert killed_run(("*.npy", 3, "before"), ["-m", "data.prepare", str(src), str(tmp_path / "npy"),
                                                "--workers", "1"], tmp_path) == -signal.SIGKILL
    assert list((tmp_path / "npy").rglob(".*.tmp"))  # the killed write's temporary, until the next run
    for dst in ("npy", "whole"):
        assert run_script(["-m", "data.prepare", str(src), str(tmp_path / dst), "--workers", "1"],
                          tmp_path).returncode == 0
    assert snapshot(tmp_path / "npy") == snapshot(tmp_path / "whole")


if __name__ == "__main__":  # python -m tests.test_errors KILL_AT SCRIPT|-m MODULE ARGS...
    kill_at(sys.argv[1])
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
