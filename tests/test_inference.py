"""inference.py as a user runs it: the evaluation of a trained run, pair mode, and its one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from config import ConfigError, parse_config
from data.features import frontend_from_config
from embedding import Embedder, file_sha1
from metrics import compute_eer
from runs import load_trained
from tests.conftest import subprocess_env
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(trained_run):
    return trained_run


def common(corpus: Path, exp: Path) -> list[str]:
    return ["--checkpoint", str(exp), "--threads", "1", "--precision", "fp32", "--test-data",
            str(corpus / "test/wav"), "--val-data", str(corpus / "val/wav")]


def test_evaluation_writes_every_output(tiny_corpus, run, capsys):
    caches = set((run / "embeddings").glob("best-*"))  # train.py's final test made one (its precision)
    results = inference.main([
        *common(tiny_corpus, run), "--test-trials", str(tiny_corpus / "test/trials.txt"), str(run / "trials_kaldi.txt"),
        "--score-norm", "none", "asnorm", "--subtract-mean", "--test-durations", "1", "--bootstrap", "50",
        "--calibrate", str(tiny_corpus / "val/trials.txt"), "--save-embeddings"])
    assert len(results) == 2 * 2 * 2  # lists x durations x normalisations
    out = capsys.readouterr().out
    assert "| trials_kaldi | " in out
    first, kaldi = results[0], results[4]
    assert first.eer == kaldi.eer and np.array_equal(first.scores, kaldi.scores)  # same trials, both formats
    assert first.eer == compute_eer(first.scores, first.labels).eer and first.ci.eer[0] <= first.eer <= first.ci.eer[1]
    report = json.loads((run / "eval/results.json").read_text())
    assert report["checkpoint_sha1"] == file_sha1(run / "checkpoints/best.pt")
    assert report["metrics"]["p_targets"] == [0.01, 0.05] and report["cohort"]["speakers"] == 6
    assert report["cohort"]["top_n"] == 300 and report["subtract_mean"] is True
    assert report["embedding"]["crops"] == 0 and "exact" in report["embedding"]["describe"]
    row = report["results"][3]
    assert (row["score_norm"], row["test_duration_s"]) == ("asnorm", 1.0)
    assert row["trials_sha1"] == file_sha1(tiny_corpus / "test/trials.txt")
    assert row["cllr"] is not None and row["min_cllr"] <= row["cllr"] + 1e-9
    assert set(json.loads((run / "eval/calibration.json").read_text())) == {"none", "asnorm"}
    for name in ("det.png", "hist_trials.png", "hist_trials_kaldi.png", "results.md"):
        assert (run / "eval" / name).stat().st_size > 0
    assert "sha1" in (run / "eval/results.md").read_text()
    lines = (run / "scores/trials.asnorm.1s.txt").read_text().splitlines()
    assert len(lines) == 12 and lines[0].split()[3] in ("0", "1")
    index = (run / "eval/embeddings.txt").read_text().splitlines()
    assert np.load(run / "eval/embeddings.npy").shape[0] == len(index)
    assert len(set((run / "embeddings").glob("best-*")) - caches) == 2  # full length (fp32), the 1 s test side


def test_pair_mode_scores_averages_enrolment_and_decides(tiny_corpus, run, capsys):
    inference.main([*common(tiny_corpus, run), "--calibrate", str(tiny_corpus / "val/trials.txt"),
                    "--bootstrap", "0"])
    wavs = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    enroll, tests = wavs[:2], wavs[2:4]
    capsys.readouterr()
    results = inference.main([*common(tiny_corpus, run), "--enroll", *enroll, "--test", *tests])
    out = capsys.readouterr().out
    trained = load_trained(run / "checkpoints/best.pt")
    emb = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"), "fp32").extract(
        dict(zip(wavs[:4], wavs[:4])))
    mean = emb[enroll[0]] + emb[enroll[1]]
    mean = mean / np.linalg.norm(mean)
    calibration = json.loads((run / "eval/calibration.json").read_text())["none"]["calibration"]
    for r, path in zip(results, tests):
        assert r.score == pytest.approx(float(mean @ emb[path]), abs=1e-5)
        d = r.decision
        assert d.llr == pytest.approx(calibration["slope"] * r.score + calibration["offset"])
        assert d.accept == (d.llr >= np.log(99)) and "Bayes threshold at p_target 0.01" in d.rule
        assert f"{path}: score {r.score:.4f}  llr {d.llr:.3f}" in out
    [eer_rule] = inference.main([*common(tiny_corpus, run), "--enroll", enroll[0], "--test", tests[0],
                                 "--decision-threshold", "eer"])
    assert "development EER threshold" in eer_rule.decision.rule
    [stale] = inference.main([*common(tiny_corpus, run), "--enroll", enroll[0], "--test", tests[0], "--eval-crops",
                              "2"])
    d = stale.decision
    assert d.llr is None and d.accept is None and "no decision" in d.rule


def test_clear_errors(tiny_corpus, run, tmp_path):
    trials = tmp_path / "list.txt"
    trials.write_text("1 id20000/s01/00001.wav nope/1.wav\n0 nope/2.wav id20000/s01/00001.wav\n")
    with pytest.raises(UserError, match=r"list.txt: 2 of 3 trial files are not in .*, first: nope/1.wav"):
        inference.main([*common(tiny_corpus, run), "--test-trials", str(trials)])
    with pytest.raises(UserError, match="pair mode needs both --enroll"):
        inference.main([*common(tiny_corpus, run), "--enroll", "a.wav"])
    with pytest.raises(UserError, match="nope.wav: no such audio file"):
        inference.main([*common(tiny_corpus, run), "--enroll", "nope.wav", "--test", "nope.wav"])


@pytest.mark.parametrize("argv, message", [
    (["--score-norm", "znorm"], "score_norm: 'znorm' is not one of: none, snorm, asnorm"),
    (["--score-norm", "none", "none"], "score_norm: needs one or more distinct entries"),
    (["--eval-bucket-crop", "1"], "eval_bucket_crop: must be in [0, 1)"),
    (["--eval-crop-frames", "0"], "eval_crop_frames: must be > 0"),
    (["--test-durations", "2,0"], "test_durations: seconds must be > 0"),
    (["--decision-p-target", "1"], "decision_p_target: must be in (0, 1)"),
    (["--decision-threshold", "fixed"], "decision_threshold: 'fixed' is not one of: bayes, min_dcf, eer"),
])
def test_evaluation_settings_are_validated(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_config(argv, "test", "inference.py")
    assert message in str(err.value)


@pytest.mark.parametrize("flag, value, saved", [
    ("--n-mels", "40", "80"), ("--window-type", "povey", "'hamming'"), ("--sample-rate", "8000", "16000"),
    ("--model", "resnet18", "'ecapa_tdnn'"), ("--channels", "32", "16"),
])
def test_a_flag_that_changes_the_trained_model_is_an_error(tiny_corpus, run, flag, value, saved):
    key = flag[2:].replace("-", "_")
    message = rf"^{key}: {run}/checkpoints/best.pt was trained with {saved}, not .*\(drop {flag}\)$"
    with pytest.raises(ConfigError, match=message):
        inference.main([*common(tiny_corpus, run), flag, value])
    inference.main([*common(tiny_corpus, run), "--bootstrap", "0", flag, str(load_trained(
        run / "checkpoints/best.pt").cfg.__dict__[key])])  # the checkpoint's own value is fine


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0.1"], "--lr: inference.py does not use lr (a setting of train.py, train_sort.py)"),
    (["--keep", "0", "90"], "--keep: inference.py does not use keep (a setting of train_sort.py)"),
])
def test_a_flag_the_script_does_not_use_is_a_one_line_error(argv, message):
    proc = subprocess.run([sys.executable, str(ROOT / "inference.py"), *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"inference.py: error: {message}\n"


def test_pair_mode_score_average_is_the_mean_of_the_enrolment_scores(tiny_corpus, run, capsys):
    wavs = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    enroll, tests = wavs[:3], wavs[3:5]
    results = inference.main([*common(tiny_corpus, run), "--enroll", *enroll, "--test", *tests, "--enroll-mode",
                              "score_average"])
    trained = load_trained(run / "checkpoints/best.pt")
    emb = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"), "fp32").extract(
        dict(zip(wavs[:5], wavs[:5])))
    for r, path in zip(results, tests):
        assert r.score == pytest.approx(float(np.mean([emb[e] @ emb[path] for e in enroll])), abs=1e-5)
    assert "3 file(s), scores averaged" in capsys.readouterr().out
