"""Starting from a trained model (train.py --init-from) and ending with an average of the last epochs
(--average-last, runs.average_checkpoints): what is loaded, what is fresh, what is averaged, what is tested."""

import json
import logging

import pytest
import torch

import train
from config import ConfigError, build_config, parse_config
from distributed import Dist
from loss import head_from_config
from models import model_from_config
from runs import average_checkpoints, load_checkpoint, load_trained
from tests.conftest import tiny_train_args
from utils import UserError


def test_init_from_loads_the_encoder_and_a_fresh_head_for_new_speakers(trained_run, caplog):
    state = load_checkpoint(trained_run / "checkpoints/best.pt")
    cfg = build_config({"init_from": str(trained_run)}, base=state["config"])
    model = model_from_config(cfg)
    trainee = train.Trainee(model, head_from_config(cfg, model.embed_dim, 3))
    fresh_head = {k: v.clone() for k, v in trainee.head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        train.init_from_checkpoint(trainee, cfg, ["a", "b", "c"], Dist())
    for key, value in trainee.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    assert all(torch.equal(v, fresh_head[k]) for k, v in trainee.head.state_dict().items())
    assert "a fresh aam head for 3 classes (the checkpoint's head is for 6 other classes)" in caplog.text


def test_init_from_takes_the_model_keys_of_its_checkpoint(trained_run):
    """The model and its features come from the checkpoint; another value given is a one-line error."""
    overrides = {"init_from": str(trained_run), "epochs": 1}
    cfg = train.with_init_model(build_config(overrides), overrides)
    assert cfg.channels == 16 and cfg.init_from == str(trained_run / "checkpoints/best.pt")
    overrides["channels"] = 32
    with pytest.raises(ConfigError, match=r"channels: .*best.pt was trained with 16, not 32"):
        train.with_init_model(build_config(overrides), overrides)


def test_average_last_needs_its_checkpoints_kept():
    with pytest.raises(ConfigError, match=r"average_last: 4 needs the last 4 epoch checkpoints; keep_checkpoints is 3"):
        parse_config(["--average-last", "4", "--epochs", "10"], "", "train.py")
    with pytest.raises(ConfigError, match=r"average_last: 4 epoch checkpoints to average, but only 2 epochs"):
        parse_config(["--average-last", "4", "--epochs", "2", "--keep-checkpoints", "0"], "", "train.py")


def test_fine_tune_then_average_the_last_epochs(tiny_corpus, trained_run, tmp_path, caplog):
    """A run started from another one's weights (same speakers: encoder and head), its last two epochs
    averaged into avg_last_2.pt, which gets the final test through the one evaluation path."""
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        run = train.main(tiny_train_args(tiny_corpus, tmp_path, "ft", "--init-from", str(trained_run), "--lr",
                                         "0.0001", "--num-frames", "150", "--margin", "0.3", "--average-last", "2",
                                         "--keep-checkpoints", "2", "--bootstrap", "0"))
    assert "its encoder and its head (the same 6 classes)" in caplog.text
    avg = load_checkpoint(run / "checkpoints/avg_last_2.pt")
    epochs = [load_checkpoint(run / f"checkpoints/epoch_000{i}.pt") for i in (1, 2)]
    assert avg["averaged_epochs"] == [1, 2] and "optimizer" not in avg and avg["epoch"] == 2
    for part in ("model", "head"):
        for key, value in avg[part].items():
            if value.is_floating_point():
                expected = (epochs[0][part][key].double() + epochs[1][part][key].double()) / 2
                torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=1e-6)
            else:
                assert torch.equal(value, epochs[1][part][key])
    results = json.loads((run / "results.json").read_text())
    report = json.loads((run / "eval/results.json").read_text())
    assert results["checkpoint"] == "checkpoints/avg_last_2.pt" and report["checkpoint"].endswith("avg_last_2.pt")
    assert results["results"][0]["eer"] == report["results"][0]["eer"]
    assert load_trained(run / "checkpoints/avg_last_2.pt").cfg.init_from.endswith("best.pt")


def test_average_of_missing_checkpoints_is_a_one_line_error(trained_run):
    with pytest.raises(UserError, match=r"average_last 3 needs 3 epoch checkpoints, found 1"):
        average_checkpoints(trained_run, 3)
