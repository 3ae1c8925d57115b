"""The demo-corpus generator: layout, format, disjoint splits, trial lists, durations, determinism whatever the
number of workers, atomic publication, and voices whose measured F0 is the configured one."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.synth import (
    SAMPLE_RATE,
    CorpusSpec,
    SynthError,
    generate_corpus,
    main,
    make_trials,
    speaker_plan,
    synthesize,
)
from data.trials import read_trials
from tests.conftest import TINY_SPEC

# 4 / 2 / 3 speakers of 1-1.5 s: about 1.5 s to generate on one core
SMALL = CorpusSpec(num_train_speakers=4, num_val_speakers=2, num_test_speakers=3, train_utts_per_speaker=4,
                   val_utts_per_speaker=3, test_utts_per_speaker=4, train_duration_s=(1.0, 1.5),
                   eval_duration_s=(1.0, 1.5), num_val_trials=6, num_test_trials=10)
CLEAN = {"noise": False, "channel": False, "reverb": False}


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wav_files(root: Path, split: str) -> list[Path]:
    return sorted((root / split / "wav").rglob("*.wav"))


def median_f0(wave: np.ndarray, frame: int = 640, hop: int = 160, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median over voiced frames of the autocorrelation-peak F0 (frames whose normalised peak exceeds 0.6)."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame, axis=1)) ** 2, axis=1)[:, :frame]
    autocorr /= np.maximum(autocorr[:, :1], 1e-12)
    lo, hi = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    lag = lo + np.argmax(autocorr[:, lo:hi], axis=1)
    voiced = autocorr[np.arange(len(lag)), lag] > 0.6
    assert voiced.sum() >= 10, "too few voiced frames to measure F0"
    return float(np.median(SAMPLE_RATE / lag[voiced]))


# --- the shared tiny corpus (tests/conftest.py) ------------------------------------------------------------

def test_layout_and_format(tiny_corpus):
    assert (tiny_corpus / ".complete").is_file() and (tiny_corpus / "meta.json").is_file()
    assert not list(tiny_corpus.parent.glob(f".{tiny_corpus.name}.*"))  # no temporary folder left behind
    speakers = {}
    for split, prefix in (("train", "id0"), ("val", "id1"), ("test", "id2")):
        files = wav_files(tiny_corpus, split)
        assert len(files) == TINY_SPEC.num_speakers(split) * TINY_SPEC.utts_per_speaker(split)
        for path in files:
            speaker, session, name = path.relative_to(tiny_corpus / split / "wav").parts
            assert re.fullmatch(prefix + r"\d{4}", speaker) and re.fullmatch(r"s\d\d", session)
            assert re.fullmatch(r"\d{5}\.wav", name)
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        speakers[split] = {p.relative_to(tiny_corpus / split / "wav").parts[0] for p in files}
        assert len(speakers[split]) == TINY_SPEC.num_speakers(split)
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])


def test_trial_lists(tiny_corpus):
    for split in ("val", "test"):
        path = tiny_corpus / split / "trials.txt"
        assert all(re.fullmatch(r"[01] id\d{5}/s\d\d/\d{5}\.wav id\d{5}/s\d\d/\d{5}\.wav", line)
                   for line in path.read_text().splitlines())
        trials = read_trials(path)
        assert len(trials) == TINY_SPEC.num_trials(split)
        assert sum(t.label for t in trials) == len(trials) // 2  # balanced
        assert len({frozenset((t.enroll, t.test)) for t in trials}) == len(trials)  # no pair twice
        for t in trials:
            wav = tiny_corpus / split / "wav"
            assert (wav / t.enroll).is_file() and (wav / t.test).is_file()
            assert t.enroll != t.test
            assert (t.enroll.split("/")[0] == t.test.split("/")[0]) == bool(t.label)


def test_durations_and_meta(tiny_corpus):
    meta = json.loads((tiny_corpus / "meta.json").read_text())
    assert CorpusSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["spec"].items()}) == TINY_SPEC
    for split in ("train", "val", "test"):
        low, high = TINY_SPEC.duration_s(split)
        for speaker in meta["splits"][split]["speakers"]:
            assert 85 <= speaker["voice"]["f0_hz"] <= 280 and 0.85 <= speaker["voice"]["formant_scale"] <= 1.2
            for session in speaker["sessions"]:
                for rec in session["recordings"]:
                    frames = sf.info(tiny_corpus / split / "wav" / rec["file"]).frames
                    assert frames == rec["num_samples"]
                    assert low * SAMPLE_RATE - 1 <= frames <= high * SAMPLE_RATE + 1
                    assert TINY_SPEC.snr_db[0] <= rec["snr_db"] <= TINY_SPEC.snr_db[1]


# --- generation ---------------------------------------------------------------------------------------------

def test_deterministic_whatever_the_workers(tmp_path):
    generate_corpus(tmp_path / "a", SMALL, workers=1)
    main(["--out", str(tmp_path / "b"), "--workers", "2", "--num-train-speakers", "4", "--num-val-speakers", "2",
          "--num-test-speakers", "3", "--train-utts-per-speaker", "4", "--val-utts-per-speaker", "3",
          "--test-utts-per-speaker", "4", "--train-duration-s", "1.0", "1.5", "--eval-duration-s", "1.0", "1.5",
          "--num-val-trials", "6", "--num-test-trials", "10"])
    a = digest(tmp_path / "a")
    assert a == digest(tmp_path / "b")
    generate_corpus(tmp_path / "c", CorpusSpec(**{**SMALL.__dict__, "seed": 1}), workers=1)
    c = digest(tmp_path / "c")
    assert len(a) == len(c) and a["test/trials.txt"] != c["test/trials.txt"]
    assert all(a[k] != c[k] for k in a.keys() & c.keys() if k.endswith(".wav"))  # another seed, other audio


def test_existing_folders(tmp_path):
    spec = CorpusSpec(**{**SMALL.__dict__, "num_train_speakers": 1, "train_utts_per_speaker": 1})
    out = tmp_path / "corpus"
    generate_corpus(out, spec, workers=1)
    with pytest.raises(SynthError, match="already there"):
        generate_corpus(out, spec, workers=1)
    (out / "train" / "stale.txt").write_text("")
    generate_corpus(out, spec, workers=1, overwrite=True)
    assert not (out / "train" / "stale.txt").exists() and (out / ".complete").is_file()
    (out / ".complete").unlink()  # an incomplete corpus is replaced without asking
    generate_corpus(out, spec, workers=1)
    assert (out / ".complete").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not a corpus"):
        generate_corpus(other, spec, workers=1, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bad", [{"sessions_per_speaker": (0, 2)}, {"num_test_speakers": 1},
                                 {"eval_duration_s": (3.0, 2.0)}, {"snr_db": (30.0, 5.0)},
                                 {"test_utts_per_speaker": 1}])
def test_bad_specs(bad):
    with pytest.raises(SynthError):
        CorpusSpec(**bad)


def test_trials_prefer_other_sessions_and_refuse_impossible_lists():
    utts = [(f"spk{s}", f"s{u % 2}", f"spk{s}/s{u % 2}/{u:05d}.wav") for s in range(4) for u in range(4)]
    trials = make_trials(utts, 16, np.random.default_rng(0))
    targets = [(a, b) for label, a, b in trials if label]
    assert len(targets) == 8 and all(a.split("/")[1] != b.split("/")[1] for a, b in targets)
    assert make_trials(utts, 16, np.random.default_rng(0)) == trials
    with pytest.raises(SynthError, match="target pairs"):
        make_trials(utts, 60, np.random.default_rng(0))  # 15 targets per speaker; 6 pairs exist


# --- voices ---------------------------------------------------------------------------------------------------

def test_measured_f0_is_the_configured_f0(tmp_path):
    """On clean recordings (no noise, channel or room) the autocorrelation F0 of every voice is within 8 % of
    its configured mean F0 shifted by the session's offset (utterance offsets add ~2 %)."""
    spec = CorpusSpec(**{**SMALL.__dict__, **CLEAN, "num_train_speakers": 6, "train_duration_s": (2.0, 2.5)})
    generate_corpus(tmp_path / "clean", spec, workers=1)
    meta = json.loads((tmp_path / "clean" / "meta.json").read_text())
    configured = []
    for speaker in meta["splits"]["train"]["speakers"]:
        for session in speaker["sessions"]:
            target = speaker["voice"]["f0_hz"] * 2 ** (session["f0_shift_st"] / 12)
            for rec in session["recordings"]:
                wave, rate = sf.read(tmp_path / "clean" / "train" / "wav" / rec["file"])
                assert rate == SAMPLE_RATE
                assert median_f0(wave) == pytest.approx(target, rel=0.08)
        configured.append(speaker["voice"]["f0_hz"])
    assert max(configured) / min(configured) > 1.3  # the voices really differ


