"""curves.py: <run>/curves.png from the log after every epoch, TensorBoard scalars with --tensorboard, and a
one-line error at the start when tensorboard is asked for but not installed."""

import importlib.util

import pytest

import curves
import train
from tests.conftest import tiny_train_args
from utils import UserError

PNG = b"\x89PNG\r\n\x1a\n"
ROWS = [{"epoch": "1", "steps": "3", "lr": "0.0005", "margin": "0.1000", "loss": "9.5", "accuracy": "0.20",
         "val_eer": "0.3000", "val_min_dcf": "0.9000", "seconds": "1.0"},
        {"epoch": "2", "steps": "3", "lr": "0.000485", "margin": "0.2000", "loss": "8.1", "accuracy": "0.35",
         "val_eer": "", "val_min_dcf": "", "seconds": "1.0"}]


def test_training_writes_its_curves(trained_run):
    png = trained_run / "curves.png"
    assert png.read_bytes().startswith(PNG) and png.stat().st_size > 10_000
    assert not list(trained_run.glob(".curves.png.*"))  # written atomically: no temporary file left
    assert not (trained_run / "tensorboard").exists()  # only with --tensorboard


def test_curves_skip_epochs_without_validation(tmp_path):
    assert curves.series(ROWS, "val_eer", 100.0) == ([1], [30.0])
    assert curves.series(ROWS, "loss") == ([1, 2], [9.5, 8.1])
    curves.write_curves(tmp_path, ROWS)
    curves.write_curves(tmp_path, [{**r, "val_eer": "", "val_min_dcf": ""} for r in ROWS])  # no validation at all
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_tensorboard_without_the_package_fails_at_the_start(tiny_corpus, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"--tensorboard needs the tensorboard package.*pip install tensorboard"):
        train.main(tiny_train_args(tiny_corpus, tmp_path / "exp", "run", "--tensorboard"))
    assert not (tmp_path / "exp").exists()  # before anything was written
    # a resumed run's saved setting is caught at the end of its first epoch
    with pytest.raises(UserError, match=r"pip install tensorboard"):
        curves.write_curves(tmp_path, ROWS, tensorboard=True)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_scalars_of_each_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for i in range(len(ROWS)):
        curves.write_curves(tmp_path, ROWS[:i + 1], tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = {"train/loss", "train/lr", "train/margin", "train/accuracy", "val/eer", "val/min_dcf"}
    assert set(events.Tags()["scalars"]) == tags
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 9.5), (2, 8.1)]
    assert [e.step for e in events.Scalars("val/eer")] == [1]
