"""Run folders and checkpoints: the schema and its migration, finding checkpoints, never overwriting a run."""

import pytest
import torch

import train
from runs import (
    SCHEMA,
    epoch_checkpoints,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_trained,
    migrate,
    run_dir,
    save_checkpoint,
)
from tests.conftest import tiny_train_args
from utils import UserError


def schema_1(state: dict) -> dict:
    """A checkpoint as voiceprint wrote it before schemas: no `schema`, no `best_epoch`."""
    return {k: v for k, v in state.items() if k not in ("schema", "best_epoch")}


def test_a_schema_1_checkpoint_loads_and_gains_its_best_epoch(trained_run, tmp_path):
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    assert state["schema"] == SCHEMA and state["best_epoch"] == 1
    old = schema_1(state)
    old["log"] = [{**old["log"][0], "val_eer": "0.3"}, {**old["log"][0], "epoch": 2, "val_eer": "0.2"},
                  {**old["log"][0], "epoch": 3, "val_eer": "0.2"}]
    (tmp_path / "checkpoints").mkdir()
    torch.save(old, tmp_path / "checkpoints" / "epoch_0001.pt")
    loaded = load_checkpoint(tmp_path / "checkpoints" / "epoch_0001.pt")
    assert loaded["schema"] == SCHEMA and loaded["best_epoch"] == 2  # the first of the lowest val EERs
    assert migrate({**schema_1(state), "log": [{"epoch": 4, "val_eer": ""}], "epoch": 4}, tmp_path)["best_epoch"] == 4
    trained = load_trained(tmp_path / "checkpoints" / "epoch_0001.pt")
    assert trained.epoch == 1 and trained.cfg.channels == 16


def test_newer_schema_and_foreign_files_are_one_line_errors(trained_run, tmp_path):
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    torch.save({**state, "schema": SCHEMA + 1}, tmp_path / "new.pt")
    with pytest.raises(UserError, match=rf"new.pt: checkpoint schema {SCHEMA + 1} was written by a newer"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="foreign.pt: not a voiceprint checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match=r"torn.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")


def test_find_checkpoint_prefers_best_then_newest_epoch(trained_run, tmp_path):
    assert find_checkpoint(str(trained_run), "unused") == trained_run / "checkpoints/best.pt"
    assert find_checkpoint("", trained_run.parent) == trained_run / "checkpoints/best.pt"
    assert run_dir(trained_run / "checkpoints/best.pt") == trained_run
    with pytest.raises(UserError, match="no trained experiment under"):
        find_checkpoint("", tmp_path)
    with pytest.raises(UserError, match="nope: no such checkpoint file or experiment folder"):
        find_checkpoint(str(tmp_path / "nope"), tmp_path)


def test_a_new_run_never_overwrites_an_earlier_one(tiny_corpus, tmp_path):
    args = tiny_train_args(tiny_corpus, tmp_path, "run", "--epochs", "1", "--test-trials", "--val-trials", "")
    train.main(args)
    before = (tmp_path / "run/checkpoints/epoch_0001.pt").read_bytes()
    with pytest.raises(UserError, match=r"run: holds an earlier run \(checkpoints\); pass --resume"):
        train.main([*args, "--lr", "0.1"])
    assert (tmp_path / "run/checkpoints/epoch_0001.pt").read_bytes() == before
    assert "lr: 0.1" not in (tmp_path / "run/config.yaml").read_text()


def test_a_schema_2_checkpoint_loads_as_taken_at_an_epoch_end(trained_run, tmp_path):
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    assert state["schema"] == SCHEMA and state["mid_epoch"] is None
    old = {**{k: v for k, v in state.items() if k != "mid_epoch"}, "schema": 2}
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["mid_epoch"] is None


def test_mid_epoch_checkpoints_sort_between_epochs_and_go_when_their_epoch_ends(tmp_path):
    def save(epoch: int, step: int = 0, keep: int = 2) -> str:
        state = {"epoch": epoch, "mid_epoch": {"step": step} if step else None}
        return save_checkpoint(tmp_path, state, keep, is_best=False).name

    def names() -> list[str]:
        return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    assert save(1) == "epoch_0001.pt"
    assert save(1, step=20) == "epoch_0002-step_000020.pt"  # 20 steps into epoch 2
    assert latest_checkpoint(tmp_path).name == "epoch_0002-step_000020.pt"
    save(1, step=40)
    assert names() == ["epoch_0001.pt", "epoch_0002-step_000040.pt"]  # the newest mid-epoch one only
    save(2)
    assert names() == ["epoch_0001.pt", "epoch_0002.pt"] and latest_checkpoint(tmp_path).name == "epoch_0002.pt"
    assert epoch_checkpoints(tmp_path)[-1].name == "epoch_0002.pt"
    save(2, step=5, keep=0)
    save(3, keep=0)
    assert names() == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003-step_000005.pt", "epoch_0003.pt"]


def test_a_schema_3_checkpoint_loads_with_the_population_variance(trained_run, tmp_path):
    """Schema 4 added the model option stats_variance: an older checkpoint keeps the estimator it trained with."""
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    assert state["schema"] == SCHEMA and state["config"]["stats_variance"] == "population"
    config = {k: v for k, v in state["config"].items() if k != "stats_variance"}
    torch.save({**state, "config": config, "schema": 3}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["config"]["stats_variance"] == "population"
    assert load_trained(tmp_path / "old.pt").model.pool.unbiased is False


def test_a_schema_4_checkpoint_loads_with_an_empty_loss_record(trained_run, tmp_path):
    """Schema 5 added in-training filtering's loss record: an older checkpoint has none (None), from which a run
    resumed with --filter-share starts empty (train.restore_record)."""
    state = torch.load(trained_run / "checkpoints/epoch_0001.pt", weights_only=True)
    assert state["schema"] == SCHEMA == 5 and state["loss_record"] is None  # the run did not filter
    torch.save({**{k: v for k, v in state.items() if k != "loss_record"}, "schema": 4}, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["schema"] == 5 and loaded["loss_record"] is None
    assert load_trained(tmp_path / "old.pt").epoch == 1


@pytest.mark.parametrize("links", [True, False])
def test_best_pt_is_the_best_epochs_file_and_outlives_its_removal(tmp_path, monkeypatch, links):
    """best.pt is a hard link to the best epoch's checkpoint (no second write), or a copy where the file system
    has no hard links; either way it stays whole when keep_checkpoints removes the epoch file."""
    if not links:
        monkeypatch.setattr("runs.os.link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    best = tmp_path / "checkpoints" / "best.pt"
    save_checkpoint(tmp_path, {"epoch": 1, "weights": torch.arange(4.0)}, 1, is_best=True)
    epoch_1 = tmp_path / "checkpoints" / "epoch_0001.pt"
    assert best.read_bytes() == epoch_1.read_bytes() and best.samefile(epoch_1) is links
    save_checkpoint(tmp_path, {"epoch": 2, "weights": torch.zeros(4)}, 1, is_best=False)  # removes epoch 1
    assert not epoch_1.exists() and torch.equal(torch.load(best, weights_only=True)["weights"], torch.arange(4.0))
    save_checkpoint(tmp_path, {"epoch": 3, "weights": torch.ones(4)}, 1, is_best=True)
    assert torch.equal(torch.load(best, weights_only=True)["weights"], torch.ones(4))
    assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt", "epoch_0003.pt"]  # no temporary left