def test_recordings_of_a_voice_differ():
    voice, sessions, recordings = speaker_plan(SMALL, "test", 0)
    first = synthesize(voice, sessions[0], recordings[0][0], np.random.default_rng(0))
    again = synthesize(voice, sessions[0], recordings[0][0], np.random.default_rng(0))
    other = synthesize(voice, sessions[0], recordings[0][0], np.random.default_rng(1))
    assert first.dtype == np.float32 and len(first) == recordings[0][0].num_samples
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert np.abs(first).max() <= 0.95
    level_db = 10 * np.log10(np.mean(first.astype(np.float64) ** 2))
    assert level_db == pytest.approx(recordings[0][0].level_dbfs, abs=0.5) or np.abs(first).max() >= 0.949


def test_baseline_bench_prints_one_row(tiny_corpus, capsys):
    from bench.baseline_eer import main as baseline_main

    baseline_main(["--corpus", str(tiny_corpus), "--split", "val"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("| corpus | split | trials")
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[1:4] == ["val", str(TINY_SPEC.num_val_trials), str(TINY_SPEC.num_val_trials // 2)]
    assert 0.0 <= float(cells[4]) <= 100.0


def test_corpus_version_names_its_generator(tmp_path):
    from data.synth import COMPLETE, GENERATOR_VERSION, corpus_version
    (tmp_path / COMPLETE).write_text(f"data.synth version {GENERATOR_VERSION}\n")
    assert corpus_version(tmp_path) == GENERATOR_VERSION
    (tmp_path / COMPLETE).write_text(f"data.synth_harmonic version {GENERATOR_VERSION}\n")
    assert corpus_version(tmp_path) is None  # another generator's corpus is never taken for this one's
