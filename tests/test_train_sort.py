"""train_sort's trimming, scoring, relabelling and noise-detection figures on hand-made data; one end-to-end
run (--action auto) on a copy of the session's tiny run with label noise planted in its list."""

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_sort
from config import Config, build_config, load_yaml
from data.corpus import MovedLabel, Utterance, load_utterance_list, save_index, write_moved_labels
from loss import SubcenterAAMHead
from train_sort import (
    Round,
    Selection,
    cross_check,
    detection,
    fold_of,
    held_out_targets,
    keep_range,
    keep_typical,
    kept_mask,
    leave_one_out_centroid_scores,
    new_labels,
    oracle_labels,
    outcome,
    percent_range,
    read_label_noise,
    relabel_targets,
    removal_counts,
    retraining_list,
    subcenter_scores,
    unsure,
)
from utils import UserError


def test_percent_range_accepts_percent_and_fractions_and_rejects_empty():
    assert percent_range([5, 95]) == (5, 95)
    assert percent_range([0.05, 0.95]) == pytest.approx((5, 95))
    assert percent_range([0, 90]) == (0, 90)
    for bad in ([50, 50], [90, 10], [-1, 50], [10, 101]):
        with pytest.raises(UserError, match="keeps nothing"):
            percent_range(bad)


def test_keep_range_exact_boundaries():
    scores = np.arange(21, dtype=float)  # 0..20
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 5, 95, 0)), np.arange(1, 20))
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 10, 90, 0)), np.arange(2, 19))
    np.testing.assert_array_equal(np.flatnonzero(keep_range(scores, 0, 90, 0)), np.arange(0, 19))
    assert keep_range(scores, 0, 100, 0).all()
    shuffled = np.random.default_rng(0).permutation(scores)  # the input order does not matter
    assert sorted(shuffled[keep_range(shuffled, 5, 95, 0)]) == list(range(1, 20))


@pytest.mark.parametrize("n, low, high, removed", [
    (30, 5, 95, (1, 2)), (10, 5, 95, (0, 1)), (21, 5, 95, (1, 1)), (20, 0, 90, (0, 2)), (20, 10, 100, (2, 0)),
    (15, 10, 90, (1, 2)), (7, 0, 80, (0, 1)), (8, 0, 80, (0, 2)),
])
def test_removal_counts_remove_the_asked_share(n, low, high, removed):
    assert removal_counts(n, low, high) == removed
    assert abs(sum(removed) - n * (low + 100 - high) / 100) <= 0.5  # within half an utterance of the share
    scores = np.random.default_rng(n).normal(size=n)
    assert keep_range(scores, low, high, 0).sum() == n - sum(removed)


def test_a_lower_bound_above_zero_does_not_always_drop_the_most_typical():
    scores = np.linspace(1.0, 0.0, 10)  # utterance 0 the most typical
    assert keep_typical(scores, 5, 95, 0)[0]  # 10 utterances at 5-95: one removed, from the atypical end


def test_keep_range_ties_are_broken_by_list_order():
    scores = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    assert keep_range(scores, 10, 90, 0).tolist() == [False] + [True] * 8 + [False]


def test_keep_range_tiny_speakers_keep_min_keep():
    assert keep_range(np.array([0.3]), 5, 95, 2).tolist() == [True]
    kept = keep_range(np.array([0.1, 0.9]), 40, 60, 2)  # the range alone keeps nothing
    assert kept.tolist() == [True, True]
    kept = keep_range(np.array([0.1, 0.5, 0.52, 0.9]), 45, 55, 2)
    assert kept.tolist() == [False, True, True, False]


def test_keep_typical_counts_percentiles_from_the_most_typical():
    scores = np.linspace(1.0, 0.0, 21)  # utterance i is the i-th most typical
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 0, 90, 0)), np.arange(0, 19))  # low tail out
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 10, 100, 0)), np.arange(2, 21))  # top out
    np.testing.assert_array_equal(np.flatnonzero(keep_typical(scores, 5, 95, 0)), np.arange(1, 20))


