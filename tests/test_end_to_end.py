"""The three scripts on a tiny generated corpus: train -> inference -> train_sort, and resume."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import inference
import train
import train_sort
from tests.conftest import subprocess_env, tiny_train_args

ROOT = Path(__file__).resolve().parents[1]


def test_train_inference_train_sort(tiny_corpus, tmp_path, capsys):
    exp = train.main(tiny_train_args(tiny_corpus, tmp_path, "run", "--label-noise", "0.2"))
    assert exp == tmp_path / "run"
    rows = list(csv.DictReader(open(exp / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(0 <= float(r["val_eer"]) <= 1 for r in rows)
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["best.pt", "epoch_0001.pt", "epoch_0002.pt"]
    state = torch.load(exp / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["channels"] == 16 and len(state["speakers"]) == 6
    moved = (exp / "label_noise.txt").read_text().splitlines()
    assert len(moved) == round(0.2 * 36)
    results = json.loads((exp / "results.json").read_text())
    assert 0 <= results["results"][0]["eer"] <= 1

    capsys.readouterr()
    [result] = inference.main(["--checkpoint", str(exp), "--threads", "1"])
    assert "EER" in capsys.readouterr().out and result.num_trials == 12
    scores = (exp / "scores" / "trials.txt").read_text().splitlines()
    assert len(scores) == 12 and len(scores[0].split()) == 4

    [report] = train_sort.main(["--from", str(exp), "--keep", "10", "90", "--epochs", "1", "--threads", "1"])
    assert report["kept"] < report["total"] == 36 and report["moved"] == len(moved)
    assert 0 <= report["eer_after"] <= 1
    table = (tmp_path / "results.md").read_text().splitlines()
    assert len(table) == 4 and "10-90 (centroid, round 1)" in table[-1] and "| 0.2 |" in table[-1]


def test_killed_run_resumes_to_identical_weights(tiny_corpus, tmp_path):
    args = tiny_train_args(tiny_corpus, tmp_path, "{}", "--epochs", "3", "--val-trials", "", "--test-trials")
    full = [a.replace("{}", "full") for a in args]
    train.main(full)

    killed = [a.replace("{}", "killed") for a in args]
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *killed], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "epoch_0001.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (tmp_path / "killed" / "checkpoints" / "epoch_0003.pt").exists()

    train.main(["--resume", "--exp-dir", str(tmp_path), "--name", "killed", "--threads", "1"])
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_0003.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "epoch_0003.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["head"]:
        assert torch.equal(a["head"][key], b["head"][key]), key
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]
