"""Embedding extraction (batching, crops, cache), the evaluation outputs and pair mode, on generated files and a
one-epoch model trained by train.py on the tiny corpus."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import inference
import train
from config import Config
from data.dataset import read_trials
from inference import Embedder, Extraction, Extractor, build_frontend, extract_embeddings
from models import build_model
from tests.conftest import tiny_train_args
from utils import UserError, compute_eer

SR = 16000


@pytest.fixture(scope="module")
def tiny():
    """A small random ECAPA-TDNN (eval mode) and the default front end, on the CPU in fp32, one thread (as
    the script tests below ask with --threads 1; a shared CPU runs it faster than two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_model("ecapa_tdnn", n_mels=80, channels=16).eval(), build_frontend(Config())
    torch.set_num_threads(threads)


def write_waves(folder: Path, lengths: dict[str, int], seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    paths = {}
    for key, n in lengths.items():
        path = folder / f"{key}.wav"
        sf.write(path, (0.1 * rng.normal(size=n)).astype(np.float32), SR, subtype="PCM_16")
        paths[key] = str(path)
    return paths


def embed(tiny, paths, **kwargs):
    model, frontend = tiny
    return extract_embeddings(model, frontend, paths, sample_rate=SR, device=torch.device("cpu"), precision="fp32",
                              **kwargs)


def test_batches_of_equal_frame_counts_match_one_by_one(tmp_path, tiny):
    # 19200 and 19250 samples give the same 118 frames (the last 50 samples fall in no frame); 4000 samples is
    # shorter than MIN_EVAL_FRAMES and is wrap-padded; 25000 is alone in its batch
    lengths = {"a": 19200, "b": 19200, "c": 19250, "d": 25000, "e": 4000, "f": 19200}
    paths = write_waves(tmp_path, lengths)
    one = embed(tiny, paths, batch_size=1)
    batched = embed(tiny, paths, batch_size=8)
    assert list(batched) == list(paths)
    for key in paths:
        assert np.linalg.norm(batched[key]) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(batched[key], one[key], atol=2e-5)
    run = Extractor(*tiny, SR, torch.device("cpu"), "fp32", Extraction(batch_size=8))
    assert run.full_length_batches(lengths) == [["d"], ["a", "b", "c", "f"], ["e"]]


def test_bucket_crop_batches_within_the_tolerance_and_cuts_to_the_shortest(tmp_path, tiny):
    frames = {"a": 100, "b": 98, "c": 95, "d": 90, "e": 80}
    lengths = {k: (t - 1) * 160 + 400 for k, t in frames.items()}  # exactly t frames each
    run = Extractor(*tiny, SR, torch.device("cpu"), "fp32", Extraction(batch_size=16, bucket_crop=0.1))
    assert run.full_length_batches(lengths) == [["a", "b", "c", "d"], ["e"]]  # 90 >= 0.9 * 100 > 80
    exact = Extractor(*tiny, SR, torch.device("cpu"), "fp32", Extraction(batch_size=16))
    assert exact.full_length_batches(lengths) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    paths = write_waves(tmp_path, lengths)
    cut = embed(tiny, paths, batch_size=16, bucket_crop=0.1)
    one = embed(tiny, paths, batch_size=1)
    np.testing.assert_allclose(cut["d"], one["d"], atol=2e-5)  # the shortest of its batch: whole
    np.testing.assert_allclose(cut["e"], one["e"], atol=2e-5)  # alone
    wave = inference.load_audio(paths["a"], SR)
    centred = wave[5 * 160:5 * 160 + lengths["d"]]  # 100 -> 90 frames: 5 dropped at each end
    np.testing.assert_allclose(cut["a"], run.forward([centred])[0], atol=2e-5)
    assert not np.allclose(cut["a"], one["a"], atol=1e-3)


def test_crops_are_evenly_spaced_and_averaged(tmp_path, tiny):
    paths = write_waves(tmp_path, {"long": 40000, "short": 9000})
    run = Extractor(*tiny, SR, torch.device("cpu"), "fp32", Extraction(crops=3, crop_frames=100, batch_size=4))
    window = 99 * 160 + 400
    assert run.crop_starts(40000) == [0, round((40000 - window) / 2), 40000 - window]
    assert run.crop_starts(9000) == [0]  # shorter than a crop: one, wrap-padded
    got = embed(tiny, paths, crops=3, crop_frames=100, batch_size=4)
    wave = inference.load_audio(paths["long"], SR)
    crops = run.forward([wave[s:s + window] for s in run.crop_starts(40000)])
    mean = crops.mean(0)
    np.testing.assert_allclose(got["long"], mean / np.linalg.norm(mean), atol=2e-5)
    short = inference.wrap_pad(inference.load_audio(paths["short"], SR), window)
    np.testing.assert_allclose(got["short"], run.forward([short])[0], atol=2e-5)


def test_embedding_cache_embeds_each_file_once(tmp_path, tiny, monkeypatch):
    paths = write_waves(tmp_path, {"a": 12000, "b": 15000, "c": 16000})
    embedder = Embedder(*tiny, SR, torch.device("cpu"), "fp32", Extraction(), tmp_path / "cache", "best", "abc")
    calls, real = [], inference.extract_embeddings

    def counting(model, frontend, paths, **kwargs):
        calls.append(set(paths))
        return real(model, frontend, paths, **kwargs)

    monkeypatch.setattr(inference, "extract_embeddings", counting)
    first = embedder.embed(paths)
    again = embedder.embed({"b": paths["b"], "a": paths["a"]})
    assert calls == [{"a", "b", "c"}] and list(again) == ["b", "a"]
    np.testing.assert_array_equal(again["a"], first["a"])
    (tmp_path / "x").mkdir()
    moved = write_waves(tmp_path / "x", {"a": 12000}, seed=3)
    embedder.embed({"a": moved["a"], "c": paths["c"]})  # same key, another file: embedded anew
    assert calls[-1] == {"a"}
    assert embedder.cache_path.name.startswith("best-") and len(list((tmp_path / "cache").iterdir())) == 1
    other = embedder.with_max_frames(100)
    assert other.cache_path != embedder.cache_path
    other.embed({"a": paths["a"]})
    assert calls[-1] == {"a"}


# --- the script on a trained run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tiny_corpus, tmp_path_factory):
    """One epoch of train.py on the tiny corpus; its test list also written in Kaldi's format."""
    exp = train.main(tiny_train_args(tiny_corpus, tmp_path_factory.mktemp("exp"), "run", "--epochs", "1"))
    kaldi = exp / "trials_kaldi.txt"
    kaldi.write_text("".join(f"{t.enroll} {t.test} {'target' if t.label else 'nontarget'}\n"
                             for t in read_trials(tiny_corpus / "test/trials.txt")))
    return exp


def common(corpus: Path, exp: Path) -> list[str]:
    return ["--checkpoint", str(exp), "--threads", "1", "--precision", "fp32", "--test-data",
            str(corpus / "test/wav"), "--val-data", str(corpus / "val/wav")]


def test_evaluation_writes_every_output(tiny_corpus, run, capsys):
    results = inference.main([
        *common(tiny_corpus, run), "--test-trials", str(tiny_corpus / "test/trials.txt"), str(run / "trials_kaldi.txt"),
        "--score-norm", "none", "asnorm", "--subtract-mean", "--test-durations", "1", "--bootstrap", "50",
        "--calibrate", str(tiny_corpus / "val/trials.txt"), "--save-embeddings"])
    assert len(results) == 2 * 2 * 2  # lists x durations x normalisations
    out = capsys.readouterr().out
    assert "| trials_kaldi | " in out and "calibration asnorm on" in out
    first, kaldi = results[0], results[4]
    assert first.eer == kaldi.eer and np.array_equal(first.scores, kaldi.scores)  # same trials, both formats
    assert first.eer == compute_eer(first.scores, first.labels).eer and first.ci.eer[0] <= first.eer <= first.ci.eer[1]
    report = json.loads((run / "eval/results.json").read_text())
    assert report["checkpoint_sha1"] == inference.file_sha1(run / "checkpoints/best.pt")
    assert report["metrics"]["p_targets"] == [0.01, 0.05] and report["cohort"]["speakers"] == 6
    assert report["cohort"]["top_n"] == 300 and report["subtract_mean"] is True
    assert report["embedding"]["crops"] == 0 and "exact" in report["embedding"]["describe"]
    row = report["results"][3]
    assert (row["score_norm"], row["test_duration_s"]) == ("asnorm", 1.0)
    assert row["trials_sha1"] == inference.file_sha1(tiny_corpus / "test/trials.txt")
    assert row["cllr"] is not None and row["min_cllr"] <= row["cllr"] + 1e-9
    assert set(json.loads((run / "eval/calibration.json").read_text())) == {"none", "asnorm"}
    for name in ("det.png", "hist_trials.png", "hist_trials_kaldi.png", "results.md"):
        assert (run / "eval" / name).stat().st_size > 0
    assert "sha1" in (run / "eval/results.md").read_text()
    lines = (run / "scores/trials.asnorm.1s.txt").read_text().splitlines()
    assert len(lines) == 12 and lines[0].split()[3] in ("0", "1")
    index = (run / "eval/embeddings.txt").read_text().splitlines()
    assert np.load(run / "eval/embeddings.npy").shape[0] == len(index)
    assert len(list((run / "embeddings").glob("best-*.npz"))) == 2  # full length, and the 1 s test side


def test_pair_mode_scores_averages_enrolment_and_decides(tiny_corpus, run, capsys):
    inference.main([*common(tiny_corpus, run), "--calibrate", str(tiny_corpus / "val/trials.txt"),
                    "--bootstrap", "0"])
    wavs = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    enroll, tests = wavs[:2], wavs[2:4]
    capsys.readouterr()
    results = inference.main([*common(tiny_corpus, run), "--enroll", *enroll, "--test", *tests])
    out = capsys.readouterr().out
    trained = inference.load_trained(run / "checkpoints/best.pt")
    emb = extract_embeddings(trained.model, build_frontend(trained.cfg), dict(zip(wavs[:4], wavs[:4])),
                             sample_rate=SR, device=torch.device("cpu"), precision="fp32")
    mean = emb[enroll[0]] + emb[enroll[1]]
    mean = mean / np.linalg.norm(mean)
    calibration = json.loads((run / "eval/calibration.json").read_text())["none"]["calibration"]
    for r, path in zip(results, tests):
        assert r.score == pytest.approx(float(mean @ emb[path]), abs=1e-5)
        assert r.llr == pytest.approx(calibration["slope"] * r.score + calibration["offset"])
        assert r.accept == (r.llr >= np.log(99)) and "Bayes threshold at p_target 0.01" in r.rule
        assert f"{path}: score {r.score:.4f}  llr {r.llr:.3f}" in out
    [eer_rule] = inference.main([*common(tiny_corpus, run), "--enroll", enroll[0], "--test", tests[0],
                                 "--decision-threshold", "eer"])
    assert "development EER threshold" in eer_rule.rule
    [stale] = inference.main([*common(tiny_corpus, run), "--enroll", enroll[0], "--test", tests[0], "--eval-crops",
                              "2"])
    assert stale.llr is None and stale.accept is None and "no decision" in stale.rule


def test_clear_errors(tiny_corpus, run, tmp_path):
    trials = tmp_path / "list.txt"
    trials.write_text("1 id20000/s01/00001.wav nope/1.wav\n0 nope/2.wav id20000/s01/00001.wav\n")
    with pytest.raises(UserError, match=r"list.txt: 2 of 3 trial files are not in .*, first: nope/1.wav"):
        inference.main([*common(tiny_corpus, run), "--test-trials", str(trials)])
    with pytest.raises(UserError, match="pair mode needs both --enroll"):
        inference.main([*common(tiny_corpus, run), "--enroll", "a.wav"])
    with pytest.raises(UserError, match="nope.wav: no such audio file"):
        inference.main([*common(tiny_corpus, run), "--enroll", "nope.wav", "--test", "nope.wav"])


def test_evaluate_trials_keeps_its_training_signature(tiny_corpus, run):
    trained = inference.load_trained(run / "checkpoints/best.pt")
    cache = {}
    result = inference.evaluate_trials(trained.model, build_frontend(trained.cfg), str(tiny_corpus / "test/trials.txt"),
                                       str(tiny_corpus / "test/wav"), sample_rate=SR, device=torch.device("cpu"),
                                       precision="fp32", max_frames=0, cache=cache)
    assert result.num_trials == 12 and 0 <= result.eer <= 1 and set(result.min_dcf) == {0.01, 0.05}
    assert result.ci is None and len(cache) == len({k for t in read_trials(tiny_corpus / "test/trials.txt")
                                                     for k in (t.enroll, t.test)})


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
    from config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(argv, "test")
    assert message in str(err.value)
