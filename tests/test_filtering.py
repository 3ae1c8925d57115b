"""In-training filtering of noisy labels (issue 17): the leave-out selection as a pure function, the samplers
leaving items out, the per-sample loss path of the heads, and a filtered run that logs what it left out and
resumes bit-identically from an epoch's end and from within an epoch."""

import csv
import logging
import re
import shutil

import numpy as np
import pytest
import torch

import train
from data.samplers import BalancedSampler, EpochSampler, LossRecord, leave_out, round_half_up
from loss import build_head
from tests.conftest import tiny_train_args
from utils import UserError

NAN = float("nan")


def test_leave_out_takes_each_speakers_highest_losses_rounded_halves_up():
    speaker = [0] * 10 + [1] * 5 + [2] * 3
    losses = np.concatenate([np.arange(10.0), [5, 1, 9, 3, 7], [1, 2, 3]])
    out = leave_out(losses, speaker, 0.25)  # round(2.5) = 3 of speaker 0, round(1.25) = 1, round(0.75) = 1
    assert np.flatnonzero(out).tolist() == [7, 8, 9, 12, 17]
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 0.49, 0.25 * 10)] == [1, 2, 3, 0, 3]
    assert not leave_out(losses, speaker, 0.0).any()


def test_leave_out_keeps_one_per_speaker_breaks_ties_by_list_order_and_skips_unseen():
    assert np.flatnonzero(leave_out([2.0, 2.0, 2.0, 2.0], [0, 0, 0, 0], 0.5)).tolist() == [0, 1]  # ties: earlier
    assert np.flatnonzero(leave_out([1.0, 3.0], [5, 5], 0.9)).tolist() == [1]  # round(1.8) = 2, one always kept
    assert not leave_out([4.0], [0], 0.9).any()  # a speaker of one utterance keeps it
    losses = [NAN, 1.0, NAN, 0.5, 9.0, 8.0]  # NaN: no recorded loss (not trained on yet), never left out
    assert np.flatnonzero(leave_out(losses, [0, 0, 0, 0, 1, 1], 0.5)).tolist() == [1, 3, 4]
    speakers = [3, 1, 3, 1]  # any speaker ids, in any order in the list
    assert np.flatnonzero(leave_out([1.0, 2.0, 3.0, 0.0], speakers, 0.5)).tolist() == [1, 2]


def test_samplers_leave_items_out_and_keep_the_seeded_order_of_the_rest():
    sampler = EpochSampler(40, 4, seed=0)
    whole = [pair for batch in sampler for pair in batch]
    mask = np.zeros(40, dtype=bool)
    mask[::5] = True
    sampler.set_left_out(mask)
    assert len(sampler) == 8 and [pair for batch in sampler for pair in batch] == [p for p in whole if not mask[p[0]]]
    with pytest.raises(UserError, match="left after filtering are fewer than one batch"):
        EpochSampler(8, 4, seed=0, world_size=2).set_left_out(np.arange(8) == 0)
    balanced = BalancedSampler(np.repeat(np.arange(4), 6), 4, 2, seed=0)
    balanced.set_left_out(np.tile(np.arange(6) >= 4, 4))  # 4 of each speaker's 6 kept
    seen = {i for batch in balanced for i, _ in batch}
    assert len(balanced) == 4 and seen == {i for i in range(24) if i % 6 < 4}


def test_loss_record_averages_repeats_and_keeps_the_loss_of_what_was_not_trained():
    record = LossRecord.empty(4)
    record.add(np.array([0, 1, 1]), np.array([1.0, 2.0, 4.0]))
    record.close_epoch(record.sums.copy(), record.counts.copy())
    assert np.array_equal(record.losses, [1.0, 3.0, NAN, NAN], equal_nan=True) and not record.sums.any()
    record.add(np.array([1]), np.array([0.5]))
    record.close_epoch(record.sums.copy(), record.counts.copy())
    assert np.array_equal(record.losses, [1.0, 0.5, NAN, NAN], equal_nan=True)


