"""The one evaluation path: evaluation.evaluate against a brute-force scoring, and train.py's numbers equal to
`python inference.py --checkpoint RUN` on the same run."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.features import frontend_from_config
from data.trials import read_trials
from embedding import Embedder, Extraction
from evaluation import EvalPlan, evaluate, load_trial_lists
from metrics import compute_eer, compute_min_dcf
from runs import load_trained
from scoring import Scorer
from tests.conftest import subprocess_env, tiny_train_args

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_is_cosine_scoring_of_the_embeddings(tiny_corpus, trained_run):
    trained = load_trained(trained_run / "checkpoints/best.pt")
    embedder = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"), "fp32")
    lists = load_trial_lists([str(tiny_corpus / "test/trials.txt"), str(trained_run / "trials_kaldi.txt")],
                             str(tiny_corpus / "test/wav"))
    rows = evaluate(embedder, lists, Scorer(), EvalPlan(bootstrap=20, seed=1))
    assert [r.trial_list.name for r in rows] == ["trials", "trials_kaldi"] and rows[0].score_file is None
    trials = read_trials(tiny_corpus / "test/trials.txt")
    emb = embedder.extract(lists[0].files)
    scores = np.array([emb[t.enroll] @ emb[t.test] for t in trials])
    labels = np.array([t.label for t in trials])
    for row in rows:
        np.testing.assert_allclose(row.result.scores, scores, atol=1e-6)
        assert row.result.eer == pytest.approx(compute_eer(scores, labels).eer, abs=1e-6)
        assert row.result.min_dcf[0.01] == pytest.approx(compute_min_dcf(scores, labels, 0.01).min_dcf, abs=1e-6)
        assert row.result.ci.rounds == 20 and row.min_cllr is not None


def test_train_results_equal_inference_on_the_same_run(tiny_corpus, tmp_path):
    """train.py's validation, its final test and inference.py are one path: with a non-default extraction
    policy (mean of 2 crops) set at training time, results.json, the log's validation EER and a fresh
    `python inference.py --checkpoint RUN` (embedding cache deleted) give the same numbers."""
    run = train.main(tiny_train_args(tiny_corpus, tmp_path, "run", "--epochs", "1", "--eval-crops", "2",
                                     "--eval-crop-frames", "80", "--bootstrap", "0"))
    recorded = json.loads((run / "results.json").read_text())
    shutil.rmtree(run / "embeddings")
    proc = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--checkpoint", str(run), "--threads", "1"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "eval/results.json").read_text())
    assert report["embedding"]["crops"] == 2 and report["embedding"]["crop_frames"] == 80
    assert recorded["epoch"] == 1 and len(recorded["results"]) == len(report["results"]) == 1
    assert recorded["results"][0]["eer"] == report["results"][0]["eer"]
    assert recorded["results"][0]["min_dcf"] == report["results"][0]["min_dcf"]

    trained = load_trained(run / "checkpoints/best.pt")
    embedder = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"),
                        recorded_precision(report), Extraction(crops=2, crop_frames=80))
    [val] = evaluate(embedder, load_trial_lists([str(tiny_corpus / "val/trials.txt")], str(tiny_corpus / "val/wav")),
                     Scorer(), EvalPlan())
    [row] = csv.DictReader(open(run / "log.csv"))
    assert float(row["val_eer"]) == pytest.approx(val.result.eer, abs=5e-5)


def recorded_precision(report: dict) -> str:
    return report["precision"]