def test_leave_one_out_centroid_matches_direct_computation():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 0])
    scores = leave_one_out_centroid_scores(emb, labels)
    for i in range(len(emb)):
        others = emb[(labels == labels[i]) & (np.arange(len(emb)) != i)]
        if len(others) == 0:
            assert scores[i] == 0.0
            continue
        mean = others.mean(0)
        assert scores[i] == pytest.approx(emb[i] @ mean / np.linalg.norm(mean))


def test_planted_outlier_scores_lowest_and_detection_figures():
    rng = np.random.default_rng(1)
    center = rng.normal(size=16)
    emb = center + 0.3 * rng.normal(size=(20, 16))
    emb[7] = rng.normal(size=16)  # a mislabelled utterance: another voice
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = leave_one_out_centroid_scores(emb, np.zeros(20, dtype=int))
    assert np.argmin(scores) == 7
    removed = {f"u{i}" for i in np.flatnonzero(~keep_typical(scores, 0, 95, 0))}  # drop the least typical 5%
    found = detection(removed, moved={"u7", "u12"})
    assert removed == {"u7"} and found.precision == 1.0 and found.recall == 0.5


# --- relabelling, the oracle, sub-centres --------------------------------------------------------------------

def unit(*rows: tuple[float, ...]) -> np.ndarray:
    x = np.array(rows, dtype=float)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_relabel_targets_take_the_nearest_other_centre_past_the_margin():
    centres = np.eye(3)  # speaker j's centre: axis j
    emb = unit((0.1, 0, 1), (1, 1.05, 0), (0, 1, 0))  # near speaker 2; between 0 and 1 (a bit nearer 1); on 1
    labels = np.array([0, 0, 1])
    own = np.einsum("nd,nd->n", emb, centres[labels])
    every = np.arange(3)
    assert relabel_targets(emb, labels, own, centres, every, 0.1) == {0: 2}  # 1's gain is 0.03 < 0.1
    assert relabel_targets(emb, labels, own, centres, every, 0.0) == {0: 2, 1: 1}
    assert relabel_targets(emb, labels, own, centres, np.array([1, 2]), 0.0) == {1: 1}  # only flagged ones
    assert relabel_targets(emb, labels, own, centres, every, 0.95) == {}  # 0's gain is 0.90


def test_unsure_are_as_near_another_centre_but_not_clearly_nearer():
    centres = np.eye(3)
    # gains: 0.90 (clearly nearer 2), 0.03 (a bit nearer 1), -1 (on its own centre), 0 (halfway, a tie)
    emb = unit((0.1, 0, 1), (1, 1.05, 0), (0, 1, 0), (1, 0, 1))
    labels = np.array([0, 0, 1, 0])
    own = np.einsum("nd,nd->n", emb, centres[labels])
    every = np.arange(4)
    assert unsure(emb, labels, own, centres, every, 0.1) == {1, 3}  # 0 <= gain < margin
    assert unsure(emb, labels, own, centres, every, 0.0) == set()  # every gain >= 0 relabels at margin 0
    assert unsure(emb, labels, own, centres, every, 0.95) == {0, 1, 3}
    assert unsure(emb, labels, own, centres, np.array([0, 2]), 0.1) == set()  # only the candidates
    targets = relabel_targets(emb, labels, own, centres, every, 0.1)
    assert not set(targets) & unsure(emb, labels, own, centres, every, 0.1)  # relabelled or unsure, never both


def test_folds_deal_each_speakers_utterances_evenly_and_are_seeded():
    labels = np.repeat([0, 1, 2], [7, 4, 1])
    fold = fold_of(labels, 2, seed=0)
    for speaker, n in ((0, 7), (1, 4), (2, 1)):
        counts = np.bincount(fold[labels == speaker], minlength=2)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.array_equal(fold, fold_of(labels, 2, seed=0))
    assert not all(np.array_equal(fold, fold_of(labels, 2, seed=s)) for s in range(1, 4))
    assert set(fold_of(labels, 3, seed=0)[labels == 0]) == {0, 1, 2}
    odd = np.repeat(np.arange(100), 3)  # the odd one out of each speaker goes to a random fold
    assert abs(np.bincount(fold_of(odd, 2, seed=0)).tolist()[0] - 150) < 30


