"""The one evaluation path: evaluation.evaluate against a brute-force scoring, and train.py's numbers equal to
`python inference.py --checkpoint RUN` on the same run."""

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import train
from config import build_config
from data.features import frontend_from_config
from data.trials import read_trials
from embedding import Embedder, Extraction
from evaluation import EvalPlan, evaluate, evaluate_checkpoint, load_trial_lists
from metrics import compute_eer, compute_min_dcf
from runs import load_trained
from scoring import Scorer
from tests.conftest import make_cnceleb, subprocess_env, tiny_train_args

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


def test_cnceleb_enrolment_models_scored_and_reported(tiny_corpus, trained_run, tmp_path):
    """A CN-Celeb list (trials.lst + enroll.map, files under data/ and eval/) through the one evaluation path:
    mean_embedding scores the cosine against the normalised mean of the model's file embeddings, score_average
    the mean of the files' cosines; evaluate() takes it beside a VoxCeleb list, evaluate_checkpoint reports it
    like any other list."""
    waves = {d.name: [sf.read(p, dtype="float32")[0] for p in sorted(d.rglob("*.wav"))]
             for d in sorted((tiny_corpus / "test/wav").iterdir())}
    root = make_cnceleb(tmp_path / "CN-Celeb_flac", waves, sorted(waves))
    cn_list = str(root / "eval/lists/trials.lst")
    trained = load_trained(trained_run / "checkpoints/best.pt")
    embedder = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"), "fp32")
    [cn] = load_trial_lists([cn_list], str(root))
    vox = load_trial_lists([str(tiny_corpus / "test/trials.txt")], str(tiny_corpus / "test/wav"))[0]
    emb = embedder.extract(cn.files)
    expected = {"mean_embedding": [_unit(np.mean([emb[k] for k in cn.models[t.enroll]], axis=0)) @ emb[t.test]
                                   for t in cn.trials],
                "score_average": [np.mean([emb[k] @ emb[t.test] for k in cn.models[t.enroll]]) for t in cn.trials]}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints/best.pt", run / "checkpoints/best.pt")
    for mode, scores in expected.items():
        rows = evaluate(embedder, [vox, cn], Scorer(), EvalPlan(enroll_mode=mode))
        assert rows[0].trial_list is vox and rows[1].trial_list is cn
        np.testing.assert_allclose(rows[1].result.scores, scores, atol=1e-5)
        cfg = build_config({"test_data": str(root), "test_trials": [cn_list], "bootstrap": 0, "enroll_mode": mode,
                            "precision": "fp32", "device": "cpu"}, base=dataclasses.asdict(trained.cfg))
        [row] = evaluate_checkpoint(cfg, run / "checkpoints/best.pt").rows
        np.testing.assert_allclose(row.result.scores, scores, atol=1e-5)
    report = json.loads((run / "eval/results.json").read_text())
    assert report["enroll_mode"] == "score_average" and report["results"][0]["enrolment_models"] == 3
    assert report["results"][0]["enroll_map"] == str(root / "eval/lists/enroll.map")
    assert "mean of the enrolment files' scores" in (run / "eval/results.md").read_text()
    first = (run / "scores/trials.txt").read_text().splitlines()[0].split()
    assert first[:2] == [cn.trials[0].enroll, cn.trials[0].test] and first[0].endswith("-enroll")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_intervals_resample_speakers_by_default_and_say_so(tiny_corpus, trained_run):
    from evaluation import trial_list_speakers

    trained = load_trained(trained_run / "checkpoints/best.pt")
    embedder = Embedder(trained.model, frontend_from_config(trained.cfg), torch.device("cpu"), "fp32")
    [tl] = load_trial_lists([str(tiny_corpus / "test/trials.txt")], str(tiny_corpus / "test/wav"))
    assert tl.speakers is not None and tl.speakers.num_speakers == 3  # the tiny corpus' test speakers
    [by_speaker] = evaluate(embedder, [tl], Scorer(), EvalPlan(bootstrap=50))
    [by_trial] = evaluate(embedder, [tl], Scorer(), EvalPlan(bootstrap=50, bootstrap_unit="trial"))
    assert by_speaker.result.ci.unit == "speaker" and by_trial.result.ci.unit == "trial"
    trials = read_trials(tiny_corpus / "test/trials.txt")
    kaldi_root = tiny_corpus.parent / "kaldi"
    kaldi_root.mkdir(exist_ok=True)
    (kaldi_root / "utt2spk").write_text("".join(f"{k.replace('/', '_')} spk{k[:7]}\n"
                                                for t in trials for k in (t.enroll, t.test)))
    renamed = [type(t)(t.label, t.enroll.replace("/", "_"), t.test.replace("/", "_")) for t in trials]
    kaldi = trial_list_speakers(renamed, str(kaldi_root), cnceleb=False)
    assert kaldi is not None and kaldi.num_speakers == 3
    assert trial_list_speakers(renamed, str(tiny_corpus), cnceleb=False) is None  # no utt2spk, no folders
    cn = trial_list_speakers([type(t)(1, "id00800-enroll", "test/id00800-vlog-01-002.wav") for t in trials[:1]],
                             "", cnceleb=True)
    assert cn.enroll.tolist() == cn.test.tolist() == [0]


class KeyEmbedder:
    """Stands in for an Embedder in build_cohort: a fixed unit vector per key, and the keys it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(self, paths: dict[str, str], lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        self.asked += list(paths)
        rng = {k: np.random.default_rng(sum(map(ord, k))) for k in paths}
        return {k: _unit(rng[k].normal(size=8)) for k in paths}


def test_cohort_size_zero_means_all_and_negative_is_rejected():
    from config import ConfigError

    assert build_config({"cohort_utts_per_speaker": 0}).cohort_utts_per_speaker == 0
    assert build_config({"cohort_utts_per_speaker": 7}).cohort_utts_per_speaker == 7
    with pytest.raises(ConfigError, match="cohort_utts_per_speaker"):
        build_config({"cohort_utts_per_speaker": -1})


@pytest.mark.parametrize("per_speaker", [1, 3, 4, 0])
def test_cohort_takes_min_of_n_and_count_utterances_of_each_speaker(tmp_path, per_speaker):
    from collections import Counter

    from data.corpus import Utterance, save_index
    from evaluation import build_cohort, scorer_from_config

    counts = {"spk_a": 5, "spk_b": 2, "spk_c": 1, "spk_d": 4}
    utts = [Utterance(f"{s}/{i}.wav", f"/nowhere/{s}/{i}.wav", s, 16000) for s, n in counts.items() for i in range(n)]
    save_index(utts, tmp_path / "train_list.jsonl")
    embedder = KeyEmbedder()
    cohort = build_cohort(embedder, tmp_path, per_speaker, seed=3, subtract=False)
    taken = Counter(k.split("/")[0] for k in embedder.asked)
    assert taken == {s: (n if per_speaker == 0 else min(per_speaker, n)) for s, n in counts.items()}
    assert cohort.num_utts == sum(taken.values()) and cohort.speakers.shape == (4, 8)
    emb = embedder.embed({k: "" for k in embedder.asked})
    assert np.allclose(cohort.mean, np.mean([emb[k] for k in emb], axis=0))  # the mean of the utterances taken
    cfg = build_config({"cohort_utts_per_speaker": per_speaker, "seed": 3, "subtract_mean": True})
    embedder.asked = []
    scorer = scorer_from_config(cfg, tmp_path, embedder, ["none"])  # the config's size reaches the cohort
    assert scorer.subtract and Counter(k.split("/")[0] for k in embedder.asked) == taken
