"""Shared fixtures: one tiny generated corpus for the whole session."""

import os
from pathlib import Path

import pytest

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