def test_held_out_targets_judge_each_candidate_in_the_model_that_never_saw_it():
    """Utterance 0 (fold 0) is judged by model 0 only, utterance 1 (fold 1) by model 1: each model's own
    centres, from its own embeddings (leave-one-out for the utterance's own speaker)."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    fold = np.array([0, 1, 0, 1, 0, 1])
    speaker_axes = unit((1, 0), (1, 0), (1, 0), (0, 1), (0, 1), (0, 1))
    model0, model1 = speaker_axes.copy(), speaker_axes.copy()
    model0[0] = unit((0, 1))[0]  # model 0 puts utterance 0 on speaker 1
    model1[0] = unit((0, 1))[0]  # so does model 1, but utterance 0 is not its to judge
    assert held_out_targets([model0, model1], fold, labels, np.arange(6), 0.1) == {0: 1}
    assert held_out_targets([speaker_axes, model1], fold, labels, np.arange(6), 0.1) == {}
    assert held_out_targets([model0, model1], fold, labels, np.array([1, 2]), 0.1) == {}  # only the candidates


def test_cross_check_keeps_the_relabels_both_models_make_and_disputes_the_rest():
    agreed, disputed = cross_check({0: 2, 1: 3, 2: 1}, {0: 2, 1: 0, 4: 1})
    assert agreed == {0: 2} and disputed == {1, 2, 4}
    assert cross_check({}, {}) == ({}, set())


UTTS = [Utterance(f"u{i}", f"/x/u{i}.wav", s) for i, s in enumerate("aabb")]


def test_new_labels_drop_relabel_auto():
    kept, targets = np.array([True, False, False, False]), {1: 2, 3: 0}  # u2 flagged without a clear target
    assert new_labels(UTTS, "abc", kept, targets, "drop") == ["a", None, None, None]
    assert new_labels(UTTS, "abc", kept, targets, "relabel") == ["a", "c", "b", "a"]
    assert new_labels(UTTS, "abc", kept, targets, "auto") == ["a", "c", None, "a"]
    everywhere = {0: 1, **targets}  # --relabel-from all: a kept utterance with a target moves too
    assert new_labels(UTTS, "abc", kept, everywhere, "auto") == ["b", "c", None, "a"]
    # --drop-unsure: the unsure ones dropped, kept or flagged; a relabelled one is never unsure
    assert new_labels(UTTS, "abc", kept, targets, "relabel", dropped={0, 2}) == [None, "c", None, "a"]


def test_oracle_labels_and_retraining_list():
    noise = {"u1": MovedLabel("u1", "b", "a")}
    assert oracle_labels(UTTS, noise, "drop") == ["a", None, "b", "b"]
    labels = oracle_labels(UTTS, noise, "relabel")
    assert labels == ["a", "b", "b", "b"]
    retrain = retraining_list(UTTS, labels)
    assert [u.speaker for u in retrain] == labels and retrain[0] is UTTS[0] and retrain[1].key == "u1"
    assert [u.key for u in retraining_list(UTTS, ["a", None, "b", None])] == ["u0", "u2"]


def test_outcome_counts_relabels_against_the_moved_ones():
    noise = {"u1": MovedLabel("u1", "b", "a"), "u2": MovedLabel("u2", "c", "b")}
    figures = outcome(UTTS, ["c", "b", "a", None], noise)  # u0 (clean) and u2 moved elsewhere, u1 home, u3 out
    assert figures == {"removed": 1, "relabelled": 3, "moved": 2, "precision": 0.0, "recall": 0.0,
                       "relabelled_moved": 2, "relabelled_to_true": 1, "still_wrong": 2}  # u0 and u2
    assert outcome(UTTS, ["a", None, None, "b"], noise)["precision"] == 1.0
    assert outcome(UTTS, ["a", "a", "b", "b"], noise)["still_wrong"] == 2  # u1 and u2 left under the wrong label
    assert outcome(UTTS, ["a", "a", "b", "b"], {})["still_wrong"] is None  # no label noise: nothing to count


def test_subcenter_dominant_scores_and_suspects():
    subcentres = np.stack([np.eye(3), np.eye(3), np.eye(3)])  # (S=3, K=3, D=3)
    emb = unit((1, .1, 0), (1, 0, .1), (.9, .2, 0), (.1, 1, 0),  # class 0: three near sub-centre 0, one near 1
               (0, .1, 1), (.1, 0, 1), (1, 0, .2),  # class 1: two near 2, one near 0
               (0, 1, .1), (0, .1, 1))  # class 2: one near 1, one near 2: a tie, the lower index wins
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    scores, dominant, suspects = subcenter_scores(emb, labels, subcentres)
    np.testing.assert_array_equal(dominant, np.eye(3)[[0, 2, 1]])
    assert suspects.tolist() == [False, False, False, True, False, False, True, False, True]
    np.testing.assert_allclose(scores, [emb[i] @ dominant[labels[i]] for i in range(9)])
    assert np.argmin(scores[:4]) == 3  # the suspect is the least typical of its class


def test_subcenter_scores_read_the_heads_subcentres():
    head = SubcenterAAMHead(embed_dim=4, num_speakers=3, margin=0.2, scale=30.0, subcenters=2)
    weights = head.weight.detach().numpy().reshape(3, 2, 4)  # speaker-major rows
    weights = weights / np.linalg.norm(weights, axis=2, keepdims=True)
    emb = unit(*np.random.default_rng(5).normal(size=(6, 4)))
    labels = np.array([0, 0, 1, 1, 2, 2])
    s = train_sort.utterance_scores(SimpleNamespace(head=head), "subcenter", emb, labels, np.array([2, 0, 1]))
    expected = subcenter_scores(emb, labels, weights[[2, 0, 1]])  # the list's speakers are the head's rows 2, 0, 1
    np.testing.assert_allclose(s.score, expected[0], rtol=1e-5)
    np.testing.assert_allclose(s.centres, expected[1], rtol=1e-5)
    cosine = head.cosine(torch.from_numpy(emb).float()).detach().numpy()  # (N, S): the best sub-centre
    np.testing.assert_allclose(cosine, np.einsum("nd,skd->nsk", emb, weights).max(axis=2), rtol=1e-5)


def test_kept_mask_ranks_within_each_speaker():
    labels = np.array([0, 1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.7])
    assert kept_mask(scores, labels, [0, 70], 0).tolist() == [True, False, False, True, True, True]


def test_centroid_centres_and_own_score():
    rng = np.random.default_rng(3)
    emb = unit(*rng.normal(size=(7, 4)))
    labels = np.array([0, 1, 0, 1, 2, 2, 0])
    s = train_sort.utterance_scores(None, "centroid", emb, labels, np.arange(3))
    np.testing.assert_array_equal(s.own, leave_one_out_centroid_scores(emb, labels))
    mean = emb[labels == 1].mean(0)
    np.testing.assert_allclose(s.centres[1], mean / np.linalg.norm(mean))


def test_read_label_noise_must_match_the_run(tmp_path):
    save_index(UTTS, tmp_path / "train_list.jsonl")
    assert read_label_noise(tmp_path, UTTS) == {}
    write_moved_labels([MovedLabel("u1", "b", "a")], tmp_path / "label_noise.txt")
    assert read_label_noise(tmp_path, UTTS) == {"u1": MovedLabel("u1", "b", "a")}
    for line, why in [("zz b a", "'zz' is not in it"), ("u1 a b", "'u1' is labelled 'a' there, not 'b'")]:
        (tmp_path / "label_noise.txt").write_text(line + "\n")
        with pytest.raises(UserError, match=f"label_noise.txt:1: does not match the run: {why}"):
            read_label_noise(tmp_path, UTTS)


@pytest.mark.parametrize("overrides, message", [
    ({"oracle": "drop", "keep": [0, 80]}, "--keep: --oracle ignores the scores"),
    ({"relabel_margin": 0.2}, "--relabel-margin: --action drop relabels nothing"),
    ({"relabel_from": "all"}, "--relabel-from: --action drop relabels nothing"),
    ({"oracle": "drop", "relabel_from": "all"}, "--relabel-from: --oracle ignores the scores"),
    ({"drop_unsure": True}, "--drop-unsure: --action drop relabels nothing"),
    ({"oracle": "relabel", "drop_unsure": True}, "--drop-unsure: --oracle ignores the scores"),
    ({"cross_folds": 2}, "--cross-folds: --action drop relabels nothing"),
    ({"oracle": "drop", "cross_folds": 2}, "--cross-folds: --oracle ignores the scores"),
    ({"keep": [50, 50]}, "keeps nothing"),
])
def test_command_line_checks(overrides, message):
    overrides = {"source": "exp/x", **overrides}
    with pytest.raises(UserError, match=message):
        train_sort.check_command_line(build_config(overrides), overrides)


def test_source_checks(tmp_path):
    class Source:  # what check_source reads of a Trained
        cfg = build_config({"loss": "aam"})

    with pytest.raises(UserError, match="--oracle relabel: .*label_noise.txt: missing"):
        train_sort.check_source(build_config({"oracle": "relabel"}), Source, {}, tmp_path)
    with pytest.raises(UserError, match=f"--sort-by subcenter: {tmp_path} was trained with --loss aam"):
        train_sort.check_source(build_config({"sort_by": "subcenter"}), Source, {}, tmp_path)
    Source.cfg = build_config({"loss": "subcenter_aam"})
    train_sort.check_source(build_config({"sort_by": "subcenter"}), Source, {}, tmp_path)
    with pytest.raises(UserError, match="round 2 ranks with the retrained model"):
        train_sort.check_source(build_config({"sort_by": "subcenter", "rounds": 2}), Source, {}, tmp_path)


def same(a: dict, b: dict) -> bool:
    """Equal reports, NaN (a precision without removals) equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- rounds -------------------------------------------------------------------------------------------------

