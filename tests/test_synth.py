"""The demo-corpus generator: layout, format, disjoint splits, trial lists, determinism, voice parameters."""

import hashlib
import json

import numpy as np
import soundfile as sf

from data.dataset import read_trials, scan_corpus, speakers_of
from data.synth import CorpusSpec, generate_corpus
from tests.conftest import TINY_SPEC


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_format_and_trials(tiny_corpus):
    assert (tiny_corpus / ".complete").is_file()
    speakers = {}
    for split in ("train", "val", "test"):
        utts = scan_corpus(tiny_corpus / split / "wav")
        speakers[split] = set(speakers_of(utts))
        assert all(len(u.key.split("/")) == 3 for u in utts)  # <speaker>/<session>/<n>.wav
        info = sf.info(utts[0].path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert len(speakers["train"]) == TINY_SPEC.num_train_speakers
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    for split in ("val", "test"):
        trials = read_trials(tiny_corpus / split / "trials.txt")
        assert sum(t.label for t in trials) == len(trials) // 2  # balanced
        for t in trials:
            wav = tiny_corpus / split / "wav"
            assert (wav / t.enroll).is_file() and (wav / t.test).is_file()
            assert (t.enroll.split("/")[0] == t.test.split("/")[0]) == bool(t.label)


def test_durations_and_voice_parameters_recorded(tiny_corpus):
    meta = json.loads((tiny_corpus / "meta.json").read_text())
    low, high = TINY_SPEC.train_duration_s
    for speaker in meta["splits"]["train"]["speakers"]:
        assert 60 <= speaker["voice"]["f0_hz"] <= 400
        for session in speaker["sessions"]:
            for rec in session["recordings"]:
                seconds = rec["num_samples"] / 16000
                assert low - 0.05 <= seconds <= high + 0.05
                assert 5 <= rec["snr_db"] <= 30


def test_deterministic_whatever_the_workers(tmp_path):
    spec = CorpusSpec(num_train_speakers=2, num_val_speakers=2, num_test_speakers=2, train_utts_per_speaker=2,
                      val_utts_per_speaker=2, test_utts_per_speaker=2, train_duration_s=(1.0, 1.2),
                      eval_duration_s=(1.0, 1.2), num_val_trials=4, num_test_trials=4)
    generate_corpus(tmp_path / "a", spec, workers=1)
    generate_corpus(tmp_path / "b", spec, workers=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_voices_differ_in_pitch(tiny_corpus):
    """A crude autocorrelation F0 of each speaker's recordings follows the speaker's configured F0."""
    meta = json.loads((tiny_corpus / "meta.json").read_text())
    configured, measured = [], []
    for speaker in meta["splits"]["train"]["speakers"]:
        f0s = []
        for session in speaker["sessions"]:
            for rec in session["recordings"]:
                wave, rate = sf.read(tiny_corpus / "train" / "wav" / rec["file"])
                f0s.append(_median_f0(wave, rate))
        configured.append(speaker["voice"]["f0_hz"])
        measured.append(np.median(f0s))
    assert np.corrcoef(configured, measured)[0, 1] > 0.8


def _median_f0(wave, rate, frame=1024):
    lags = np.arange(rate // 400, rate // 60)  # 60-400 Hz
    f0s = []
    for start in range(0, len(wave) - frame - lags[-1], frame // 2):
        x = wave[start:start + frame + lags[-1]]
        seg = x[:frame]
        energy = seg @ seg
        if energy < 1e-4 * frame * np.var(wave):
            continue
        corr = np.array([seg @ x[lag:lag + frame] for lag in lags]) / energy
        if corr.max() > 0.5:
            f0s.append(rate / lags[np.argmax(corr)])
    return np.median(f0s) if f0s else np.nan
