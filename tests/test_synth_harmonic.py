"""The second corpus generator (data/synth_harmonic.py): layout, balanced trials, determinism whatever the number
of workers, one-line errors for bad specs, voices that are told apart by their long-term spectra, and the
config key `demo_generator` choosing which generator makes the demo corpus on first use."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data.synth_harmonic as harmonic
from config import ConfigError, parse_config
from data.synth_harmonic import (
    SAMPLE_RATE,
    TAG,
    HarmonicSpec,
    SynthError,
    generate_corpus,
    main,
    speaker_plan,
    synthesize,
)
from data.trials import read_trials
from utils import run_main

# 3 / 2 / 3 speakers of 1.0-1.2 s, 2 sessions each: about half a second to generate on one core
TINY = HarmonicSpec(num_train_speakers=3, num_val_speakers=2, num_test_speakers=3, train_utts_per_speaker=4,
                    val_utts_per_speaker=3, test_utts_per_speaker=4, sessions_per_speaker=2,
                    train_duration_s=(1.0, 1.2), eval_duration_s=(1.0, 1.2), num_val_trials=6, num_test_trials=12)
TINY_FLAGS = ["--num-train-speakers", "3", "--num-val-speakers", "2", "--num-test-speakers", "3",
              "--train-utts-per-speaker", "4", "--val-utts-per-speaker", "3", "--test-utts-per-speaker", "4",
              "--sessions-per-speaker", "2", "--train-duration-s", "1.0", "1.2", "--eval-duration-s", "1.0", "1.2",
              "--num-val-trials", "6", "--num-test-trials", "12"]


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_trials_and_determinism_whatever_the_workers(tmp_path):
    generate_corpus(tmp_path / "a", TINY, workers=1)
    main(["--out", str(tmp_path / "b"), "--workers", "2", *TINY_FLAGS])
    root, files = tmp_path / "a", digest(tmp_path / "a")
    assert files == digest(tmp_path / "b")  # byte-identical, 1 or 2 workers
    assert (root / ".complete").read_text().strip() == TAG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folder left
    meta = json.loads((root / "meta.json").read_text())
    for number, split in enumerate(("train", "val", "test")):
        speakers = sorted(p.name for p in (root / split / "wav").iterdir())
        assert speakers == [f"id{number}{i:04d}" for i in range(TINY.num_speakers(split))]
        wavs = sorted((root / split / "wav").rglob("*.wav"))
        assert len(wavs) == TINY.num_speakers(split) * TINY.utts_per_speaker(split)
        assert {p.parent.name for p in wavs} == {"s01", "s02"}
        assert len(meta["splits"][split]["speakers"]) == TINY.num_speakers(split)
    wave, rate = sf.read(wavs[0], dtype="int16")
    assert rate == SAMPLE_RATE and wave.ndim == 1 and 1.0 <= len(wave) / SAMPLE_RATE <= 1.2
    assert sf.info(wavs[0]).subtype == "PCM_16"
    for split in ("val", "test"):
        trials = read_trials(root / split / "trials.txt")
        assert len(trials) == TINY.num_trials(split) and sum(t.label for t in trials) == len(trials) // 2
        assert all((root / split / "wav" / t.enroll).is_file() and (root / split / "wav" / t.test).is_file()
                   for t in trials)
        targets = [t for t in trials if t.label]
        assert all(t.enroll.split("/")[0] == t.test.split("/")[0] for t in targets)
        assert all(t.enroll.split("/")[1] != t.test.split("/")[1] for t in targets)  # across sessions
        assert all(t.enroll.split("/")[0] != t.test.split("/")[0] for t in trials if not t.label)
    generate_corpus(tmp_path / "c", HarmonicSpec(**{**TINY.__dict__, "seed": 1}), workers=1)
    other = digest(tmp_path / "c")
    assert all(files[k] != other[k] for k in files.keys() & other.keys() if k.endswith(".wav"))


@pytest.mark.parametrize("bad", [{"sessions_per_speaker": 0}, {"num_test_speakers": 1},
                                 {"eval_duration_s": (3.0, 2.0)}, {"snr_db": (30.0, 5.0)},
                                 {"val_utts_per_speaker": 1}, {"narrowband_fraction": 1.5}])
def test_bad_specs(bad):
    with pytest.raises(SynthError):
        HarmonicSpec(**bad)


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(main, ["--out", str(tmp_path / "x"), "--num-test-speakers", "1"])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and stderr.count("\n") == 1
    assert "error: num_test_speakers must be in [2, 10000]; got 1" in stderr
    assert not (tmp_path / "x").exists()


def long_term_spectrum(wave: np.ndarray) -> np.ndarray:
    """(257,) log mean power spectrum of the frames within 30 dB of the loudest (32 ms Hann frames)."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    return np.log(power[energy > 1e-3 * energy.max()].mean(axis=0) + 1e-10)


def test_a_voice_is_closer_to_itself_across_sessions_than_to_other_voices():
    """Without noise and microphone (rooms kept), 6 voices x 4 recordings, each in another session: the cosine
    of mean-removed long-term spectra ranks same-voice pairs above different-voice pairs (AUC > 0.9)."""
    spec = HarmonicSpec(noise=False, channel=False, train_duration_s=(2.0, 2.0))
    vectors, owner = [], []
    for index in range(6):
        voice, ceps, sessions, recordings = speaker_plan(spec, "train", index)
        for u in range(4):
            wave = synthesize(voice, ceps, sessions[u], recordings[u][0], spec, np.random.default_rng(u))
            assert wave.dtype == np.float32 and np.abs(wave).max() <= 0.95
            vectors.append(long_term_spectrum(wave))
            owner.append(index)
    unit = np.array(vectors) - np.mean(vectors, axis=0)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    similarity, owner = unit @ unit.T, np.array(owner)
    same = (owner[:, None] == owner[None]) & ~np.eye(len(owner), dtype=bool)
    targets, nontargets = similarity[same], similarity[owner[:, None] != owner[None]]
    assert (targets[:, None] > nontargets[None]).mean() > 0.9
    assert targets.mean() > nontargets.mean() + 0.3


def test_demo_generator_key_picks_the_generator(tmp_path, monkeypatch):
    import train

    monkeypatch.setattr(harmonic, "DEMO_SPEC", TINY)
    monkeypatch.setattr(harmonic, "DEMO_WORKERS", 1)
    root = tmp_path / "demo"
    flags = ["--demo-corpus", str(root), "--train-data", str(root / "train/wav")]
    made = []
    monkeypatch.setitem(harmonic.DEMO_GENERATORS, "formant", made.append)
    train.ensure_demo_corpus(parse_config([*flags, "--demo-generator", "formant"], "", "train.py"))
    assert made == [root] and not root.exists()
    cfg = parse_config([*flags, "--demo-generator", "harmonic"], "", "train.py")
    train.ensure_demo_corpus(cfg)
    assert (root / ".complete").read_text().strip() == TAG
    before = digest(root)
    train.ensure_demo_corpus(cfg)  # complete and current: kept as it is
    assert digest(root) == before
    (root / ".complete").write_text("data.synth version 2\n")  # another generator's corpus: replaced
    train.ensure_demo_corpus(cfg)
    assert digest(root) == before
    with pytest.raises(ConfigError, match="demo_generator"):
        parse_config([*flags, "--demo-generator", "klatt"], "", "train.py")