def test_rounds_stop_when_the_list_is_unchanged(tmp_path, monkeypatch):
    """Each round ranks with the previous round's model (scoring_checkpoint of its folder); a round selecting
    the previous round's list again is not retrained and ends the rounds."""
    chosen = iter([["a", None, "b", "b"], ["a", "b", "b", "b"], ["a", "b", "b", "b"], ["a"] * 4])
    retrained, models = [], []

    def retrain(cfg, r: Round, selection, utts, noise, eer_before):
        retrained.append(r.number)
        return {"round": r.number, "eer_after": eer_before / 2, "retrained": True}

    def select(trained, *args):
        models.append(trained)
        return Selection(next(chosen), 1, scores=np.zeros(4))

    monkeypatch.setattr(train_sort, "select", select)
    monkeypatch.setattr(train_sort, "retrain", retrain)
    monkeypatch.setattr(train_sort, "scoring_checkpoint", lambda run, cfg: run.name)
    monkeypatch.setattr(train_sort, "load_trained", lambda path: f"model of {path}")
    reports = train_sort.run_rounds(build_config({"rounds": 4}), tmp_path, "model0", UTTS, None, {}, 0.1)
    assert retrained == [1, 2] and [r["round"] for r in reports] == [1, 2, 3]
    assert models == ["model0", "model of round1", "model of round2"]
    saved = json.loads((tmp_path / "round3/report.json").read_text())
    assert same(saved, reports[2]) and not saved["retrained"] and "round 2 again" in saved["stopped"]
    assert saved["relabelled"] == 1 and saved["kept"] == 4 and saved["rounds_max"] == 4