@pytest.mark.parametrize("name", ["softmax", "aam"])
def test_per_sample_losses_average_to_the_mean_loss(name):
    head = build_head(name, embed_dim=16, num_speakers=10, margin=0.2, scale=30.0)
    embeddings, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    mean, logits = head(embeddings, labels)
    each, same_logits = head(embeddings, labels, reduction="none")
    assert each.shape == (6,) and torch.equal(logits, same_logits)
    torch.testing.assert_close(each.mean(), mean)


def test_a_filtered_run_logs_what_it_left_out_and_resumes_bit_identically(tiny_corpus, tmp_path, caplog):
    """3 epochs, label noise 0.3, filter 0.2 after 1 warm-up epoch, batches of 4 accumulated by 2, a checkpoint
    every optimizer step. Copies cut back to epoch 2's end and to a step into epoch 3, resumed, end with the
    uninterrupted run's weights and loss record, bit for bit, and its log."""
    args = tiny_train_args(tiny_corpus, tmp_path, "full", "--epochs", "3", "--val-trials", "", "--test-trials",
                           "--batch-size", "4", "--accumulate", "2", "--checkpoint-every", "1",
                           "--keep-checkpoints", "0", "--label-noise", "0.3", "--filter-share", "0.2",
                           "--filter-warmup", "1")
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        train.main(args)
    rows = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    assert [r["left_out"] for r in rows] == ["0", "7", "7"]  # round(0.2 n) of each speaker's n after the noise
    assert all(r["left_out_precision"] and r["left_out_recall"] for r in rows[1:])
    assert [int(r["steps"]) for r in rows] == [4, 3, 3]  # 36 utterances, then 29: 9 and 7 batches of 4
    assert "left out 7 (precision" in caplog.text
    full = torch.load(tmp_path / "full/checkpoints/epoch_0003.pt", weights_only=True)
    assert full["loss_record"].shape == (36,) and torch.isfinite(full["loss_record"]).sum() >= 29

    for name, kept in (("mid", "epoch_0003-step_000001.pt"), ("end", "")):  # resumed 1 step into epoch 3, and
        shutil.copytree(tmp_path / "full", tmp_path / name)  # after epoch 2
        for path in (tmp_path / name / "checkpoints").glob("*.pt"):
            if (path.name.startswith("epoch_0003") and path.name != kept) or path.name == "best.pt":
                path.unlink()
        (tmp_path / name / "results.json").unlink()
        train.main(["--resume", "--exp-dir", str(tmp_path), "--name", name, "--threads", "1"])
        resumed = torch.load(tmp_path / name / "checkpoints/epoch_0003.pt", weights_only=True)
        for part in ("model", "head"):
            assert all(torch.equal(full[part][k], resumed[part][k]) for k in full[part]), (name, part)
        assert torch.equal(full["loss_record"].nan_to_num(-1), resumed["loss_record"].nan_to_num(-1)), name
        assert [{**r, "seconds": ""} for r in resumed["log"]] == [{**r, "seconds": ""} for r in full["log"]]


def test_downweighting_with_the_balanced_sampler_trains_every_utterance(tiny_corpus, tmp_path, caplog):
    """downweight: nothing leaves the sampler (both epochs have their 9 batches), the highest-loss share of each
    speaker is logged as down-weighted; no label noise, so no precision or recall."""
    args = tiny_train_args(tiny_corpus, tmp_path, "weighted", "--val-trials", "", "--test-trials",
                           "--batch-size", "4", "--sampler", "balanced", "--filter-share", "0.34",
                           "--filter-warmup", "1", "--filter-mode", "downweight", "--filter-weight", "0.1")
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        train.main(args)
    rows = list(csv.DictReader(open(tmp_path / "weighted" / "log.csv")))
    assert [(r["steps"], r["left_out"], r["left_out_recall"]) for r in rows] == [("9", "0", ""), ("9", "12", "")]
    assert "down-weighted 12  (" in caplog.text  # round(0.34 x 6) = 2 of each of the 6 speakers


@pytest.mark.parametrize("flags, message", [(["--filter-share", "1"], "filter_share: must be in [0, 1)"),
                                            (["--filter-mode", "trim"], "filter_mode: 'trim' is not one of"),
                                            (["--filter-weight", "2"], "filter_weight: must be in [0, 1]")])
def test_filter_flags_are_checked(flags, message):
    from config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(flags, "", "train.py")
