"""Shared fixtures: one tiny generated corpus for the whole session."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.synth import CorpusSpec, generate_corpus

TINY_SPEC = CorpusSpec(num_train_speakers=6, num_val_speakers=3, num_test_speakers=3, train_utts_per_speaker=6,
                       val_utts_per_speaker=3, test_utts_per_speaker=3, train_duration_s=(1.0, 1.5),
                       eval_duration_s=(1.0, 1.5), num_val_trials=12, num_test_trials=12)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "demo"
    generate_corpus(root, TINY_SPEC, workers=1)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_corpus, tmp_path_factory) -> Path:
    """One epoch of train.py on the tiny corpus; its test list also written in Kaldi's format."""
    import train
    from data.trials import read_trials

    run = train.main(tiny_train_args(tiny_corpus, tmp_path_factory.mktemp("exp"), "run", "--epochs", "1"))
    kaldi = run / "trials_kaldi.txt"
    kaldi.write_text("".join(f"{t.enroll} {t.test} {'target' if t.label else 'nontarget'}\n"
                             for t in read_trials(tiny_corpus / "test/trials.txt")))
    return run


def tiny_train_args(corpus: Path, exp_dir: Path, name: str, *extra: str) -> list[str]:
    """A tiny, fast training run on the tiny corpus: small ECAPA-TDNN, 2 workers off, 2 epochs."""
    return ["--demo-corpus", str(corpus), "--train-data", str(corpus / "train/wav"),
            "--val-data", str(corpus / "val/wav"), "--val-trials", str(corpus / "val/trials.txt"),
            "--test-data", str(corpus / "test/wav"), "--test-trials", str(corpus / "test/trials.txt"),
            "--exp-dir", str(exp_dir), "--name", name, "--channels", "16", "--batch-size", "8",
            "--num-frames", "100", "--epochs", "2", "--num-workers", "0", "--threads", "1", *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a script run in a subprocess: the repository first on PYTHONPATH, whatever else
    was there kept (packages installed with --target live there)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def make_cnceleb(root: Path, waves: dict[str, list], eval_speakers: list[str], enroll_utts: int = 2,
                 sample_rate: int = 16000) -> Path:
    """A miniature CN-Celeb1 tree as distributed (CN-Celeb_flac: data/<spk>/<genre>-01-NNN.flac, dev/dev.lst,
    eval/enroll/<spk>-enroll.flac, eval/test/<spk>-<genre>-01-NNN.flac, eval/lists/{enroll.lst, enroll.map,
    test.lst, trials.lst}, the lists naming .wav files as CN-Celeb's do) from `waves` (speaker -> list of 1-D
    float arrays). An eval speaker's first `enroll_utts` waves are its enrolment, the rest test files; the
    trials are every enrolment model against every test file."""
    genres = ("singing", "speech", "vlog", "interview")
    enroll_map, enroll_lst, tests = [], [], []
    for spk, spk_waves in sorted(waves.items()):
        names = [f"{genres[i % len(genres)]}-01-{i + 1:03d}" for i in range(len(spk_waves))]
        for name, wave in zip(names, spk_waves):
            (root / "data" / spk).mkdir(parents=True, exist_ok=True)
            sf.write(root / "data" / spk / f"{name}.flac", wave, sample_rate)
        if spk not in eval_speakers:
            continue
        (root / "eval/enroll").mkdir(parents=True, exist_ok=True)
        (root / "eval/test").mkdir(parents=True, exist_ok=True)
        sf.write(root / f"eval/enroll/{spk}-enroll.flac", np.concatenate(spk_waves[:enroll_utts]), sample_rate)
        enroll_map.append(f"{spk}-enroll " + " ".join(f"{spk}/{n}.wav" for n in names[:enroll_utts]))
        enroll_lst.append(f"{spk}-enroll enroll/{spk}-enroll.wav")
        for name, wave in zip(names[enroll_utts:], spk_waves[enroll_utts:]):
            sf.write(root / f"eval/test/{spk}-{name}.flac", wave, sample_rate)
            tests.append((spk, f"test/{spk}-{name}.wav"))
    (root / "dev").mkdir(parents=True, exist_ok=True)
    (root / "dev/dev.lst").write_text("".join(f"{s}\n" for s in sorted(waves) if s not in eval_speakers))
    lists = root / "eval/lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "enroll.map").write_text("\n".join(enroll_map) + "\n")
    (lists / "enroll.lst").write_text("\n".join(enroll_lst) + "\n")
    (lists / "test.lst").write_text("".join(f"{t}\n" for _, t in tests))
    (lists / "trials.lst").write_text("".join(f"{spk}-enroll {t} {int(spk == owner)}\n"
                                              for spk in sorted(eval_speakers) for owner, t in tests))
    return root


def noise_waves(speakers: list[str], utts: int, seconds: float = 1.0, seed: int = 0) -> dict[str, list]:
    """Speaker -> `utts` seeded white-noise waves of `seconds` at 16 kHz (for layouts, not for embeddings)."""
    rng = np.random.default_rng(seed)
    return {s: [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(utts)]
            for s in speakers}


def write_m4a(path: Path, wave: np.ndarray, sample_rate: int = 16000) -> Path:
    """`wave` (float, mono) as AAC in an .m4a file, as VoxCeleb2 ships its audio (needs PyAV)."""
    import av  # optional dependency: callers skip without it

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.asarray(wave, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path