# --- end to end ---------------------------------------------------------------------------------------------

def plant_noise(run: Path, dst: Path) -> list[MovedLabel]:
    """A copy of `run` whose training list has 4 utterances moved to the next speaker, recorded in
    label_noise.txt as train.py records it (the checkpoint's speakers are still the list's)."""
    shutil.copytree(run, dst)
    utts = load_utterance_list(dst / "train_list.jsonl")
    speakers = sorted({u.speaker for u in utts})
    moved = []
    for i in (0, 7, 14, 21):
        u = utts[i]
        other = speakers[(speakers.index(u.speaker) + 1) % len(speakers)]
        utts[i] = Utterance(u.key, u.path, other, u.num_samples)
        moved.append(MovedLabel(u.key, u.speaker, other))
    save_index(utts, dst / "train_list.jsonl")
    write_moved_labels(moved, dst / "label_noise.txt")
    return moved


def test_train_sort_auto_end_to_end(trained_run, tmp_path, capsys):
    plant_noise(trained_run, tmp_path / "noisy")
    argv = ["--from", str(tmp_path / "noisy"), "--exp-dir", str(tmp_path), "--keep", "0", "50", "--action", "auto",
            "--relabel-margin", "0", "--epochs", "1", "--threads", "1", "--val-trials", "", "--bootstrap", "0"]
    [report] = train_sort.main(argv)
    assert report["moved"] == 4 and report["total"] == 36 and report["retrained"]
    assert report["removed"] + report["relabelled"] == report["flagged"] > 0  # auto: each flagged one moves or goes
    assert report["relabelled_to_true"] <= report["relabelled_moved"] <= min(report["relabelled"], 4)
    assert 0 <= report["eer_after"] <= 1
    out = tmp_path / "noisy-keep0-50-centroid-auto-m0" / "round1"  # a margin other than the default: named
    with open(out / "utterance_scores.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 36 and sum(r["kept"] == "0" for r in rows) == report["removed"]
    assert sum(r["label"] not in ("-", r["speaker"]) for r in rows) == report["relabelled"]
    retrained = {u.key: u.speaker for u in load_utterance_list(out / "train_list.jsonl")}
    assert retrained == {r["key"]: r["label"] for r in rows if r["label"] != "-"}
    assert same(json.loads((out / "report.json").read_text()), report)
    assert "to their true speaker" in capsys.readouterr().out
    assert "0-50 (centroid, auto, margin 0, round 1)" in (tmp_path / "results.md").read_text()

    # the same command again: refused without --resume; with it, the finished round is reused, not retrained
    with pytest.raises(UserError, match="round1: holds an earlier round; pass --resume"):
        train_sort.main(argv)
    mtime = (out / "results.json").stat().st_mtime_ns
    [again] = train_sort.main([*argv, "--resume"])
    assert same(again, report) and (out / "results.json").stat().st_mtime_ns == mtime
    # a round killed after its training, before its report: --resume finishes it from its checkpoint
    (out / "report.json").unlink()
    (out / "results.json").unlink()
    [finished] = train_sort.main([*argv, "--resume"])
    assert same(finished, report) and (out / "results.json").is_file()
    # another selection in the same folder is not a resume
    with pytest.raises(UserError, match="round1: trained on another list than round 1 of this command selects"):
        train_sort.main([*argv[:argv.index("--action")], "--name", out.parent.name, "--resume"])


def labels_of(run: Path) -> dict[str, str]:
    with open(run / "round1" / "utterance_scores.tsv") as f:
        return {r["key"]: r["label"] for r in csv.DictReader(f, delimiter="\t")}


def test_drop_unsure_drops_what_margin_zero_relabels_and_the_margin_does_not(trained_run, tmp_path):
    """--drop-unsure at margin M drops exactly the utterances whose gain is in [0, M): those relabelled at margin 0
    but not at M. Three 1-epoch retrainings of the same scores (the source's embedding cache)."""
    plant_noise(trained_run, tmp_path / "noisy")
    common = ["--from", str(tmp_path / "noisy"), "--exp-dir", str(tmp_path), "--keep", "0", "50", "--action",
              "relabel", "--relabel-from", "all", "--epochs", "1", "--threads", "1", "--val-trials", "",
              "--bootstrap", "0"]
    reports = {}
    for name, extra in [("m0", ["--relabel-margin", "0"]), ("m03", ["--relabel-margin", "0.3"]),
                        ("unsure", ["--relabel-margin", "0.3", "--drop-unsure"])]:
        [reports[name]] = train_sort.main([*common, *extra, "--name", name])
    noisy = {u.key: u.speaker for u in load_utterance_list(tmp_path / "noisy" / "train_list.jsonl")}
    moved = {run: {k for k, label in labels_of(tmp_path / run).items() if label not in ("-", noisy[k])}
             for run in reports}
    dropped = {k for k, label in labels_of(tmp_path / "unsure").items() if label == "-"}
    assert moved["unsure"] == moved["m03"] <= moved["m0"]  # the same relabels as without --drop-unsure
    assert dropped == moved["m0"] - moved["m03"] and dropped  # the unsure ones: gain in [0, 0.3)
    assert reports["unsure"]["removed"] == len(dropped) and reports["m03"]["removed"] == 0
    assert reports["unsure"]["kept"] == 36 - len(dropped)


def test_score_average_ranks_with_the_weight_average_of_the_last_epochs(trained_run, tmp_path):
    """--score-average N: checkpoints/avg_last_N.pt of the source (runs.average_checkpoints), written once and
    reused while its epochs are the last N; a run with fewer epoch checkpoints is a one-line error."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert train_sort.scoring_checkpoint(run, Config(exp_dir=str(tmp_path))) == run / "checkpoints" / "best.pt"
    path = train_sort.scoring_checkpoint(run, Config(exp_dir=str(tmp_path), score_average=1))
    assert path == run / "checkpoints" / "avg_last_1.pt"
    state, epoch = (torch.load(p, weights_only=True) for p in (path, run / "checkpoints" / "epoch_0001.pt"))
    assert state["averaged_epochs"] == [1]
    assert all(torch.equal(state["model"][k], epoch["model"][k]) for k in epoch["model"])  # the mean of one
    mtime = path.stat().st_mtime_ns
    assert train_sort.scoring_checkpoint(run, Config(score_average=1)) == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match=r"--score-average 2: .*checkpoints holds 1 epoch checkpoint\(s\); the run "
                                        r"needs --keep-checkpoints 2 or more"):
        train_sort.scoring_checkpoint(run, Config(score_average=2))
    cfg = Config(keep=[0.0, 80.0], action="relabel", score_average=3)
    assert train_sort.method_text(cfg) == "0-80 (centroid, average of 3, relabel"


def test_the_retraining_scores_in_training_filtering_against_its_wrong_labels(trained_run, tmp_path, monkeypatch):
    """train_sort hands train() the keys whose retraining label is not their true speaker (moved ones left or
    sent to a third speaker, clean ones moved away), which log.csv's left-out precision and recall count."""
    moved = {m.key: m for m in plant_noise(trained_run, tmp_path / "noisy")}
    noisy = {u.key: u.speaker for u in load_utterance_list(tmp_path / "noisy" / "train_list.jsonl")}
    given = {}

    class Stop(Exception):
        pass

    def fake_train(cfg, *, utterances, run, kept, moved):
        given.update(run=run, moved=set(moved))
        raise Stop

    monkeypatch.setattr(train_sort, "train", fake_train)
    with pytest.raises(Stop):
        train_sort.main(["--from", str(tmp_path / "noisy"), "--exp-dir", str(tmp_path), "--keep", "0", "50",
                         "--action", "relabel", "--relabel-from", "all", "--relabel-margin", "0", "--threads", "1"])
    with open(given["run"] / "utterance_scores.tsv") as f:
        labels = {r["key"]: r["label"] for r in csv.DictReader(f, delimiter="\t")}
    truth = {k: moved[k].true_speaker if k in moved else speaker for k, speaker in noisy.items()}
    assert given["moved"] == {k for k, label in labels.items() if label != "-" and label != truth[k]}
    assert given["moved"] - set(moved)  # clean ones moved away count too (a tiny model relabels some at margin 0)


def test_cross_folds_relabel_where_the_held_out_model_agrees_and_drop_the_disputed(trained_run, tmp_path, capsys):
    """--cross-folds 2: two fold models trained on the halves of each speaker's list (as many steps as the
    source: 2 epochs against its 1), reused by a second command; the retraining relabels only what the source's
    model relabels too (margin 0, from all), and drops exactly the disputed ones."""
    plant_noise(trained_run, tmp_path / "noisy")
    common = ["--from", str(tmp_path / "noisy"), "--exp-dir", str(tmp_path), "--keep", "0", "50", "--action",
              "relabel", "--relabel-from", "all", "--relabel-margin", "0", "--epochs", "1", "--threads", "1",
              "--val-trials", "", "--bootstrap", "0"]
    [plain] = train_sort.main([*common, "--name", "plain"])
    [cross] = train_sort.main([*common, "--cross-folds", "2"])
    assert "relabels disputed by the held-out folds, dropped" in capsys.readouterr().out
    source = load_utterance_list(tmp_path / "noisy" / "train_list.jsonl")
    folds = [tmp_path / "noisy-folds2" / f"fold{k}" for k in (0, 1)]
    parts = [{u.key for u in load_utterance_list(f / "train_list.jsonl")} for f in folds]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == {u.key for u in source}
    assert all(load_yaml(f / "config.yaml")["epochs"] == 2 for f in folds)
    noisy = {u.key: u.speaker for u in source}
    moved = {run: {k for k, label in labels_of(tmp_path / run).items() if label not in ("-", noisy[k])}
             for run in ("plain", "noisy-keep0-50-centroid-relabel-all-m0-cross2")}
    dropped = {k for k, label in labels_of(tmp_path / "noisy-keep0-50-centroid-relabel-all-m0-cross2").items()
               if label == "-"}
    assert moved["noisy-keep0-50-centroid-relabel-all-m0-cross2"] <= moved["plain"]
    assert cross["removed"] == cross["disputed"] == len(dropped) and plain["removed"] == 0
    assert cross["relabelled"] + cross["disputed"] >= plain["relabelled"]  # each of plain's is agreed or disputed
    assert "cross-checked by 2 folds, round 1)" in (tmp_path / "results.md").read_text()

    # another margin asks for the same folds: the fold models are reused, not trained again
    stamps = [(f / "results.json").stat().st_mtime_ns for f in folds]
    other = [*common]
    other[other.index("--relabel-margin") + 1] = "0.3"
    train_sort.main([*other, "--cross-folds", "2"])
    assert [(f / "results.json").stat().st_mtime_ns for f in folds] == stamps
    # a fold folder trained on another list (another --seed deals other folds) is refused
    with pytest.raises(UserError, match="fold0: trained on another list than this command's fold"):
        train_sort.main([*common, "--cross-folds", "2", "--seed", "5", "--name", "seed5"])


def test_fold_state_new_finished_unfinished_and_another_list(tmp_path):
    out = tmp_path / "noisy-folds2" / "fold0"
    part = UTTS[:2]
    assert train_sort.fold_state(Config(), out, part) == "new"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "epoch_0001.pt").write_bytes(b"")
    save_index(part, out / "train_list.jsonl")
    with pytest.raises(UserError, match="fold0: holds an unfinished fold model; pass --resume to continue it"):
        train_sort.fold_state(Config(), out, part)
    assert train_sort.fold_state(Config(resume=True), out, part) == "unfinished"
    (out / "results.json").write_text("{}")
    assert train_sort.fold_state(Config(), out, part) == "finished"
    with pytest.raises(UserError, match="fold0: trained on another list than this command's fold"):
        train_sort.fold_state(Config(resume=True), out, UTTS[2:])
