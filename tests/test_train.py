"""train.py's steps: per-rank step seeds, the process group's timeout, gradient accumulation and exact resume
from a mid-epoch checkpoint (the torchrun runs are in tests/test_distributed.py)."""

import csv
import logging
import shutil
from datetime import timedelta

import torch

import distributed
import train
from tests.conftest import tiny_train_args


def test_step_seed_is_a_pure_function_of_seed_epoch_step_and_rank():
    seeds = {(s, e, i, r): train.step_seed(s, e, i, r) for s in (0, 1) for e in (0, 1) for i in (0, 1) for r in (0, 1)}
    assert len(set(seeds.values())) == len(seeds)  # every rank draws its own dither and masks, every step
    assert all(train.step_seed(*key) == value for key, value in seeds.items())  # and draws them again on resume
    assert all(0 <= v < 2**63 for v in seeds.values())


def test_the_process_group_gets_the_configured_timeout(monkeypatch):
    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, timeout: started.update(
        backend=backend, timeout=timeout))
    level = distributed.log.level
    try:
        d = distributed.init_distributed("cpu", 45.0)
        assert started == {"backend": "gloo", "timeout": timedelta(minutes=45)}
        assert (d.rank, d.world_size, d.distributed, d.owns_group, d.main) == (1, 2, True, True, False)
        assert distributed.log.level == logging.WARNING  # rank 0 alone logs
    finally:
        distributed.log.setLevel(level)
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.init_distributed("cpu", 45.0) == distributed.Dist()  # no torchrun: one process, no group


def test_learning_rate_warms_up_linearly_then_decays_per_epoch():
    cfg = train.Config(lr=0.001, lr_decay=0.5, warmup_epochs=1.5)
    assert [train.learning_rate(cfg, e, p) for e, p in ((0, 0.0), (0, 0.75), (1, 0.25), (1, 0.5), (2, 0.0))] == [
        0.0, 0.0005, 0.0005 * (1.25 / 1.5), 0.0005, 0.00025]
    assert train.learning_rate(train.Config(lr=0.001, lr_decay=0.5), 1, 0.9) == 0.0005  # no warm-up: per epoch


def test_mid_epoch_checkpoints_resume_exactly_with_accumulation(tiny_corpus, tmp_path, caplog):
    """--accumulate 2 --checkpoint-every 1: 9 batches of 4 a epoch = 4 optimizer steps (the 9th batch dropped),
    a checkpoint after steps 1-3. The run copied, cut back to the one 2 steps into epoch 2, and resumed ends with
    the uninterrupted run's weights, bit for bit, and its epoch losses. A warm-up of 1.5 epochs runs through the
    resumed part: the lr is a function of the position alone, and the log holds each epoch's last step's lr."""
    args = tiny_train_args(tiny_corpus, tmp_path, "full", "--epochs", "2", "--val-trials", "", "--test-trials",
                           "--batch-size", "4", "--accumulate", "2", "--checkpoint-every", "1",
                           "--keep-checkpoints", "0", "--warmup-epochs", "1.5", "--lr", "0.001")
    with caplog.at_level(logging.WARNING, logger="voiceprint"):
        train.main(args)
    assert "effective batch 8 (batch 4 x accumulate 2 x 1 process(es))" in caplog.text
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch_0002*")) == [
        "epoch_0002-step_000001.pt", "epoch_0002-step_000002.pt", "epoch_0002-step_000003.pt", "epoch_0002.pt"]
    full = torch.load(folder / "epoch_0002.pt", weights_only=True)
    assert [r["steps"] for r in full["log"]] == [4, 4] and full["mid_epoch"] is None
    assert {float(s["step"]) for s in full["optimizer"]["state"].values()} == {8.0}  # Adam stepped 2 x 4 times
    cfg = train.Config(lr=0.001, warmup_epochs=1.5)  # the last step starts after 6 of the epoch's 9 batches
    assert [r["lr"] for r in full["log"]] == [f"{train.learning_rate(cfg, e, 6 / 9):.6g}" for e in (0, 1)]
    assert abs(float(full["log"][0]["lr"]) - 0.001 * (6 / 9) / 1.5) < 1e-9  # inside the warm-up, not its first step's 0

    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    cut = tmp_path / "resumed" / "checkpoints"
    for name in ("epoch_0002-step_000003.pt", "epoch_0002.pt", "best.pt"):
        (cut / name).unlink()
    (tmp_path / "resumed" / "results.json").unlink()
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        train.main(["--resume", "--exp-dir", str(tmp_path), "--name", "resumed", "--threads", "1"])
    assert "after epoch 1, batch 4 of epoch 2" in caplog.text
    resumed = torch.load(cut / "epoch_0002.pt", weights_only=True)
    for part in ("model", "head"):
        for key in full[part]:
            assert torch.equal(full[part][key], resumed[part][key]), (part, key)
    assert [(r["loss"], r["accuracy"]) for r in resumed["log"]] == [(r["loss"], r["accuracy"]) for r in full["log"]]
    assert [r["loss"] for r in csv.DictReader(open(tmp_path / "resumed" / "log.csv"))] == [
        r["loss"] for r in full["log"]]
    assert sorted(p.name for p in cut.glob("*-step_*.pt")) == sorted(p.name for p in folder.glob("*-step_*.pt"))
